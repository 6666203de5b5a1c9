"""Errors of the text-to-speech pipeline (one-line messages, printed by the CLI as ``error: ...``)."""

from codec.errors import TokenwaveError


class TTSError(TokenwaveError):
    """Bad TTS input: empty text, an unknown voice, an unusable prompt, missing models."""
