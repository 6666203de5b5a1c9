"""tts: text -> phonemes -> tokenlm -> codec decoder -> waveform.

Not implemented yet: this package is a placeholder for the text-to-speech pipeline.
"""
