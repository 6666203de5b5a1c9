"""Training-step cost of the two codec designs the issue allows, on this machine.

Times forward + backward + AdamW step on a batch of 1 s crops with the same multi-resolution
loss for (a) our frame-rate codec (STFT frames, ConvNeXt at 50 Hz, iSTFT head) and (b) a SEANet
waveform encoder/decoder of the EnCodec kind at 16 kHz with strides 8-5-4-2 (50 Hz), built
through ``transformers`` with random weights; then what adversarial training adds to a step:
the multi-scale STFT discriminator's own update plus the generator's adversarial and
feature-matching backward, for EnCodec's discriminator on the whole batch and for the cheaper
view that ``train-codec --disc-channels 16 --disc-items N --disc-crop-seconds 0.5`` gives; and our
step under ``--precision bf16`` (bfloat16 autocast, :mod:`codec.precision`).
``tokenwave bench --training``.
"""

from __future__ import annotations

import time

import torch

from codec.config import CodecConfig
from codec.losses import SpectralLoss
from codec.model import CodecModel


def _seanet_16k():
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(sampling_rate=16_000, upsampling_ratios=[8, 5, 4, 2], hidden_size=128, codebook_dim=128)
    model = EncodecModel(config)
    return torch.nn.ModuleList([model.encoder, model.decoder])


def _time_steps(step, steps: int) -> float:
    step()  # warm-up (and k-means initialisation of our codebooks)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bench_training_step(batch: int = 8, seconds: float = 1.0, steps: int = 3, threads: int = 2) -> str:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    wav = torch.randn(batch, 1, int(16_000 * seconds)) * 0.1
    loss_fn = SpectralLoss(16_000)

    ours = CodecModel(CodecConfig()).train()
    ours_opt = torch.optim.AdamW(ours.parameters(), 1e-4)

    def ours_step(mixed: torch.dtype | None = None):
        recon, quantized = ours(wav, mixed=mixed)
        loss = loss_fn(recon, wav)[0] + quantized.commitment_loss
        ours_opt.zero_grad()
        loss.backward()
        ours_opt.step()

    seanet = _seanet_16k().train()
    seanet_opt = torch.optim.AdamW(seanet.parameters(), 1e-4)

    def seanet_step():
        recon = seanet[1](seanet[0](wav))[..., : wav.shape[-1]]
        loss = loss_fn(recon, wav)[0]
        seanet_opt.zero_grad()
        loss.backward()
        seanet_opt.step()

    rows = [
        ("frame-rate ConvNeXt + iSTFT (ours, with RVQ)", ours, _time_steps(ours_step, steps)),
        ("SEANet waveform enc/dec (no RVQ)", seanet, _time_steps(seanet_step, steps)),
        ("ours, --precision bf16", ours, _time_steps(lambda: ours_step(torch.bfloat16), steps)),
    ]
    lines = [f"training step, batch {batch} x {seconds:g} s at 16 kHz, {threads} thread(s), median of {steps}:"]
    for name, model, seconds_per_step in rows:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        lines.append(f"  {name:48s} {params:6.2f} M params  {seconds_per_step:6.2f} s/step  {3600 / seconds_per_step:6.0f} steps/h")
    lines.append(f"  ratio: {rows[1][2] / rows[0][2]:.1f}x more steps per hour with the frame-rate design; "
                 f"bfloat16 autocast {rows[0][2] / rows[2][2]:.2f}x faster than float32 here")
    lines.append("adversarial training adds (discriminator update + adversarial/feature-matching backward):")
    for channels, items, window in [(32, batch, seconds), (16, max(1, batch // 4), min(seconds, 0.5))]:
        cost = _time_steps(_discriminator_step_fn(wav, channels, items, window), steps)
        lines.append(f"  {channels} channels, {items} item(s) x {window:g} s {'':17s} {cost:6.2f} s/step")
    return "\n".join(lines)


def _discriminator_step_fn(wav: torch.Tensor, channels: int, items: int, window: float):
    from codec.discriminator import MultiScaleSTFTDiscriminator
    from codec.train import _discriminator_step, discriminator_view

    discriminator = MultiScaleSTFTDiscriminator(16_000, channels=channels)
    optimizer = torch.optim.AdamW(discriminator.parameters(), 1e-4)
    recon = wav.clone().requires_grad_(True)

    def step():
        real, fake = discriminator_view(wav, recon, items, int(16_000 * window))
        losses = _discriminator_step(discriminator, discriminator, optimizer, real, fake, 1.0)
        (losses["g_adv"] + 2 * losses["g_fm"]).backward()

    return step
