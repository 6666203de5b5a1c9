"""Reconstruction losses: the compressed complex term sees the phase, the magnitude terms do not."""

import torch

from codec.losses import SpectralLoss


def test_complex_term_sees_the_phase_that_magnitude_terms_miss():
    torch.manual_seed(0)
    target = torch.randn(2, 1, 8000) * 0.1
    flipped = -target  # same magnitude spectra, every phase turned by pi
    magnitude_only = SpectralLoss(16_000)
    with_phase = SpectralLoss(16_000, complex_weight=1.0)
    assert magnitude_only(flipped, target)[0] < 1e-4
    assert with_phase(target, target)[0] < 1e-6
    loss, parts = with_phase(flipped, target)
    assert parts["complex"] > 0.1 and loss > 0.1
    assert "complex" not in magnitude_only(flipped, target)[1]


def test_complex_term_has_finite_gradients_on_silence():
    pred = torch.zeros(1, 1, 4000, requires_grad=True)
    loss, _ = SpectralLoss(16_000, complex_weight=1.0)(pred, torch.zeros(1, 1, 4000))
    loss.backward()
    assert torch.isfinite(pred.grad).all()
