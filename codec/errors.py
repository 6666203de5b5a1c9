"""The project's own exception types.

Every error a user can trigger with bad input is one of these, with a one-line message;
the CLI prints ``error: <message>`` and exits non-zero instead of showing a traceback.
"""


class TokenwaveError(Exception):
    """Base class of every error tokenwave raises on purpose."""


class AudioError(TokenwaveError):
    """Audio that cannot be read, is empty, holds NaN/Inf, or has an unsupported format."""


class TokenFileError(TokenwaveError):
    """A token file that is truncated, corrupted, hostile, or made by another model."""


class ModelError(TokenwaveError):
    """A model name, path, config or weights file that cannot be loaded."""
