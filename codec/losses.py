"""Reconstruction losses: multi-resolution STFT and multi-scale mel, sharing one STFT per resolution.

For each resolution the predicted and target spectra are computed once; the log-magnitude L1,
the spectral convergence and the log-mel L1 all come from those two magnitudes.

Adversarial training (``train-codec --adversarial``, :mod:`codec.discriminator`): hinge losses
for the discriminator and the generator, and EnCodec's normalised feature-matching loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular mel filters (HTK mel scale, Slaney-style area normalisation) ``[n_mels, n_fft // 2 + 1]``."""
    f_max = f_max or sample_rate / 2

    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mels = torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins[None] - lower) / (center - lower)
    falling = (upper - bins[None]) / (upper - center)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    filters = filters * (2.0 / (upper - lower))  # equal area per filter
    return filters.float()


class SpectralLoss(nn.Module):
    """Sum over resolutions of log-magnitude L1 + spectral convergence + log-mel L1, plus
    ``complex_weight`` x the compressed complex spectral loss.

    The magnitude terms leave the phase free. The complex term compares ``|S|^0.3 e^{i phase}``
    of prediction and target (mean squared distance; the power-law compression as in speech
    enhancement's "compressed complex" losses), so it also asks for the target's phase wherever
    the codes determine it.

    ``pred``, ``target``: ``[B, 1, N]`` -> scalar; the parts are returned in a dict for logging.
    """

    def __init__(self, sample_rate: int, resolutions=(256, 512, 1024, 2048), mel_weight: float = 1.0,
                 complex_weight: float = 0.0, compression: float = 0.3):
        super().__init__()
        self.resolutions = list(resolutions)
        self.mel_weight = mel_weight
        self.complex_weight = complex_weight
        self.compression = compression
        for n_fft in self.resolutions:
            n_mels = min(128, n_fft // 8)
            self.register_buffer(f"window_{n_fft}", torch.hann_window(n_fft), persistent=False)
            self.register_buffer(f"mel_{n_fft}", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        pred, target = pred.reshape(-1, pred.shape[-1]), target.reshape(-1, target.shape[-1])
        parts = {"log_magnitude": 0.0, "convergence": 0.0, "mel": 0.0}
        if self.complex_weight:
            parts["complex"] = 0.0
        for n_fft in self.resolutions:
            window, mel = getattr(self, f"window_{n_fft}"), getattr(self, f"mel_{n_fft}")
            p_spec = torch.stft(pred, n_fft, n_fft // 4, window=window, return_complex=True)
            t_spec = torch.stft(target, n_fft, n_fft // 4, window=window, return_complex=True)
            p, t = p_spec.abs(), t_spec.abs()
            if self.complex_weight:
                exponent = self.compression - 1.0  # S * |S|^(c - 1) = |S|^c e^{i phase}
                p_c = p_spec * p.clamp_min(1e-5) ** exponent
                t_c = t_spec * t.clamp_min(1e-5) ** exponent
                parts["complex"] = parts["complex"] + (p_c - t_c).abs().pow(2).mean()
            # Floor at 1e-5 (about -100 dB): inaudible bins should not dominate the log loss.
            parts["log_magnitude"] = parts["log_magnitude"] + (p.clamp_min(1e-5).log() - t.clamp_min(1e-5).log()).abs().mean()
            parts["convergence"] = parts["convergence"] + torch.linalg.norm(p - t) / torch.linalg.norm(t).clamp_min(1e-7)
            p_mel, t_mel = mel @ p, mel @ t
            parts["mel"] = parts["mel"] + (p_mel.clamp_min(1e-5).log() - t_mel.clamp_min(1e-5).log()).abs().mean()
        scale = 1.0 / len(self.resolutions)
        parts = {k: v * scale for k, v in parts.items()}
        total = parts["log_magnitude"] + parts["convergence"] + self.mel_weight * parts["mel"]
        if self.complex_weight:
            total = total + self.complex_weight * parts["complex"]
        return total, {k: float(v.detach()) for k, v in parts.items()}


# -- adversarial training (codec/discriminator.py) ---------------------------------------------
# Hinge losses as in EnCodec and MelGAN, averaged over the discriminator's scales. Each takes the
# logits of every scale (a list of tensors of any shape) and returns a scalar.


def discriminator_loss(real_logits: list[torch.Tensor], fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Hinge loss of the discriminator: mean over scales of ``mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))``.

    Zero once every real logit is >= 1 and every fake one <= -1; 2 for a discriminator that outputs 0."""
    losses = [torch.relu(1 - real).mean() + torch.relu(1 + fake).mean() for real, fake in zip(real_logits, fake_logits)]
    return sum(losses) / len(losses)


def generator_adversarial_loss(fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Hinge loss of the generator: mean over scales of ``mean(relu(1 - D(x_hat)))``."""
    return sum(torch.relu(1 - fake).mean() for fake in fake_logits) / len(fake_logits)


def feature_matching_loss(real_features: list[list[torch.Tensor]], fake_features: list[list[torch.Tensor]]) -> torch.Tensor:
    """L1 between the discriminator's feature maps on real and reconstructed audio, each layer's
    divided by the mean absolute value of its real features (EnCodec), averaged over layers and
    scales. The real features are targets: pass them detached. 0 for identical inputs."""
    losses = [(fake - real).abs().mean() / real.abs().mean().clamp_min(1e-8)
              for reals, fakes in zip(real_features, fake_features) for real, fake in zip(reals, fakes)]
    return sum(losses) / len(losses)
