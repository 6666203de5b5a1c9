"""Padded training batches for the token LMs.

:func:`collate` turns utterances (anything with ``.phonemes`` int32 ``[P]`` and ``.codes`` int16
``[K, T]``, e.g. :class:`tokenlm.shards.Utterance`) into an :class:`LMBatch` of right-padded
long tensors plus lengths. AR batches are whole utterances; the NAR loss splits each utterance
into a prompt prefix and a target with :func:`split_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tokenlm.errors import LMError


@dataclass
class LMBatch:
    """``phonemes [B, P]`` (0-padded), ``phoneme_lengths [B]``, ``codes [B, K, T]`` (0-padded),
    ``code_lengths [B]``; all long. ``ids``: utterance ids (optional)."""

    phonemes: torch.Tensor
    phoneme_lengths: torch.Tensor
    codes: torch.Tensor
    code_lengths: torch.Tensor
    ids: list[str] = field(default_factory=list)

    def to(self, device) -> LMBatch:
        return LMBatch(
            self.phonemes.to(device),
            self.phoneme_lengths.to(device),
            self.codes.to(device),
            self.code_lengths.to(device),
            self.ids,
        )

    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def num_frames(self) -> int:
        return int(self.code_lengths.sum())


def collate(utterances, n_codebooks: int | None = None) -> LMBatch:
    """Pad utterances into an :class:`LMBatch`; keep the first ``n_codebooks`` layers if given."""
    if not utterances:
        raise LMError("cannot collate an empty list of utterances")
    phonemes = [np.asarray(u.phonemes) for u in utterances]
    codes = [np.asarray(u.codes) for u in utterances]
    if any(c.ndim != 2 for c in codes) or any(p.ndim != 1 for p in phonemes):
        raise LMError("utterances need phonemes [P] and codes [K, T]")
    K = min(c.shape[0] for c in codes)
    if n_codebooks is not None:
        if n_codebooks > K:
            raise LMError(f"utterances have {K} codebooks, {n_codebooks} requested")
        K = n_codebooks
    B, P, T = len(utterances), max(len(p) for p in phonemes), max(c.shape[1] for c in codes)
    ph = torch.zeros(B, P, dtype=torch.long)
    cd = torch.zeros(B, K, T, dtype=torch.long)
    for i, (p, c) in enumerate(zip(phonemes, codes)):
        ph[i, : len(p)] = torch.from_numpy(p.astype(np.int64))
        cd[i, :, : c.shape[1]] = torch.from_numpy(c[:K].astype(np.int64))
    return LMBatch(
        phonemes=ph,
        phoneme_lengths=torch.tensor([len(p) for p in phonemes], dtype=torch.long),
        codes=cd,
        code_lengths=torch.tensor([c.shape[1] for c in codes], dtype=torch.long),
        ids=[str(getattr(u, "id", i)) for i, u in enumerate(utterances)],
    )


def split_prompt(codes: torch.Tensor, code_lengths: torch.Tensor, prompt_lengths: torch.Tensor):
    """Split ``codes [B, K, T]`` at ``prompt_lengths [B]`` (each <= its code length).

    Returns ``prompt [B, K, Tp]``, ``prompt_lengths [B]``, ``target [B, K, Tt]``,
    ``target_lengths [B]`` (right-padded; padding values are unspecified).
    """
    B, K, T = codes.shape
    target_lengths = code_lengths - prompt_lengths
    Tp = max(int(prompt_lengths.max()), 0) if B else 0
    Tt = max(int(target_lengths.max()), 0) if B else 0
    prompt = codes[:, :, :Tp]
    index = (prompt_lengths[:, None] + torch.arange(Tt, device=codes.device)[None, :]).clamp(
        max=max(T - 1, 0)
    )
    target = codes.gather(2, index[:, None, :].expand(B, K, Tt))
    return prompt, prompt_lengths, target, target_lengths


def random_prompt_lengths(
    code_lengths: torch.Tensor, rng: torch.Generator, max_prompt: int = 150, max_fraction: float = 0.5
) -> torch.Tensor:
    """A random prompt length per row, uniform in ``[0, min(max_prompt, max_fraction * T)]``
    (at most ``T - 1``, so at least one target frame remains)."""
    limit = torch.minimum(
        (code_lengths.float() * max_fraction).long(), torch.full_like(code_lengths, max_prompt)
    )
    limit = torch.minimum(limit, (code_lengths - 1).clamp(min=0))
    u = torch.rand(code_lengths.shape, generator=rng).to(code_lengths.device)
    return (u * (limit + 1).float()).long().clamp(max=limit)
