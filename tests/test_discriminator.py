"""The multi-scale STFT discriminator and the adversarial losses (codec/discriminator.py, codec/losses.py)."""

import pytest
import torch

from codec.discriminator import MultiScaleSTFTDiscriminator
from codec.losses import discriminator_loss, feature_matching_loss, generator_adversarial_loss


@pytest.mark.parametrize("sample_rate, n_ffts", [(16_000, [2048, 1024, 512]), (24_000, [3072, 1536, 768])])
def test_shapes_at_16_and_24_khz(sample_rate, n_ffts):
    torch.manual_seed(0)
    discriminator = MultiScaleSTFTDiscriminator(sample_rate, channels=4)
    assert [scale.n_fft for scale in discriminator.scales] == n_ffts
    length = sample_rate // 4
    logits, features = discriminator(torch.randn(2, 1, length))
    assert len(logits) == len(features) == 3
    for n_fft, score, maps in zip(n_ffts, logits, features):
        frames, bins = (length - n_fft) // (n_fft // 4) + 1, n_fft // 2 + 1
        assert [tuple(m.shape) for m in maps] == [
            (2, 4, frames, bins), (2, 4, frames, (bins + 1) // 2), (2, 4, frames, (bins + 3) // 4),
            (2, 4, frames, (bins + 7) // 8), (2, 4, frames, (bins + 7) // 8)]
        assert score.shape == (2, 1, frames, (bins + 7) // 8)
    # Weight norm: each convolution holds a direction and a magnitude.
    names = {name for name, _ in discriminator.named_parameters()}
    assert "scales.0.layers.0.parametrizations.weight.original0" in names


def test_hinge_losses_and_feature_matching():
    real, fake = [torch.full((2, 1, 3, 4), 1.0)], [torch.full((2, 1, 3, 4), -1.0)]
    assert discriminator_loss(real, fake).item() == 0.0  # perfectly separated, margin 1
    assert discriminator_loss(fake, real).item() == 4.0  # the wrong way round
    assert discriminator_loss([torch.zeros(3)], [torch.zeros(3)]).item() == 2.0
    assert generator_adversarial_loss(real).item() == 0.0 and generator_adversarial_loss(fake).item() == 2.0

    features = [[torch.randn(2, 4, 3, 5) for _ in range(3)] for _ in range(2)]
    assert feature_matching_loss(features, features).item() == 0.0
    scaled = [[2 * f for f in maps] for maps in features]
    assert feature_matching_loss(features, scaled).item() == pytest.approx(1.0)  # |2f - f| / |f|: normalised per layer
    assert feature_matching_loss(scaled, [[4 * f for f in maps] for maps in features]).item() == pytest.approx(1.0)


def test_discriminator_learns_to_tell_a_tone_from_noise():
    """A few hinge steps on a toy problem: real = tones, fake = noise. The discriminator scores
    real above fake, its loss falls, and the generator's adversarial loss is higher on fake."""
    torch.manual_seed(0)
    discriminator = MultiScaleSTFTDiscriminator(16_000, n_ffts=(512, 256), channels=8)
    optimizer = torch.optim.AdamW(discriminator.parameters(), lr=3e-3, betas=(0.5, 0.9))
    t = torch.arange(4000) / 16_000
    real = 0.3 * torch.sin(2 * torch.pi * torch.tensor([[220.0], [330.0], [440.0], [550.0]]) * t)[:, None]
    fake = 0.1 * torch.randn(4, 1, 4000)
    losses = []
    for _ in range(60):  # the loss stays near 2 for ~15 steps and oscillates before it drops; how long varies by CPU
        logits, _ = discriminator(torch.cat([real, fake]))
        loss = discriminator_loss([x[:4] for x in logits], [x[4:] for x in logits])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(2.0, abs=1e-3)  # logits start near 0
    assert sum(losses[-10:]) / 10 < 0.3 * losses[0]
    with torch.no_grad():
        real_logits, _ = discriminator(real)
        fake_logits, _ = discriminator(fake)
    assert all(r.mean() > f.mean() for r, f in zip(real_logits, fake_logits))
    assert generator_adversarial_loss(fake_logits) > generator_adversarial_loss(real_logits)
