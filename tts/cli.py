"""The ``tokenwave`` subcommands of text-to-speech and the web demo (registered by :mod:`codec.cli`)."""

from __future__ import annotations

from tokenlm.cli import register as _register

COMMANDS = [
    ("speak", "tts.speak", "text -> speech with a built-in voice or a voice prompt"),
    ("voices", "tts.voices", "list the built-in voices"),
    ("eval-tts", "tts.evaluate", "word error rate, speaker similarity, failures and speed of the TTS"),
    ("demo", "tts.webdemo", "local web page: codec round trip and text to speech"),
]


def register(subparsers) -> None:
    _register(subparsers, COMMANDS)
