"""Configuration of the token language models (AR and NAR share one dataclass).

Saved inside every exported model's ``config.json`` (key ``"lm"``). The defaults are sized for
speed on CPUs: 10 s of speech (500 AR steps + 11 NAR passes) should generate in under 3 s on
2 cores (``tokenwave bench-lm``). At batch 1 an AR step is bound by per-layer overhead and by
streaming the weights, so depth costs most: on a loaded 2-core VM, 1 thread, 4 layers took
2.5 CPU-seconds for the AR + NAR (3.7 M + 8.1 M parameters) against 4.1 for 6 layers (5.3 M +
10.4 M); see ``tokenwave bench-lm --config n_layers=6``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from tokenlm.errors import LMError


@dataclass
class LMConfig:
    """Hyper-parameters of :class:`tokenlm.ar.ARModel` and :class:`tokenlm.nar.NARModel`.

    ``n_phonemes`` is the size of the phoneme table (``len(vocab)``, may be larger);
    ``codebook_size`` / ``n_codebooks`` describe the codec's codes ``[K, T]``;
    ``max_phonemes`` / ``max_frames`` bound what generation accepts and produces (50 Hz frames).
``text_pace``: 0 numbers the phonemes and audio contiguously; > 0 gives them paced positions
(:class:`tokenlm.ar.ARModel`, :class:`tokenlm.nar.NARModel`) and is the frames per phoneme the
AR assumes when nothing better is known (the median of the training utterances; the NAR always
knows each row's own pace and keeps the value only as a record).
    """

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    n_phonemes: int = 256
    codebook_size: int = 1024
    n_codebooks: int = 12
    max_phonemes: int = 1024
    max_frames: int = 1500  # 30 s at 50 Hz
    rope_base: float = 10_000.0
    text_pace: float = 0.0  # > 0 paces phoneme positions (see ARModel, NARModel); the AR's default frames/phoneme

    def __post_init__(self) -> None:
        checks = {
            "d_model, n_layers, n_heads, ff_mult must be positive": min(
                self.d_model, self.n_layers, self.n_heads, self.ff_mult
            )
            > 0,
            "d_model must be a multiple of n_heads with an even head size": self.d_model % self.n_heads == 0
            and (self.d_model // self.n_heads) % 2 == 0,
            "dropout must be in [0, 1)": 0.0 <= self.dropout < 1.0,
            "n_phonemes must be >= 2": self.n_phonemes >= 2,
            "codebook_size must be >= 2": self.codebook_size >= 2,
            "n_codebooks must be >= 1": self.n_codebooks >= 1,
            "max_phonemes and max_frames must be positive": self.max_phonemes > 0 and self.max_frames > 0,
            "rope_base must be > 1": self.rope_base > 1,
            "text_pace must be >= 0": self.text_pace >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise LMError(f"invalid LM config: {message}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def paced(self) -> bool:
        """Paced phoneme positions (``text_pace > 0``)."""
        return self.text_pace > 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LMConfig:
        if not isinstance(data, dict):
            raise LMError("LM config must be a JSON object")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise LMError(f"unknown LM config keys: {', '.join(unknown)}")
        for key, value in data.items():
            expected = {"int": int, "float": (int, float)}[fields[key]]
            if not isinstance(value, expected) or isinstance(value, bool):
                raise LMError(f"LM config key {key!r} has the wrong type: {value!r}")
        return cls(**data)
