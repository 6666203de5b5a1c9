"""Codec training loop (``tokenwave train-codec``).

Losses: multi-resolution STFT + multi-scale mel (:mod:`codec.losses`) and the quantizer's
commitment loss; codebooks learn by EMA. AdamW with linear warm-up, cosine decay and gradient
clipping.

Checkpoints (``OUT/checkpoints/step_XXXXXXX.pt``, written atomically, the last three kept) hold
the model, optimizer, step and config; they are our own files and are read back with
``torch.load(weights_only=True)``, which cannot run code. ``--resume`` continues from the newest
readable one and falls back to an older one if the newest is corrupted. The batch of step s is
drawn from a generator seeded by (seed, s), and torch's generator (quantizer dropout, dead-code
re-seeding) is reseeded from (seed, s) too, so a resumed run repeats what an uninterrupted one
does. Every checkpoint also exports ``OUT/export/`` (float16 safetensors + config) with
entropy-coding tables counted on training crops.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from codec.config import CodecConfig
from codec.data import AudioCorpus, read_manifest, select_split, step_rng
from codec.errors import TokenwaveError
from codec.losses import SpectralLoss
from codec.model import CodecModel
from codec.modules import frame_signal
from codec.pretrained import save_pretrained


@dataclass
class TrainConfig:
    manifests: list[str]
    out_dir: str
    steps: int = 100_000
    batch_size: int = 8
    crop_seconds: float = 1.0
    lr: float = 5e-4
    warmup_steps: int = 500
    grad_clip: float = 1.0
    commitment_weight: float = 1.0
    checkpoint_every: int = 250
    eval_every: int = 250
    seed: int = 0
    threads: int | None = None
    resume: bool = False
    codec: dict = field(default_factory=dict)


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% at ``config.steps``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step_*.pt"))


def save_checkpoint(out_dir: Path, step: int, model, optimizer, codec_config: CodecConfig, keep: int = 3) -> Path:
    folder = out_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": codec_config.to_dict()},
        tmp,
    )
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    for old in _checkpoints(out_dir)[:-keep]:
        old.unlink()
    return path


def load_latest_checkpoint(out_dir: Path) -> dict | None:
    """The newest checkpoint that loads; corrupted ones are reported and skipped."""
    for path in reversed(_checkpoints(out_dir)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any torn or corrupted file: fall back to the previous one
            tqdm.write(f"warning: skipping unreadable checkpoint {path.name}: {type(error).__name__}")
    return None


@torch.no_grad()
def count_codes(model: CodecModel, corpus: AudioCorpus, crops: int = 64, seed: int = 1234) -> torch.Tensor:
    """How often each code of each level occurs on ``crops`` random 4 s training crops ``[K, N]``."""
    was_training = model.training
    model.eval()
    rng = np.random.default_rng(seed)
    counts = torch.zeros(model.max_codebooks, model.codebook_size)
    crop = 4 * model.sample_rate
    for _ in range(crops // 8):
        wav = torch.from_numpy(corpus.batch(rng, 8, crop))
        frames = frame_signal(model.pad(wav[:, 0]), model.config.n_fft, model.hop)
        latent, _ = model.encoder(frames)
        codes = model.quantizer.encode(latent, model.max_codebooks)
        for level in range(codes.shape[1]):
            counts[level] += torch.bincount(codes[:, level].reshape(-1), minlength=model.codebook_size).float()
    model.train(was_training)
    return counts + 1.0


@torch.no_grad()
def evaluate(model: CodecModel, dev_batch: torch.Tensor, loss_fn: SpectralLoss, levels=(3, 6, 12)) -> dict:
    """Spectral loss on fixed dev crops at several numbers of codebooks."""
    was_training = model.training
    model.eval()
    frames = frame_signal(model.pad(dev_batch[:, 0]), model.config.n_fft, model.hop)
    latent, _ = model.encoder(frames)
    result = {}
    for k in levels:
        if k > model.max_codebooks:
            continue
        codes = model.quantizer.encode(latent, k)
        out, _ = model.decoder(model.quantizer.decode(codes))
        recon = model.synthesize(out, dev_batch.shape[-1])
        result[f"dev_loss_{k}cb"], parts = loss_fn(recon, dev_batch)
        result[f"dev_loss_{k}cb"] = float(result[f"dev_loss_{k}cb"])
        result[f"dev_mel_{k}cb"] = parts["mel"]
    model.train(was_training)
    return result


def train_codec(config: TrainConfig) -> Path:
    """Train (or resume) and return the export folder."""
    if config.threads:
        torch.set_num_threads(config.threads)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_latest_checkpoint(out_dir) if config.resume else None
    if config.resume and checkpoint is None and _checkpoints(out_dir):
        raise TokenwaveError(f"no readable checkpoint in {out_dir / 'checkpoints'}")
    codec_config = CodecConfig.from_dict(checkpoint["config"]) if checkpoint else CodecConfig(**config.codec)

    recordings = [r for manifest in config.manifests for r in read_manifest(manifest)]
    train_set = AudioCorpus(select_split(recordings, "train"), codec_config.sample_rate)
    dev_set = AudioCorpus(select_split(recordings, "dev"), codec_config.sample_rate, progress=False)
    dev_batch = torch.from_numpy(dev_set.batch(np.random.default_rng(0), 16, 2 * codec_config.sample_rate))
    tqdm.write(f"train: {train_set.seconds / 60:.1f} min in {len(train_set.signals)} files; dev: {dev_set.seconds / 60:.1f} min")

    torch.manual_seed(config.seed)
    model = CodecModel(codec_config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.8, 0.99), weight_decay=0.01)
    start = 0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start = checkpoint["step"]
        tqdm.write(f"resumed from step {start}")
    loss_fn = SpectralLoss(codec_config.sample_rate)
    crop = int(config.crop_seconds * codec_config.sample_rate) // codec_config.hop_length * codec_config.hop_length
    with open(out_dir / "log.jsonl", "a") as log:
        model.train()
        bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train-codec", unit="step")
        window_start, window_steps = time.time(), 0
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            wav = torch.from_numpy(train_set.batch(step_rng(config.seed, step), config.batch_size, crop))
            torch.manual_seed(config.seed * 1_000_003 + step)  # quantizer dropout, dead codes: same after resume
            recon, quantized = model(wav)
            spectral, parts = loss_fn(recon, wav)
            loss = spectral + config.commitment_weight * quantized.commitment_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            window_steps += 1
            if (step + 1) % 10 == 0:
                steps_per_second = window_steps / (time.time() - window_start)
                window_start, window_steps = time.time(), 0
                record = {"step": step + 1, "loss": float(loss.detach()), "commitment": float(quantized.commitment_loss.detach()),
                          "grad_norm": float(grad_norm), "lr": lr_at(step, config), "steps_per_s": steps_per_second} | parts
                bar.set_postfix(loss=f"{record['loss']:.3f}", mel=f"{parts['mel']:.3f}", sps=f"{steps_per_second:.2f}")
                if (step + 1) % config.eval_every == 0:
                    record |= evaluate(model, dev_batch, loss_fn)
                    tqdm.write(json.dumps(record))
                log.write(json.dumps(record) + "\n")
                log.flush()
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                save_checkpoint(out_dir, step + 1, model, optimizer, codec_config)
                export(model, train_set, out_dir / "export", step + 1)
    return out_dir / "export"


def export(model: CodecModel, corpus: AudioCorpus, directory: Path, step: int) -> None:
    """Float16 weights + config with entropy tables counted on training crops."""
    model.code_counts.copy_(count_codes(model, corpus))
    save_pretrained(model, directory, extra={"training": {"steps": step}})
