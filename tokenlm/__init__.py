"""tokenlm: VALL-E-style token language models (AR first layer + NAR residual layers).

Not implemented yet: this package is a placeholder for the token language models.
"""
