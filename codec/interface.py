"""The interface every codec in tokenwave offers: ours and the ``transformers`` ones alike.

Shapes: waveforms are ``[B, C, N]`` float tensors in [-1, 1] (C = 1: codecs are mono and
multi-channel audio is encoded channel by channel as a batch); codes are ``[B, K, T]``
int64 tensors with K codebooks and T frames.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch


class AudioCodec(ABC):
    """A neural audio codec: waveform -> discrete codes -> waveform."""

    name: str
    sample_rate: int
    frame_rate: float
    codebook_size: int
    max_codebooks: int

    @property
    def bits_per_codebook(self) -> float:
        """Bits per code with plain packing: log2 of the codebook size."""
        return float(torch.tensor(self.codebook_size).log2())

    @property
    def bitrates(self) -> list[float]:
        """Every bitrate in kbps this codec can run at, one per number of codebooks."""
        return [self.codebooks_to_bitrate(k) for k in range(1, self.max_codebooks + 1)]

    def codebooks_to_bitrate(self, num_codebooks: int) -> float:
        return num_codebooks * self.frame_rate * self.bits_per_codebook / 1000.0

    def bitrate_to_codebooks(self, bitrate: float | None) -> int:
        """Number of codebooks for ``bitrate`` kbps (None: all of them)."""
        from codec.errors import ModelError

        if bitrate is None:
            return self.max_codebooks
        if not math.isfinite(bitrate):
            raise ModelError(f"bitrate must be a finite number of kbps, got {bitrate}")
        per_codebook = self.codebooks_to_bitrate(1)
        k = round(bitrate / per_codebook)
        if k < 1 or k > self.max_codebooks or abs(k * per_codebook - bitrate) > 1e-6 * max(1.0, bitrate):
            choices = ", ".join(f"{b:g}" for b in self.bitrates)
            raise ModelError(f"{self.name} has no bitrate {bitrate:g} kbps; choose one of {choices}")
        return k

    @property
    def fingerprint(self) -> str:
        """A short hash of the weights that decide the codes, written into token files to pair them with this model."""
        raise NotImplementedError

    @property
    def codes_fingerprint(self) -> str:
        """A short hash of what decides the meaning of the codes, recorded by token LMs and their
        shards; codecs with nothing beyond that in :attr:`fingerprint` (no entropy tables) return it."""
        return self.fingerprint

    @abstractmethod
    def encode(self, wav: torch.Tensor, sample_rate: int, bitrate: float | None = None) -> torch.Tensor:
        """``wav`` ``[B, 1, N]`` at ``sample_rate`` (resampled if needed) -> codes ``[B, K, T]``."""

    @abstractmethod
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Codes ``[B, K, T]`` (any K up to ``max_codebooks``) -> waveform ``[B, 1, N]`` at
        ``sample_rate``, cut to ``length`` samples when given."""
