"""Tiny token-LM configurations and weights shared by the LM tests."""

from __future__ import annotations

import torch

from tokenlm.config import LMConfig

V, K, NPH = 32, 4, 40  # codebook size, codebooks, phoneme vocabulary of the tiny models


def tiny_config(**changes) -> LMConfig:
    defaults = {"d_model": 32, "n_layers": 2, "n_heads": 2, "ff_mult": 2, "dropout": 0.0, "n_phonemes": NPH,
                "codebook_size": V, "n_codebooks": K, "max_phonemes": 64, "max_frames": 80}
    return LMConfig(**(defaults | changes))


def lively(model):
    """Larger random weights than the training initialisation, so that outputs depend strongly on
    positions and context (a freshly initialised model repeats one token, which would hide masking
    and position bugs)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.normal_(0.0, (3.0 if "emb" in name else 1.5) / param.shape[1] ** 0.5)
    return model.eval()
