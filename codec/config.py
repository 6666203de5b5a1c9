"""Configuration of the tokenwave codec, saved as ``config.json`` next to the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from codec.errors import ModelError


@dataclass
class CodecConfig:
    """Hyper-parameters of :class:`codec.model.CodecModel`.

    The encoder and decoder run at the frame rate (``sample_rate / hop_length`` frames per
    second) over STFT frames of ``n_fft`` samples; ``n_fft`` must be a multiple of
    ``hop_length`` and sets the algorithmic latency (``n_fft / sample_rate`` seconds).
    """

    name: str = "speech-16k"
    sample_rate: int = 16_000
    hop_length: int = 320  # 50 frames per second at 16 kHz
    n_fft: int = 640  # two hops: 40 ms window, 40 ms algorithmic latency
    encoder_dim: int = 192
    encoder_layers: int = 6
    decoder_dim: int = 384
    decoder_layers: int = 8
    kernel_size: int = 7  # causal depthwise convolution over frames
    mlp_ratio: int = 2
    latent_dim: int = 128
    num_codebooks: int = 12
    codebook_size: int = 1024
    ema_decay: float = 0.99
    dead_code_threshold: float = 2.0  # EMA usage (frames per update) below which a code is replaced...
    # ... when also below this share of an even share of the frames (codec.quantizer.EMACodebook):
    # with fewer frames per update than codes, an absolute threshold alone re-seeds live codes.
    dead_code_share: float = 0.1
    kmeans_iters: int = 10
    quantizer_dropout: float = 0.5  # share of a batch trained with a random number of codebooks
    # Levels 1..L coded with a context in token files (codec.context_coding; 0: none, range
    # coding only). L > 0 adds count tables of (N + 1) * N + (L - 1) * N * N entries.
    context_levels: int = 0

    def __post_init__(self) -> None:
        checks = {
            "sample_rate must be positive": self.sample_rate > 0,
            "hop_length must be positive": self.hop_length > 0,
            "n_fft must be a positive multiple of hop_length": self.n_fft >= self.hop_length
            and self.n_fft % self.hop_length == 0,
            "n_fft must be even": self.n_fft % 2 == 0,
            "kernel_size must be >= 1": self.kernel_size >= 1,
            "dead_code_threshold and dead_code_share must be >= 0": min(self.dead_code_threshold, self.dead_code_share) >= 0,
            "num_codebooks must be >= 1": self.num_codebooks >= 1,
            "codebook_size must be >= 2": self.codebook_size >= 2,
            "layer counts must be >= 0": self.encoder_layers >= 0 and self.decoder_layers >= 0,
            "dims must be positive": min(self.encoder_dim, self.decoder_dim, self.latent_dim) > 0,
            # Upper bounds: a config comes from a file, and must not make the loader build a huge model.
            "sample_rate must be <= 768000": self.sample_rate <= 768_000,
            "n_fft must be <= 65536": self.n_fft <= 65_536,
            "dims must be <= 8192": max(self.encoder_dim, self.decoder_dim, self.latent_dim) <= 8192,
            "layer counts must be <= 64": max(self.encoder_layers, self.decoder_layers) <= 64,
            "kernel_size and mlp_ratio must be <= 64": max(self.kernel_size, self.mlp_ratio) <= 64,
            "num_codebooks must be <= 64 and codebook_size <= 65536": self.num_codebooks <= 64
            and self.codebook_size <= 65_536,
            "context_levels must be in [0, num_codebooks]": 0 <= self.context_levels <= self.num_codebooks,
            "context tables must have fewer than 2**27 entries": self.context_table_entries() < 2**27,
            "the model must have fewer than 2**30 parameters": self.parameter_bound() < 2**30,
        }
        for message, ok in checks.items():
            if not ok:
                raise ModelError(f"invalid codec config: {message}")

    def parameter_bound(self) -> int:
        """A generous upper bound of the model's parameter count (checked before building it)."""
        spectrum = self.n_fft + 2
        encoder = spectrum * 2 * self.encoder_dim + self.encoder_layers * self.encoder_dim * (
            self.kernel_size + 2 * self.mlp_ratio * self.encoder_dim + 8)
        decoder = self.latent_dim * self.decoder_dim + self.decoder_layers * self.decoder_dim * (
            self.kernel_size + 2 * self.mlp_ratio * self.decoder_dim + 8) + self.decoder_dim * (spectrum + 2)
        quantizer = 3 * self.num_codebooks * self.codebook_size * self.latent_dim
        return 2 * (encoder + decoder + quantizer + self.encoder_dim * self.latent_dim)

    def context_table_entries(self) -> int:
        """Entries of the context-coding count tables (0 without context coding)."""
        N, L = self.codebook_size, self.context_levels
        return (N + 1) * N + (L - 1) * N * N if L > 0 else 0

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def latency_seconds(self) -> float:
        """Delay between an input sample and the same sample out of the streaming decoder."""
        return self.n_fft / self.sample_rate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CodecConfig:
        if not isinstance(data, dict):
            raise ModelError("codec config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown codec config keys: {', '.join(unknown)}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        for key, value in data.items():
            expected = {"str": str, "int": int, "float": (int, float)}[types[key]]
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ModelError(f"codec config key {key!r} has the wrong type: {value!r}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CodecConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelError(f"cannot read codec config {path}: {error}") from None
        return cls.from_dict(data)


def speech_16k() -> CodecConfig:
    """Default speech codec: 16 kHz, 50 Hz, 12 x 1024 codebooks (0.5 kbps each, 6 kbps max)."""
    return CodecConfig()


def speech_24k() -> CodecConfig:
    """24 kHz variant at the same 50 Hz frame rate."""
    return CodecConfig(name="speech-24k", sample_rate=24_000, hop_length=480, n_fft=960)


def tiny(sample_rate: int = 16_000) -> CodecConfig:
    """A tiny random model for tests and for the demo before trained weights exist."""
    hop = sample_rate // 50
    return CodecConfig(
        name=f"tiny-{sample_rate // 1000}k",
        sample_rate=sample_rate,
        hop_length=hop,
        n_fft=2 * hop,
        encoder_dim=32,
        encoder_layers=2,
        decoder_dim=32,
        decoder_layers=2,
        latent_dim=16,
        num_codebooks=12,
        codebook_size=1024,
    )
