"""Errors of the token language models: bad shards, vocabularies, text and LM inputs.

:class:`LMError` is a :class:`codec.errors.TokenwaveError`, so the CLI prints it as one line,
``error: ...``, and exits 2.
"""

from codec.errors import TokenwaveError


class LMError(TokenwaveError):
    """A shard, phoneme vocabulary, text or LM input that cannot be used."""
