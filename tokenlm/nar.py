"""The non-autoregressive (NAR) token LM: fills RVQ layers 1..K-1 given layer 0.

One bidirectional transformer for every stage k (the 0-based layer it predicts), over::

    [phonemes] [prompt frames: sum of all prompt layers] [target frames: sum of layers < k]

Audio frames are the sum of per-layer embeddings (one table per layer, stored as one
``Embedding(K * codebook_size, D)``); a learned segment embedding marks prompt vs target.
The stage enters through AdaLN: a stage embedding ``[B, D]`` gives every block a shift, scale
and gate (:class:`tokenlm.transformer.Block`). The output projection for stage k is tied to
layer k's embedding table (as in VALL-E), so logits are ``h @ E_k^T``: ``[B, T, codebook_size]``
over the target frames. Positions (RoPE) are contiguous per row: phonemes, then prompt, then
target; padding is right-padding per block with key masks, so rows are independent.

Paced text positions (``config.text_pace > 0``, as in :mod:`tokenlm.ar`): the NAR sees every
frame of a row, so each row's pace is known exactly. Prompt frame t sits at t, target frame t at
``Tp + t``, and phoneme j at ``s + (j + 1/2) * (Tp + T - s) / P``, the middle of its share of the
frames its text covers, where ``s`` (``text_starts``) is the frame the text starts at: 0 when the
phonemes are the prompt's transcript followed by the target's (training: one utterance), ``Tp``
when they are the target's alone (a prompt without a transcript). Phoneme j's RoPE distance to the
frames that say it is then small from the first step, instead of an alignment learnt from content.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from codec.hub import LMHubMixin
from tokenlm.batch import LMBatch, random_prompt_lengths, split_prompt
from tokenlm.config import LMConfig
from tokenlm.errors import LMError
from tokenlm.transformer import Transformer, attention_mask, init_weights, padding_mask


class NARModel(nn.Module, LMHubMixin):
    """``forward(phonemes [B,P], phoneme_lengths [B], prompt_codes [B,Kp,Tp], prompt_lengths [B],
    target_codes [B,Kt,T], target_lengths [B], stage [B] in 1..K-1, text_starts [B] = 0)
    -> logits [B, T, codebook_size]``.

    Only layers ``< stage[b]`` of ``target_codes`` are read (the rest may hold anything in
    range, e.g. zeros); every given prompt layer is used (normally all K).
    """

    kind = "nar"

    def __init__(self, config: LMConfig):
        super().__init__()
        if config.n_codebooks < 2:
            raise LMError("the NAR model needs n_codebooks >= 2")
        self.config = config
        self.text_emb = nn.Embedding(config.n_phonemes, config.d_model)
        self.audio_emb = nn.Embedding(config.n_codebooks * config.codebook_size, config.d_model)
        self.segment_emb = nn.Embedding(2, config.d_model)  # 0: prompt, 1: target
        self.stage_emb = nn.Embedding(config.n_codebooks, config.d_model)
        self.transformer = Transformer(config, adaln=True)
        init_weights(self, config.n_layers)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def positions(self, phoneme_lengths, P: int, prompt_lengths, Tp: int, target_lengths, T: int,
                  text_starts: torch.Tensor | None = None) -> torch.Tensor:
        """RoPE positions ``[B, P + Tp + T]`` of ``[phonemes][prompt frames][target frames]``, each
        block right-padded (module docstring); ``text_starts [B]`` only matters when paced (default 0)."""
        device = phoneme_lengths.device
        B = phoneme_lengths.shape[0]
        text = torch.arange(P, device=device).expand(B, P)
        prompt = torch.arange(Tp, device=device).expand(B, Tp)
        target = torch.arange(T, device=device).expand(B, T)
        if not self.config.paced:
            return torch.cat([text, phoneme_lengths[:, None] + prompt,
                              (phoneme_lengths + prompt_lengths)[:, None] + target], dim=1)
        starts = torch.zeros_like(prompt_lengths) if text_starts is None else text_starts.to(device)
        covered = (prompt_lengths + target_lengths - starts).clamp(min=1).float()
        pace = covered / phoneme_lengths.clamp(min=1).float()
        text = starts[:, None].float() + (text.float() + 0.5) * pace[:, None]
        return torch.cat([text, prompt.float(), prompt_lengths[:, None] + target.float()], dim=1)

    def embed_codes(self, codes: torch.Tensor, n_layers: torch.Tensor | None) -> torch.Tensor:
        """``codes [B, Kc, T]`` -> ``[B, T, D]``: sum of the embeddings of layers ``< n_layers[b]``
        (all ``Kc`` layers when None)."""
        Kc = min(codes.shape[1], self.config.n_codebooks)
        x = torch.zeros(
            *codes.shape[::2], self.config.d_model, device=codes.device, dtype=self.audio_emb.weight.dtype
        )
        for k in range(Kc):  # a loop keeps memory at [B, T, D] instead of [B, K, T, D]
            emb = self.audio_emb(codes[:, k] + k * self.config.codebook_size)
            x = x + (emb if n_layers is None else emb * (k < n_layers).to(emb.dtype)[:, None, None])
        return x

    def forward(
        self, phonemes, phoneme_lengths, prompt_codes, prompt_lengths, target_codes, target_lengths, stage,
        text_starts=None,
    ) -> torch.Tensor:
        P = phonemes.shape[1]
        Tp, T = prompt_codes.shape[2], target_codes.shape[2]
        x = torch.cat(
            [
                self.text_emb(phonemes),
                self.embed_codes(prompt_codes, None) + self.segment_emb.weight[0],
                self.embed_codes(target_codes, stage) + self.segment_emb.weight[1],
            ],
            dim=1,
        )
        positions = self.positions(phoneme_lengths, P, prompt_lengths, Tp, target_lengths, T, text_starts)
        key_valid = torch.cat(
            [
                padding_mask(phoneme_lengths, P),
                padding_mask(prompt_lengths, Tp),
                padding_mask(target_lengths, T),
            ],
            dim=1,
        )
        h = self.transformer(
            x, positions, attention_mask(key_valid, causal=False), cond=self.stage_emb(stage)
        )
        h = h[:, P + Tp :]
        V = self.config.codebook_size
        out_weight = self.audio_emb.weight.view(self.config.n_codebooks, V, -1)[stage]  # [B, V, D]
        return torch.bmm(h, out_weight.transpose(1, 2))


def draw_stages(K: int, rows: int, rng: torch.Generator, decay: float = 1.0) -> torch.Tensor:
    """``[rows]`` stages in ``1..K-1``, stage k with probability proportional to ``decay ** (k-1)``
    (``decay = 1``: uniform)."""
    if not 0.0 < decay <= 1.0:
        raise LMError(f"NAR stage decay must be in (0, 1], got {decay}")
    if decay == 1.0:
        return torch.randint(1, K, (rows,), generator=rng)
    weights = torch.tensor(decay, dtype=torch.float64) ** torch.arange(K - 1, dtype=torch.float64)
    return torch.multinomial(weights, rows, replacement=True, generator=rng) + 1


def nar_loss(
    model: NARModel,
    batch: LMBatch,
    rng: torch.Generator,
    stage: int | None = None,
    max_prompt_frames: int = 150,
    stage_decay: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of one NAR stage per row on ``batch`` (whole utterances).

    Each row's prompt is a random prefix (uniform length in ``[0, min(max_prompt_frames, T/2)]``),
    the rest is the target; the stage is drawn per row from ``1..K-1`` with probability
    proportional to ``stage_decay ** (stage - 1)`` (1.0: uniform, as VALL-E; below 1 the lower
    layers, which carry most of the intelligibility, are trained more often), or is ``stage``
    for all rows (per-layer dev accuracy). ``rng`` is a CPU generator. Returns ``(loss, {"loss", "accuracy",
    "tokens"})``.
    """
    K = model.config.n_codebooks
    if batch.codes.shape[1] < K:
        raise LMError(f"NAR batch has {batch.codes.shape[1]} codebooks, the model needs {K}")
    if stage is not None and not 1 <= stage < K:
        raise LMError(f"NAR stage must be in 1..{K - 1}, got {stage}")
    codes = batch.codes[:, :K]
    device = codes.device
    B = codes.shape[0]
    prompt_lengths = random_prompt_lengths(batch.code_lengths.cpu(), rng, max_prompt_frames).to(device)
    if stage is None:
        stages = draw_stages(K, B, rng, stage_decay).to(device)
    else:
        stages = torch.full((B,), stage, dtype=torch.long, device=device)
    prompt, prompt_lengths, target, target_lengths = split_prompt(codes, batch.code_lengths, prompt_lengths)
    logits = model(
        batch.phonemes, batch.phoneme_lengths, prompt, prompt_lengths, target, target_lengths, stages
    )
    Tt = target.shape[2]
    targets = target.gather(1, stages[:, None, None].expand(B, 1, Tt))[:, 0]
    valid = padding_mask(target_lengths, Tt)
    targets = torch.where(valid, targets, torch.full_like(targets, -100))
    if valid.any():
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    else:  # no target frame at all: a zero loss that still has a graph
        loss = logits.sum() * 0.0
    with torch.no_grad():
        correct = (logits.argmax(-1) == targets) & valid
        metrics = {
            "loss": float(loss),
            "accuracy": float(correct.sum() / valid.sum().clamp(min=1)),
            "tokens": int(valid.sum()),
        }
    return loss, metrics
