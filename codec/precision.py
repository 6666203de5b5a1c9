"""Mixed precision for the training loops (``train-codec`` and ``train-lm`` ``--precision``).

``fp32`` trains in float32. ``bf16`` runs the heavy matrix work of the forward pass under
``torch.autocast`` in bfloat16 (the weights, the optimizer and the gradients stay float32), on
CUDA and on the CPU: on CPUs with native bfloat16 instructions (AVX512-BF16 or AMX) a step is
1.5-2x faster (README, "Mixed precision"); on older CPUs it can be slower than float32, so the CPU
default stays float32. ``fp16`` (CUDA only) needs a gradient scaler, which the token LMs' loop
keeps (``train-codec`` offers fp32 and bf16 alone). ``auto``: bf16 on CUDA where supported, else
fp16; float32 on the CPU.
"""

from __future__ import annotations

import contextlib

import torch

from codec.errors import TokenwaveError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward pass for ``--precision`` on ``device``, or None (float32)."""
    if precision not in PRECISIONS:
        raise TokenwaveError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    cuda = device.type == "cuda"
    if precision == "fp32" or (precision == "auto" and not cuda):
        return None
    if precision == "fp16" and not cuda:
        raise TokenwaveError("--precision fp16 needs CUDA; on the CPU use bf16 or fp32")
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise TokenwaveError("--precision bf16: this GPU does not support bfloat16")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device | str, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device``'s type with ``dtype``; a no-op context for None (float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
