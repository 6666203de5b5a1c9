"""Multi-scale STFT discriminator (MS-STFTD) for adversarial codec training, as in EnCodec.

Each scale looks at the complex STFT of the waveform at one resolution, with the real and
imaginary parts as two input channels, through a stack of 2D convolutions over (time, frequency):
dilated over time (1, 2, 4), strided by 2 over frequency, LeakyReLU(0.2) after each, weight norm
on every convolution. The resolutions are EnCodec's (FFT sizes 2048, 1024 and 512, hop = FFT / 4)
at 16 kHz, scaled with the sample rate (3072 / 1536 / 768 at 24 kHz) so that every scale covers
the same durations and frequency bands whatever the rate.

A multi-period discriminator (HiFi-GAN's MPD) is not included.

Shapes: waveform ``[B, 1, N]``; spectrum ``[B, 2, T, F]`` (T frames, F = n_fft / 2 + 1 bins);
logits ``[B, 1, T, F']`` per scale; feature maps ``[B, C, T, F_l]`` per layer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


def _conv(in_channels: int, out_channels: int, kernel: tuple[int, int], stride=(1, 1), dilation=(1, 1)) -> nn.Conv2d:
    """Weight-normalised 2D convolution, padded so that time and (before the stride) frequency keep their size."""
    padding = tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation))
    return weight_norm(nn.Conv2d(in_channels, out_channels, kernel, stride=stride, dilation=dilation, padding=padding))


class STFTDiscriminator(nn.Module):
    """One scale: waveform ``[B, 1, N]`` -> (logits ``[B, 1, T, F']``, feature maps ``[B, C, T, F_l]`` x 5).

    ``kernel`` is (time, frequency); the middle layers are dilated over time and strided by 2 over frequency.
    """

    def __init__(self, n_fft: int, hop_length: int, channels: int = 32, kernel=(3, 9), dilations=(1, 2, 4)):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [_conv(2, channels, kernel)]
        for dilation in dilations:
            layers.append(_conv(channels, channels, kernel, stride=(1, 2), dilation=(dilation, 1)))
        layers.append(_conv(channels, channels, (kernel[0], kernel[0])))
        self.layers = nn.ModuleList(layers)
        self.post = _conv(channels, 1, (kernel[0], kernel[0]))
        self.activation = nn.LeakyReLU(0.2)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        spec = torch.stft(wav.reshape(-1, wav.shape[-1]), self.n_fft, self.hop_length, window=self.window,
                          center=False, normalized=True, return_complex=True)  # [B, F, T]
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, T, F]
        features = []
        for layer in self.layers:
            x = self.activation(layer(x))
            features.append(x)
        return self.post(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """Several :class:`STFTDiscriminator` at FFT sizes ``n_ffts`` (given at 16 kHz, scaled to ``sample_rate``).

    ``wav`` ``[B, 1, N]`` -> (list of logits ``[B, 1, T_s, F_s]``, list of lists of feature maps), one entry per scale.
    N must be at least the largest FFT size (2048 samples at 16 kHz).
    """

    def __init__(self, sample_rate: int = 16_000, n_ffts=(2048, 1024, 512), channels: int = 32):
        super().__init__()
        sizes = [max(16, round(n * sample_rate / 16_000 / 2) * 2) for n in n_ffts]  # even FFT sizes
        self.scales = nn.ModuleList(STFTDiscriminator(n, n // 4, channels) for n in sizes)

    def forward(self, wav: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        logits, features = [], []
        for scale in self.scales:
            score, maps = scale(wav)
            logits.append(score)
            features.append(maps)
        return logits, features
