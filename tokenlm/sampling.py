"""Token sampling for the AR model: temperature, top-k, top-p and repetition-aware sampling.

Repetition-aware sampling (RAS, CosyVoice 2): sample from the temperature/top-k/top-p
distribution; if the sampled token already occurs ``>= repetition_threshold`` times among the
last ``repetition_window`` generated tokens, resample it from the full distribution (plain
softmax of the logits, no temperature, no truncation), which breaks the loops that truncated
sampling falls into. ``temperature == 0`` is greedy (argmax) and RAS is off.

Text guidance (classifier-free guidance on the text, ``text_guidance = w``): the AR was trained
with some rows text-free, so it gives both ``log p(x | text, audio)`` and ``log p(x | audio)``;
sampling uses ``u + w * (c - u)`` of the two log-softmaxes (``w = 1``: the conditional model
alone, the default; ``w > 1`` strengthens the text's pull at twice the AR cost).

Randomness comes only from the ``torch.Generator`` passed in, so a fixed seed gives identical
outputs. Length-guard fields are read by :func:`tokenlm.generate.generate_ar`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from tokenlm.errors import LMError


@dataclass
class SamplingConfig:
    """How the AR model picks tokens and how long its output may be.

    Length guards per row (target phoneme count ``P``): eos is masked until
    ``ceil(min_frames_per_phoneme * P)`` frames (at least 1); the output ends at
    ``ceil(max_frames_per_phoneme * P) + 25`` frames or ``max_frames`` (hard cap; None = the
    model's ``max_frames``), whichever is smaller.
    """

    temperature: float = 1.0
    top_k: int = 50  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_window: int = 10
    repetition_threshold: int = 4  # 0 = RAS off
    min_frames_per_phoneme: float = 1.0
    max_frames_per_phoneme: float = 12.0
    max_frames: int | None = None
    text_guidance: float = 1.0  # classifier-free guidance scale on the text (1 = off)

    def __post_init__(self) -> None:
        checks = {
            "temperature must be >= 0": self.temperature >= 0,
            "top_k must be >= 0": self.top_k >= 0,
            "top_p must be in (0, 1]": 0.0 < self.top_p <= 1.0,
            "repetition_window and repetition_threshold must be >= 0": min(
                self.repetition_window, self.repetition_threshold
            )
            >= 0,
            "frames per phoneme must satisfy 0 <= min <= max, max > 0": 0
            <= self.min_frames_per_phoneme
            <= self.max_frames_per_phoneme
            and self.max_frames_per_phoneme > 0,
            "max_frames must be positive": self.max_frames is None or self.max_frames > 0,
            "text_guidance must be >= 1": self.text_guidance >= 1.0,
        }
        for message, ok in checks.items():
            if not ok:
                raise LMError(f"invalid sampling config: {message}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SamplingConfig:
        """From JSON (e.g. an AR's ``config.json`` ``"sampling"``), unknown keys refused."""
        if not isinstance(data, dict):
            raise LMError("a sampling config must be a JSON object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise LMError(f"unknown sampling keys: {', '.join(unknown)}")
        for key, value in data.items():
            if isinstance(value, bool) or not (isinstance(value, (int, float)) or (key == "max_frames" and value is None)):
                raise LMError(f"sampling key {key!r} must be a number, got {value!r}")
        return cls(**data)


def model_sampling(info: dict | None, overrides: dict | None = None) -> SamplingConfig:
    """The sampling an AR's weights recommend (``config.json`` key ``"sampling"``: the decoding
    its model card was measured with; absent: the defaults), with ``overrides`` on top."""
    recommended = (info or {}).get("sampling") or {}
    return SamplingConfig.from_dict(dict(recommended) | dict(overrides or {}))


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits ``[B, V]`` outside the top-k / nucleus top-p to -inf (the best token always stays)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(
            -1, order, _nucleus_drop(sorted_logits, top_p)
        )
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _nucleus_drop(sorted_logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """For logits sorted in descending order: drop a token when the tokens before it already
    hold ``>= top_p`` of the mass."""
    probs = sorted_logits.softmax(-1)
    return (probs.cumsum(-1) - probs) >= top_p


def sample_next(
    logits: torch.Tensor,
    config: SamplingConfig,
    generator: torch.Generator | None = None,
    history: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token per row from ``logits [B, V]`` -> ``[B]`` long.

    ``history [B, t]``: tokens generated so far (for RAS). ``generator`` must live on the
    logits' device (or be None for the global RNG). With top-k the draw is over the k best
    tokens only (same distribution as masking the rest, several times cheaper per step).
    """
    logits = logits.float()
    if config.greedy:
        return logits.argmax(-1)
    scaled = logits / config.temperature
    if 0 < config.top_k < logits.shape[-1]:
        values, indices = torch.topk(scaled, config.top_k, dim=-1)  # sorted, best first
        if config.top_p < 1.0:
            values = values.masked_fill(_nucleus_drop(values, config.top_p), float("-inf"))
        choice = torch.multinomial(values.softmax(-1), 1, generator=generator)
        tokens = indices.gather(-1, choice)[:, 0]
    else:
        truncated = filter_logits(scaled, 0, config.top_p)
        tokens = torch.multinomial(truncated.softmax(-1), 1, generator=generator)[:, 0]
    if (
        config.repetition_threshold > 0
        and config.repetition_window > 0
        and history is not None
        and history.numel()
    ):
        recent = history[:, -config.repetition_window :]
        resample = (recent == tokens[:, None]).sum(-1) >= config.repetition_threshold
        if bool(resample.any()):  # the full distribution: plain softmax, no temperature, no truncation
            full = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            tokens = torch.where(resample, full, tokens)
    return tokens
