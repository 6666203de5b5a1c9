"""Rate-distortion optimised quantization: codes picked for distortion plus their coded size.

Plain residual quantization picks, level by level, the nearest code ``argmin_j |r - e_j|^2``.
With a rate weight ``w > 0`` it picks ``argmin_j |r - e_j|^2 + w * bits_j`` instead, where
``bits_j = -log2 p(j | context)`` is what the entropy coder of token files will spend on code j
(:mod:`codec.context_coding`: level 1 given the previous level-1 code, levels 2..L given the
code above them in the same frame, deeper levels with their own table). A code a little farther
away but much cheaper to store wins, so token files shrink at a small cost in quality: the
encoder-side trade made by rate-distortion optimised quantization in video codecs, and by
entropy-constrained vector quantization. One weight for every level is the equal-slope choice:
deep levels, whose residuals are small, give up the most bits for the least distortion.

The decoder and the file format do not change: the codes are ordinary codes of the same model,
so any tokenwave reader decodes them. ``w = 0`` is plain nearest-code quantization, bit for bit.

What it buys with the shipped codec is measured in its model card (``tokenwave eval-codec
--rate-weight W``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from codec.errors import ModelError


def check_rate_weight(weight: float) -> float:
    """``weight`` as a float; ``ModelError`` unless it is finite and >= 0."""
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise ModelError(f"rate weight must be a number >= 0, got {weight!r}") from None
    if not math.isfinite(weight) or weight < 0:
        raise ModelError(f"rate weight must be a finite number >= 0, got {weight}")
    return weight


class CodeCosts:
    """Bits the entropy coder spends on each code, from a model's tables, as float64 tensors:
    ``first [N + 1, N]`` (level 1 given the previous level-1 code; row N: start of a stream),
    ``pairs [L - 1, N, N]`` (level k given level k - 1, k = 2..L), ``levels [K, N]`` (the rest)."""

    def __init__(self, tables):
        from codec.context_coding import ContextTables

        if isinstance(tables, ContextTables):
            self.levels = torch.from_numpy(-np.log2(tables.unigram))
            self.first = torch.from_numpy(-np.log2(tables.transitions))
            self.pairs = torch.from_numpy(-np.log2(tables.pairs))
        else:  # per-level tables only ([K, N] probabilities): no contexts
            self.levels = torch.from_numpy(-np.log2(np.asarray(tables, dtype=np.float64)))
            N = self.levels.shape[1]
            self.first = self.levels[0].expand(N + 1, N)
            self.pairs = torch.zeros(0, N, N, dtype=torch.float64)
        self.codebook_size = self.levels.shape[1]

    @property
    def context_levels(self) -> int:
        return 1 + self.pairs.shape[0]


class RateDistortionQuantizer:
    """Rate-distortion optimised :meth:`ResidualVectorQuantizer.encode` with explicit state.

    State: ``previous [B]``, the last level-1 code of each stream (the context of the next
    frame's level-1 code; ``N`` before the first frame). Feeding a signal's latent frames in
    pieces gives the same codes as feeding them at once.
    """

    def __init__(self, quantizer, tables, weight: float, batch: int = 1):
        self.quantizer = quantizer
        self.weight = check_rate_weight(weight)
        if tables is None:
            raise ModelError("rate-distortion optimised quantization needs the model's entropy-coding tables "
                             "(count them with tokenwave count-codes)")
        self.costs = CodeCosts(tables)
        N = self.costs.codebook_size
        if N != quantizer.codebook_size or self.costs.levels.shape[0] < quantizer.num_codebooks:
            raise ModelError(f"the entropy tables ({list(self.costs.levels.shape)}) do not fit the quantizer "
                             f"({quantizer.num_codebooks} x {quantizer.codebook_size})")
        self.previous = torch.full((batch,), N, dtype=torch.long)

    @torch.no_grad()
    def encode(self, latent: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """``latent [B, T, D]`` -> codes ``[B, K, T]`` (K = ``num_codebooks``), int64."""
        B, T, _ = latent.shape
        if B != self.previous.shape[0]:
            raise ModelError(f"expected a batch of {self.previous.shape[0]}, got {B}")
        residual = latent.double().cpu()
        w, costs = self.weight, self.costs
        codes = torch.zeros(B, num_codebooks, T, dtype=torch.long)
        for level, codebook in enumerate(self.quantizer.codebooks[:num_codebooks]):
            embed = codebook.embed.double().cpu()  # [N, D]
            # |r - e|^2 without |r|^2, the same for every code of a frame: [B, T, N]
            distance = embed.pow(2).sum(-1) - 2.0 * residual @ embed.t()
            if level == 0:  # each frame's context is the code just chosen: one frame at a time
                previous = self.previous.clone()
                for t in range(T):
                    previous = (distance[:, t] + w * costs.first[previous]).argmin(-1)
                    codes[:, 0, t] = previous
                if T:
                    self.previous = previous
            elif level < costs.context_levels:
                codes[:, level] = (distance + w * costs.pairs[level - 1][codes[:, level - 1]]).argmin(-1)
            else:
                codes[:, level] = (distance + w * costs.levels[level]).argmin(-1)
            residual = residual - embed[codes[:, level]]
        return codes.to(latent.device)
