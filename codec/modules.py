"""Building blocks of the codec: causal ConvNeXt blocks at the frame rate, STFT analysis and
overlap-add synthesis.

Everything is causal and carries an explicit cache, so that running a sequence in pieces
(streaming) computes the same thing as running it whole. Tensors are channels-last:
``[B, T, C]`` with T frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class CausalConvNeXtBlock(nn.Module):
    """ConvNeXt block over frames: causal depthwise conv -> LayerNorm -> MLP, residual.

    ``cache`` holds the last ``kernel_size - 1`` input frames ``[B, kernel_size - 1, C]``
    (zeros at the start of a stream).
    """

    def __init__(self, dim: int, kernel_size: int, mlp_ratio: int, layer_scale: float):
        super().__init__()
        self.kernel_size = kernel_size
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, groups=dim)  # holds weight [C, 1, k] and bias
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def empty_cache(self, batch: int, dim: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(batch, self.kernel_size - 1, dim)

    def _depthwise(self, padded: torch.Tensor) -> torch.Tensor:
        """Causal depthwise conv over ``[B, T + k - 1, C]`` -> ``[B, T, C]``."""
        if padded.dtype != torch.float64:
            return self.dwconv(padded.transpose(1, 2)).transpose(1, 2)
        # torch's float64 depthwise conv takes a very slow path; a sum of k shifted, weighted
        # copies is fast and computes every frame the same way whatever the chunking.
        steps = padded.shape[1] - self.kernel_size + 1
        weight = self.dwconv.weight[:, 0]  # [C, k]
        h = self.dwconv.bias + padded[:, :steps] * weight[:, 0]
        for tap in range(1, self.kernel_size):
            h = h + padded[:, tap : tap + steps] * weight[:, tap]
        return h

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``[B, T, C]``, ``cache`` ``[B, k-1, C]`` -> ``([B, T, C], new cache)``."""
        padded = torch.cat([cache, x], dim=1)
        new_cache = padded[:, padded.shape[1] - (self.kernel_size - 1) :]
        h = self._depthwise(padded)
        h = self.fc2(F.gelu(self.fc1(self.norm(h))))
        return x + self.gamma * h, new_cache


class ConvNeXtStack(nn.Module):
    """``layers`` causal ConvNeXt blocks and a final LayerNorm."""

    def __init__(self, dim: int, layers: int, kernel_size: int, mlp_ratio: int):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(
            CausalConvNeXtBlock(dim, kernel_size, mlp_ratio, layer_scale=1.0 / max(layers, 1))
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)

    def empty_cache(self, batch: int, like: torch.Tensor) -> list[torch.Tensor]:
        return [block.empty_cache(batch, self.dim, like) for block in self.blocks]

    def forward(
        self, x: torch.Tensor, cache: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` ``[B, T, C]`` -> ``([B, T, C], new cache)``; ``cache=None`` starts a stream."""
        if cache is None:
            cache = self.empty_cache(x.shape[0], x)
        new_cache = []
        for block, block_cache in zip(self.blocks, cache):
            x, c = block(x, block_cache)
            new_cache.append(c)
        return self.norm(x), new_cache


def frame_signal(padded: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """``[B, L]`` -> overlapping frames ``[B, (L - n_fft) // hop + 1, n_fft]``."""
    return padded.unfold(-1, n_fft, hop)


class STFTFeatures(nn.Module):
    """Analysis of each frame: Hann window, real FFT, then log-magnitude and the
    power-law-compressed complex spectrum (magnitude ** 0.3 with the phase) as features.

    ``[B, T, n_fft]`` frames -> ``[B, T, 3 * (n_fft // 2 + 1)]``.
    """

    def __init__(self, n_fft: int):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)

    @property
    def num_features(self) -> int:
        return 3 * (self.n_fft // 2 + 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(frames * self.window.to(frames.dtype), dim=-1)
        magnitude = spec.abs().clamp_min(1e-5)
        compressed = spec * magnitude.pow(0.3 - 1.0)
        return torch.cat([magnitude.log(), compressed.real, compressed.imag], dim=-1)


class ISTFTHead(nn.Module):
    """Vocos-style output head: per frame, log-magnitude and phase -> complex spectrum ->
    inverse FFT -> Hann-windowed frame of ``n_fft`` samples, ready for overlap-add.

    ``[B, T, C]`` -> ``[B, T, n_fft]``.
    """

    def __init__(self, dim: int, n_fft: int, hop: int):
        super().__init__()
        self.n_fft = n_fft
        self.hop = hop
        self.proj = nn.Linear(dim, 2 * (n_fft // 2 + 1))
        window = torch.hann_window(n_fft, periodic=True)
        # Overlap-added Hann windows sum to n_fft / (2 * hop); divide it out.
        self.register_buffer("window", window * (2 * hop / n_fft), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_magnitude, phase = self.proj(x).chunk(2, dim=-1)
        magnitude = log_magnitude.clamp(max=10.0).exp()
        spec = torch.polar(magnitude, phase)
        return torch.fft.irfft(spec, n=self.n_fft, dim=-1) * self.window


def overlap_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """``[B, T, n_fft]`` frames placed every ``hop`` samples and summed -> ``[B, (T-1)*hop + n_fft]``."""
    _, num_frames, n_fft = frames.shape
    length = (num_frames - 1) * hop + n_fft
    out = F.fold(
        rearrange(frames, "b t n -> b n t"), output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop)
    )
    return rearrange(out, "b 1 1 n -> b n")
