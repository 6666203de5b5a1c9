"""Shared test set-up.

The test machines have few cores (and often a training job on them), so torch runs on one
thread unless ``TOKENWAVE_TEST_THREADS`` says otherwise, e.g. ``TOKENWAVE_TEST_THREADS=4``.
"""

from __future__ import annotations

import os

import torch


def _test_threads() -> int:
    raw = os.environ.get("TOKENWAVE_TEST_THREADS", "1").strip() or "1"
    try:
        threads = int(raw)
    except ValueError:
        raise RuntimeError(f"TOKENWAVE_TEST_THREADS must be a positive integer, got {raw!r}") from None
    if threads < 1:
        raise RuntimeError(f"TOKENWAVE_TEST_THREADS must be a positive integer, got {raw!r}")
    return threads


TEST_THREADS = _test_threads()
torch.set_num_threads(TEST_THREADS)
