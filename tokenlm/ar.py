"""The autoregressive (AR) token LM: phonemes -> first RVQ layer of the codec codes.

Decoder-only over one sequence per utterance::

    [phonemes p_0 .. p_{P-1}] [bos, c_0 .. c_{T-1}]   ->   predicts c_0 .. c_{T-1}, eos

Phonemes (prompt text + target text) use a text embedding table, audio tokens an audio table
of ``codebook_size + 2`` entries (``eos = codebook_size``, ``bos = codebook_size + 1``); the
head predicts ``codebook_size + 1`` classes (codes and eos). The whole sequence, phonemes
included, is causal (simple, and it lets generation cache the phoneme part like any prefix).
RoPE positions are contiguous per row: phoneme j at j, audio input t at ``P + t``, unless
the config's ``text_pace`` is set (below).

Paced text positions (``text_pace > 0``; the "position rate" of Deep Voice 3, Ping et al.,
2018): phoneme j sits at position ``j * r`` and audio input t at ``t``, where ``r`` is the row's
audio frames per phoneme (``code_lengths / phoneme_lengths`` in training; the prompt's pace, or
``text_pace`` without a text prompt, in generation). RoPE scores depend on relative positions
only, so "attend to the phoneme near my own position", the diagonal that speech follows, is a
pattern every head can express from the first step, instead of an alignment the model has to
discover from the content. Causality still follows the sequence order (all phonemes come first).

Batches are right-padded in two blocks, ``[phonemes padded to P_max][audio padded to T+1]``;
per-row positions and a key padding mask make each row compute exactly what it would alone.
Rows with ``phoneme_lengths == 0`` are text-free (continuation of audio alone).

Guided attention (Tachibana et al., 2017, "Efficiently trainable text-to-speech ... with
guided attention"): a decoder-only LM must discover on its own which phoneme each frame is
saying, and on a few hours of speech that takes far longer than our compute allows. The
optional term of :func:`ar_loss` pushes one head per block (its audio-to-phoneme attention,
renormalised over the phonemes) towards the diagonal ``j / P ~ t / T`` that speech follows,
with the penalty ``1 - exp(-(j/P - t/T)^2 / (2 sigma^2))``. It shapes training only; the
model and generation are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.hub import LMHubMixin
from tokenlm.batch import LMBatch
from tokenlm.config import LMConfig
from tokenlm.transformer import AttentionProbe, Transformer, attention_mask, init_weights, padding_mask


class ARModel(nn.Module, LMHubMixin):
    """``forward(phonemes [B,P], phoneme_lengths [B], codes [B,T], code_lengths [B])
    -> logits [B, T+1, codebook_size+1]``: position t predicts ``codes[t]``, position
    ``code_lengths[b]`` predicts eos."""

    kind = "ar"

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.eos, self.bos = config.codebook_size, config.codebook_size + 1
        self.text_emb = nn.Embedding(config.n_phonemes, config.d_model)
        self.audio_emb = nn.Embedding(config.codebook_size + 2, config.d_model)
        self.transformer = Transformer(config)
        self.head = nn.Linear(config.d_model, config.codebook_size + 1, bias=False)
        init_weights(self, config.n_layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        phonemes: torch.Tensor,
        phoneme_lengths: torch.Tensor,
        codes: torch.Tensor,
        code_lengths: torch.Tensor,
        probe: AttentionProbe | None = None,
        pace: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``pace [B]``: frames per phoneme of paced positions (default ``code_lengths /
        phoneme_lengths``, the truth in training); ignored without ``config.text_pace``."""
        B, P = phonemes.shape
        T = codes.shape[1]
        audio_in = torch.cat(
            [torch.full((B, 1), self.bos, dtype=torch.long, device=codes.device), codes], dim=1
        )
        x = torch.cat([self.text_emb(phonemes), self.audio_emb(audio_in)], dim=1)
        if pace is None and self.config.paced:
            pace = code_lengths / phoneme_lengths.clamp(min=1)
        positions = self.positions(phoneme_lengths, P, T + 1, pace)
        key_valid = torch.cat(
            [padding_mask(phoneme_lengths, P), padding_mask(code_lengths + 1, T + 1)], dim=1
        )
        h = self.transformer(x, positions, attention_mask(key_valid, causal=True), probe=probe)
        return self.head(h[:, P:])

    def positions(
        self, phoneme_lengths: torch.Tensor, P: int, A: int, pace: torch.Tensor | None = None
    ) -> torch.Tensor:
        """RoPE positions ``[B, P + A]`` of ``[phonemes padded to P][A audio inputs]``
        (module docstring); ``pace [B]`` is required when the model is paced."""
        device = phoneme_lengths.device
        B = phoneme_lengths.shape[0]
        text = torch.arange(P, device=device).expand(B, P)
        audio = torch.arange(A, device=device).expand(B, A)
        if not self.config.paced:
            return torch.cat([text, phoneme_lengths[:, None] + audio], dim=1)
        if pace is None:
            raise ValueError("a paced AR model needs pace (frames per phoneme) per row")
        return torch.cat([text * pace.to(device, torch.float32)[:, None], audio.float()], dim=1)

    def logits_last(self, h: torch.Tensor) -> torch.Tensor:
        """``h [B, L, D]`` -> logits of the last position ``[B, codebook_size+1]``."""
        return self.head(h[:, -1])


def ar_targets(
    codes: torch.Tensor, code_lengths: torch.Tensor, eos: int, ignore_index: int = -100
) -> torch.Tensor:
    """``codes [B, T]`` -> targets ``[B, T+1]``: the codes, eos at ``code_lengths``, then ignored."""
    B, T = codes.shape
    targets = torch.cat(
        [codes, torch.full((B, 1), ignore_index, dtype=torch.long, device=codes.device)], dim=1
    )
    positions = torch.arange(T + 1, device=codes.device)[None, :]
    targets = torch.where(positions == code_lengths[:, None], torch.full_like(targets, eos), targets)
    return torch.where(positions > code_lengths[:, None], torch.full_like(targets, ignore_index), targets)


def guided_attention_penalty(
    scores: torch.Tensor, phoneme_lengths: torch.Tensor, query_lengths: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Diagonal penalty of audio-to-phoneme attention per query.

    ``scores [B, H, Tq, P]`` (pre-softmax, queries = audio inputs, keys = phonemes),
    ``phoneme_lengths [B]``, ``query_lengths [B]`` -> ``[B, Tq]``: the expected penalty
    ``1 - exp(-(j/P - t/Tq)^2 / (2 sigma^2))`` under each query's softmax over its row's real
    phonemes, averaged over the heads; 0 for padded queries and rows without text.
    """
    _, _, Tq, P = scores.shape
    device = scores.device
    key_valid = padding_mask(phoneme_lengths, P)  # [B, P]
    probs = scores.float().masked_fill(~key_valid[:, None, None, :], -1e4).softmax(-1)
    t = (torch.arange(Tq, device=device)[None, :] + 0.5) / query_lengths.clamp(min=1)[:, None]  # [B, Tq]
    j = (torch.arange(P, device=device)[None, :] + 0.5) / phoneme_lengths.clamp(min=1)[:, None]  # [B, P]
    penalty = 1.0 - torch.exp(-((j[:, None, :] - t[:, :, None]) ** 2) / (2 * sigma**2))  # [B, Tq, P]
    per_query = (probs * penalty[:, None]).sum(-1).mean(1)  # [B, Tq]
    query_valid = padding_mask(query_lengths, Tq) & (phoneme_lengths > 0)[:, None]  # [B, Tq]
    return per_query * query_valid


def ar_loss(
    model: ARModel, batch: LMBatch, guided_weight: float = 0.0, guided_sigma: float = 0.2
) -> tuple[torch.Tensor, dict]:
    """Cross-entropy over the first codebook layer (codes and eos) of ``batch``, plus
    ``guided_weight`` times the guided-attention penalty of head 0 of every block, summed over
    the queries and divided by the number of predicted tokens like the cross-entropy (so
    text-free rows count as 0, and DDP's rescaling of a process's loss to the global token mean
    is exact for both terms).

    Returns ``(loss, {"loss", "accuracy", "eos_accuracy", "tokens"[, "guided"]})`` (metrics as
    floats; ``loss`` is the cross-entropy alone). For text-free training set some rows'
    ``phoneme_lengths`` to 0.
    """
    codes = batch.codes[:, 0]
    P = batch.phonemes.shape[1]
    probe = AttentionProbe(heads=1, query_start=P, key_end=P) if guided_weight > 0 else None
    logits = model(batch.phonemes, batch.phoneme_lengths, codes, batch.code_lengths, probe=probe)
    targets = ar_targets(codes, batch.code_lengths, model.eos)
    cross_entropy = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    loss = cross_entropy
    guided = None
    if probe is not None:
        tokens = (targets != -100).sum().clamp(min=1)
        per_block = [
            guided_attention_penalty(s, batch.phoneme_lengths, batch.code_lengths + 1, guided_sigma).sum()
            for s in probe.scores
        ]
        guided = torch.stack(per_block).mean() / tokens
        loss = loss + guided_weight * guided
    with torch.no_grad():
        valid = targets != -100
        correct = (logits.argmax(-1) == targets) & valid
        is_eos = targets == model.eos
        metrics = {
            "loss": float(cross_entropy),
            "accuracy": float(correct.sum() / valid.sum().clamp(min=1)),
            "eos_accuracy": float((correct & is_eos).sum() / is_eos.sum().clamp(min=1)),
            "tokens": int(valid.sum()),
        }
        if guided is not None:
            metrics["guided"] = float(guided)
    return loss, metrics
