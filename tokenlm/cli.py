"""The ``tokenwave`` subcommands of the token language models.

Each command lives in its own module, which exposes ``add_arguments(parser)`` and
``main(args) -> int``; this table registers them on the main parser (:mod:`codec.cli`).
"""

from __future__ import annotations

import importlib

COMMANDS = [
    # (subcommand, module, help)
    ("tokenize", "tokenlm.tokenize", "encode manifests into token shards (codec codes + phonemes) for LM training"),
    ("train-lm", "tokenlm.train", "train the AR (first RVQ layer) or NAR (residual layers) token language model"),
    ("continue", "tokenlm.continuation", "continue a recording with no text (AR text-free mode + NAR)"),
    ("bench-lm", "tokenlm.bench", "AR tokens/s with and without KV cache, NAR time per layer, RTF of 10 s"),
]


def register(subparsers, commands=COMMANDS) -> None:
    """Add ``commands`` to an argparse ``subparsers`` object."""
    for name, module_name, help_text in commands:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue  # not written yet
        parser = subparsers.add_parser(name, help=help_text)
        module.add_arguments(parser)
        parser.set_defaults(func=module.main)
