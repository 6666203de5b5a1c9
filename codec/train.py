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

Adversarial training (``adversarial=True``, ``--adversarial``; off by default): from step
``adversarial_start`` on (0: from the start; a larger value pre-trains with the reconstruction
losses alone and then fine-tunes) a multi-scale STFT discriminator
(:mod:`codec.discriminator`) trains with its own AdamW (same learning rate schedule, betas
0.5/0.9) and the generator gets ``adversarial_weight`` x the hinge adversarial loss plus
``feature_matching_weight`` x the feature-matching loss (:mod:`codec.losses`). Each step first
updates the discriminator on the real batch and the detached reconstruction, then the generator
through the updated discriminator (whose parameters get no gradient from that pass). Checkpoints
then also hold the discriminator and its optimizer; resuming a checkpoint without them starts a
fresh discriminator (with a note). The export holds the codec only.

Fine-tuning the decoder alone (``init`` + ``decoder_only``, ``--init MODEL --decoder-only``): a
new run starts from exported weights, and :func:`freeze_token_space` fixes the encoder and the
codebooks (no gradients, no EMA updates; quantizer dropout still runs); the optimizer holds the
decoder's parameters only and exports keep the entropy tables, so the codes, the token files and
the model's fingerprint stay the same. ``complex_loss_weight`` adds the compressed complex
spectral loss of :class:`codec.losses.SpectralLoss`; the dev loss then includes it too.
``grow_decoder`` (``--grow-decoder N``, with ``init``) gives the new run's decoder N blocks: the
initial model's blocks, then new ones whose layer scale starts at 0, so that the grown model starts
out computing exactly what the initial one does (:func:`load_initial`).

Device: ``device="auto"`` (the default) trains on CUDA when torch sees a GPU, else on the CPU;
``"cpu"`` and ``"cuda"`` force one. Training runs in float32; ``precision="bf16"``
(``--precision bf16``) runs the encoder's and decoder's layers under bfloat16 autocast, on the
CPU too (faster where it has bfloat16 instructions), while the STFT analysis, the quantizer, the
iSTFT head, the losses, the discriminator and the dev evaluation stay in float32
(:meth:`codec.model.CodecModel.forward`).

Several processes (``torchrun --nproc_per_node N -m codec.cli train-codec ...``): when
``WORLD_SIZE`` > 1 the process group is initialised (``nccl`` on CUDA, ``gloo`` on the CPU; each
process takes the GPU ``LOCAL_RANK``) and the model is wrapped in DistributedDataParallel, which
averages the gradients. ``batch_size`` is the *global* batch: it must be divisible by the number
of processes, and rank r trains on items ``[r * B / N, (r + 1) * B / N)`` of the batch that the
generator of (seed, step) draws, so the data of a step is the same whatever the number of
processes (and a run can resume with another one). The codebooks are buffers updated in the
forward pass from statistics summed over all processes (:mod:`codec.quantizer`), so every process
keeps the same codebooks without DDP broadcasting buffers (``broadcast_buffers=False``); that they
agree is checked at every checkpoint. Quantizer dropout draws from (seed, step, rank). Logged
losses are averaged over the processes. Only rank 0 logs, writes checkpoints and exports; the
others wait at a barrier. Every process holds the whole training set in memory.

Logs: ``OUT/log.jsonl`` (one JSON line every 10 steps, dev metrics every ``eval_every`` steps)
and the same scalars for TensorBoard under ``OUT/tensorboard/`` (``train/...`` and ``dev/...``;
skipped with a note when the ``tensorboard`` package is missing).

The generic parts (devices and torchrun jobs, atomic checkpoints with corrupted-file fallback,
logs, the learning-rate schedule) live in :mod:`codec.distributed` and :mod:`codec.checkpoints`,
shared with the token LMs' training loop (:mod:`tokenlm.train`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from codec import checkpoints
from codec.checkpoints import RunLog, summary_writer, warmup_cosine
from codec.config import CodecConfig
from codec.data import AudioCorpus, mix_noise, read_manifest, select_split, step_rng
from codec.discriminator import MultiScaleSTFTDiscriminator
from codec.distributed import Distributed, no_buffer_broadcast, run_training_job, wrap_ddp
from codec.errors import TokenwaveError
from codec.losses import SpectralLoss, discriminator_loss, feature_matching_loss, generator_adversarial_loss
from codec.model import CodecModel
from codec.modules import frame_signal
from codec.precision import autocast_dtype
from codec.pretrained import save_pretrained

_summary_writer = summary_writer  # its old name here (now in codec.checkpoints)


@dataclass
class TrainConfig:
    manifests: list[str]
    out_dir: str
    steps: int = 100_000
    batch_size: int = 8  # global: split over the processes of a torchrun job
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
    device: str = "auto"  # auto (CUDA when available), cpu or cuda
    precision: str = "fp32"  # fp32, or bf16: the encoder's and decoder's layers under autocast (codec.precision)
    adversarial: bool = False  # train a discriminator too (codec.discriminator)
    adversarial_start: int = 0  # steps before that: reconstruction losses only, no discriminator
    adversarial_weight: float = 1.0  # x hinge adversarial loss, added to the generator's loss
    feature_matching_weight: float = 2.0  # x feature-matching loss, added to the generator's loss
    discriminator: dict = field(default_factory=dict)  # MultiScaleSTFTDiscriminator options (n_ffts, channels)
    discriminator_items: int | None = None  # items of each process's batch the discriminator sees (None: all)
    discriminator_crop_seconds: float | None = None  # a random window of this length per step (None: the whole crop)
    discriminator_lr_scale: float = 1.0  # the discriminator's learning rate = this x the codec's (same schedule)
    codec: dict = field(default_factory=dict)
    init: str | None = None  # a fresh run starts from these codec weights (name or folder), not at random
    complex_loss_weight: float = 0.0  # x compressed complex spectral loss (asks for the phase too)
    decoder_only: bool = False  # train the decoder alone: encoder and codebooks (the token space) stay fixed
    grow_decoder: int | None = None  # with init: this many decoder blocks, the new ones appended as identities
    time_limit_minutes: float | None = None  # stop after this much time in the loop, with a checkpoint and an export
    noise_probability: float = 0.0  # share of training crops mixed with a non-speech recording (split "other")
    noise_snr_db: tuple[float, float] = (5.0, 30.0)  # the mixtures' signal-to-noise ratio, drawn uniformly


def draw_batch(corpus: AudioCorpus, seed: int, step: int, batch_size: int, crop: int,
               rank: int = 0, world_size: int = 1, noise: AudioCorpus | None = None,
               noise_probability: float = 0.0, noise_snr_db: tuple[float, float] = (5.0, 30.0)) -> np.ndarray:
    """This process's share ``[batch_size / world_size, 1, crop]`` of the global batch of ``step``,
    with ``noise`` mixed under a share ``noise_probability`` of its items (:func:`codec.data.mix_noise`).

    The global batch depends on (seed, step) only, whatever the number of processes."""
    if batch_size % world_size:
        raise TokenwaveError(f"batch size {batch_size} is not divisible by the {world_size} processes")
    share = batch_size // world_size
    # The crops of item b depend on the draws for items < b, so every rank draws the whole
    # batch (cheap next to a training step) and keeps its slice.
    rng = step_rng(seed, step)
    batch = corpus.batch(rng, batch_size, crop)
    if noise is not None and noise_probability > 0:
        batch = mix_noise(batch, noise, rng, noise_probability, noise_snr_db)
    return batch[rank * share : (rank + 1) * share]


def quantizer_digest(model: CodecModel) -> str:
    """SHA-256 over the quantizer's buffers (codebooks, EMA statistics): equal on every process of a job."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.quantizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _check_codebooks_agree(model: CodecModel, distributed: Distributed, device: torch.device) -> None:
    if not distributed.enabled:
        return
    value = int(quantizer_digest(model)[:15], 16)  # fits in int64
    low = torch.tensor([value], dtype=torch.int64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise TokenwaveError("the codebooks of the training processes have diverged")


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% at ``config.steps``."""
    return warmup_cosine(step, config.lr, config.warmup_steps, config.steps)


def save_checkpoint(out_dir: Path, step: int, model, optimizer, codec_config: CodecConfig, keep: int = 3,
                    discriminator=None, discriminator_optimizer=None, decoder_only: bool = False) -> Path:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "config": codec_config.to_dict(),
             "decoder_only": decoder_only}
    if discriminator is not None:
        state |= {"discriminator": discriminator.state_dict(), "discriminator_optimizer": discriminator_optimizer.state_dict()}
    return checkpoints.save_checkpoint(out_dir, step, state, keep)


@torch.no_grad()
def count_codes(model: CodecModel, corpus: AudioCorpus, crops: int = 64, seed: int = 1234) -> torch.Tensor:
    """How often each code of each level occurs on ``crops`` random 4 s training crops ``[K, N]``."""
    was_training = model.training
    model.eval()
    device = model.code_counts.device
    rng = np.random.default_rng(seed)
    counts = torch.zeros(model.max_codebooks, model.codebook_size, device=device)
    crop = 4 * model.sample_rate
    for _ in range(crops // 8):
        wav = torch.from_numpy(corpus.batch(rng, 8, crop)).to(device)
        codes = model.encode(wav, model.sample_rate)
        for level in range(codes.shape[1]):
            counts[level] += torch.bincount(codes[:, level].reshape(-1), minlength=model.codebook_size).float()
    model.train(was_training)
    return counts.cpu() + 1.0


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
        recon = model.decode(model.quantizer.encode(latent, k), length=dev_batch.shape[-1])
        loss, parts = loss_fn(recon, dev_batch)
        result[f"dev_loss_{k}cb"] = float(loss)
        result[f"dev_mel_{k}cb"] = parts["mel"]
    model.train(was_training)
    return result


def train_codec(config: TrainConfig) -> Path:
    """Train (or resume) and return the export folder (in every process of a torchrun job)."""
    return run_training_job(_train, config)


def _train(config: TrainConfig, device: torch.device, distributed: Distributed) -> Path:
    main = distributed.is_main
    if config.batch_size % distributed.world_size:
        raise TokenwaveError(f"batch size {config.batch_size} is not divisible by the {distributed.world_size} processes")
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoints.resume_checkpoint(out_dir, config.resume, required=("model", "optimizer", "step", "config"))
    if checkpoint and bool(checkpoint.get("decoder_only", False)) != config.decoder_only:
        mode = "with" if checkpoint.get("decoder_only", False) else "without"
        raise TokenwaveError(f"the run in {out_dir} was trained {mode} --decoder-only: resume it the same way")
    _check_options(config)
    if config.grow_decoder is not None and not config.init:
        raise TokenwaveError("--grow-decoder needs --init (the model whose decoder it grows)")
    initial = initial_weights(config.init) if config.init and not checkpoint else None
    if checkpoint:
        codec_config = CodecConfig.from_dict(checkpoint["config"])
    elif initial is not None:
        codec_config = initial.config
        if config.grow_decoder is not None:
            codec_config = dataclasses.replace(codec_config, decoder_layers=config.grow_decoder)
    else:
        codec_config = CodecConfig(**config.codec)

    recordings = [r for manifest in config.manifests for r in read_manifest(manifest)]
    train_set = AudioCorpus(select_split(recordings, "train"), codec_config.sample_rate, progress=main)
    dev_set = AudioCorpus(select_split(recordings, "dev"), codec_config.sample_rate, progress=False)
    noise_set = None
    if config.noise_probability > 0:
        background = select_split(recordings, "other")
        if not background:
            raise TokenwaveError("--noise-probability needs non-speech recordings to mix in: manifest rows "
                                 "without a transcript (music, nature sounds)")
        noise_set = AudioCorpus(background, codec_config.sample_rate, progress=False)
    dev_batch = torch.from_numpy(dev_set.batch(np.random.default_rng(0), 16, 2 * codec_config.sample_rate)).to(device)
    if main:
        processes = f"; {distributed.world_size} processes" if distributed.enabled else ""
        tqdm.write(f"train: {train_set.seconds / 60:.1f} min in {len(train_set.signals)} files; "
                   f"dev: {dev_set.seconds / 60:.1f} min; device: {device.type}{processes}; precision: {config.precision}")

    torch.manual_seed(config.seed)
    model = CodecModel(codec_config)
    start = 0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        start = checkpoint["step"]
    elif initial is not None:
        load_initial(model, initial)
        del initial
        if main:
            tqdm.write(f"initialised from {config.init}")
    if config.decoder_only:
        freeze_token_space(model)
    model.to(device)
    mixed = autocast_dtype(config.precision, device)  # fp32 or bf16 (_check_options)
    trained = model.decoder if config.decoder_only else model
    optimizer = torch.optim.AdamW(trained.parameters(), lr=config.lr, betas=(0.8, 0.99), weight_decay=0.01)
    if checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if main:
            tqdm.write(f"resumed from step {start}")
    discriminator, d_optimizer = _discriminator(config, codec_config, checkpoint, device, main)
    del checkpoint
    net, d_net = model, discriminator
    distributed.check_same_step(start, device)
    net = wrap_ddp(model, device, distributed, **no_buffer_broadcast())
    if discriminator is not None:  # averages its gradients over the processes' slices of the batch
        d_net = wrap_ddp(discriminator, device, distributed, **no_buffer_broadcast())
    loss_fn = SpectralLoss(codec_config.sample_rate, complex_weight=config.complex_loss_weight).to(device)
    crop = int(config.crop_seconds * codec_config.sample_rate) // codec_config.hop_length * codec_config.hop_length
    disc_crop = crop
    if config.discriminator_crop_seconds is not None:
        disc_crop = min(crop, int(config.discriminator_crop_seconds * codec_config.sample_rate))
    if discriminator is not None and disc_crop < max(scale.n_fft for scale in discriminator.scales):
        raise TokenwaveError(f"--adversarial needs crops (and discriminator windows) of at least "
                             f"{max(s.n_fft for s in discriminator.scales)} samples")
    with contextlib.closing(RunLog(out_dir, start, enabled=main)) as log:
        net.train()
        if d_net is not None:
            d_net.train()
        bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="train-codec", unit="step",
                   disable=not main)
        window_start, window_steps = time.time(), 0
        loop_start = time.time()
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, config)
            for group in d_optimizer.param_groups if d_optimizer else []:
                group["lr"] = lr_at(step, config) * config.discriminator_lr_scale
            wav = draw_batch(train_set, config.seed, step, config.batch_size, crop, distributed.rank, distributed.world_size,
                             noise_set, config.noise_probability, tuple(config.noise_snr_db))
            wav = torch.from_numpy(wav).to(device, non_blocking=True)
            # Quantizer dropout, dead codes: the same after a resume (and different on each rank).
            torch.manual_seed(config.seed * 1_000_003 + step + distributed.rank * 7_919_993_071)
            recon, quantized = net(wav, mixed=mixed)
            spectral, parts = loss_fn(recon, wav)
            loss = spectral + config.commitment_weight * quantized.commitment_loss
            if discriminator is not None and step >= config.adversarial_start:
                real, fake = discriminator_view(wav, recon, config.discriminator_items, disc_crop)
                adversarial = _discriminator_step(d_net, discriminator, d_optimizer, real, fake, config.grad_clip)
                loss = loss + config.adversarial_weight * adversarial["g_adv"] + config.feature_matching_weight * adversarial["g_fm"]
                parts |= {key: float(value.detach()) for key, value in adversarial.items()}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            window_steps += 1
            if (step + 1) % 10 == 0:
                losses = {"loss": float(loss.detach()), "commitment": float(quantized.commitment_loss.detach())} | parts
                losses = distributed.mean(losses, device)  # the loss of the global batch
                steps_per_second = window_steps / (time.time() - window_start)
                window_start, window_steps = time.time(), 0
                record = ({"step": step + 1, "loss": losses.pop("loss"), "commitment": losses.pop("commitment"),
                           "grad_norm": float(grad_norm), "lr": lr_at(step, config), "steps_per_s": steps_per_second}
                          | losses)
                if main:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", mel=f"{record['mel']:.3f}", sps=f"{steps_per_second:.2f}")
                    if (step + 1) % config.eval_every == 0:
                        record |= evaluate(model, dev_batch, loss_fn)
                        tqdm.write(json.dumps(record))
                    log.write(record)
            out_of_time = (config.time_limit_minutes is not None and (step + 1) % 10 == 0
                           and distributed.past_time_limit(loop_start, config.time_limit_minutes, device))
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or out_of_time:
                _check_codebooks_agree(model, distributed, device)
                if main:
                    # Export first: it recounts code_counts (not in a decoder-only run), which the
                    # checkpoint then holds too.
                    export(model, train_set, out_dir / "export", training_record(config, step + 1),
                           count=not config.decoder_only)
                    save_checkpoint(out_dir, step + 1, model, optimizer, codec_config,
                                    discriminator=discriminator, discriminator_optimizer=d_optimizer,
                                    decoder_only=config.decoder_only)
                distributed.barrier()  # the others wait for the checkpoint and the export
            if out_of_time:
                if main:
                    tqdm.write(f"time limit of {config.time_limit_minutes:g} min reached after step {step + 1}: "
                               f"checkpoint and export written; --resume continues the run")
                break
    return out_dir / "export"


def _check_options(config: TrainConfig) -> None:
    """One-line errors for option values out of range, before any data is loaded."""
    low, high = config.noise_snr_db
    problems = [
        (not 0 <= config.noise_probability <= 1, f"--noise-probability must be in [0, 1], not {config.noise_probability}"),
        (not (np.isfinite(low) and np.isfinite(high) and low <= high),
         f"--noise-snr must be LOW,HIGH in dB with LOW <= HIGH, not {low:g},{high:g}"),
        (config.time_limit_minutes is not None and not config.time_limit_minutes >= 0,
         f"--time-limit must be a number of minutes >= 0, not {config.time_limit_minutes}"),
        (config.discriminator_items is not None and config.discriminator_items < 1,
         f"--disc-items must be at least 1, not {config.discriminator_items}"),
        (not config.discriminator_lr_scale > 0, f"--disc-lr-scale must be positive, not {config.discriminator_lr_scale}"),
        (config.discriminator_crop_seconds is not None and not config.discriminator_crop_seconds > 0,
         f"--disc-crop-seconds must be positive, not {config.discriminator_crop_seconds}"),
        (config.precision not in ("fp32", "bf16"), f"--precision must be fp32 or bf16, not {config.precision!r}"),
    ]
    for failed, message in problems:
        if failed:
            raise TokenwaveError(message)


def initial_weights(name_or_path: str) -> CodecModel:
    """The codec to start a fresh run from: a shipped model's name or a folder written by export."""
    from codec.pretrained import load

    model = load(name_or_path)
    if not isinstance(model, CodecModel):
        raise TokenwaveError(f"--init {name_or_path}: not a tokenwave codec (only those can be trained here)")
    return model


def load_initial(model: CodecModel, initial: CodecModel) -> None:
    """Copy ``initial``'s weights into ``model``, whose decoder may have more blocks: those
    start with layer scale 0 (identities), so ``model`` decodes exactly as ``initial`` does."""
    have, want = initial.config.decoder_layers, model.config.decoder_layers
    if want < have:
        raise TokenwaveError(f"--grow-decoder {want}: the initial decoder already has {have} blocks")
    state = {name: value.float() for name, value in initial.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    new = {f"decoder.stack.blocks.{i}.{name}" for i in range(have, want)
           for name in model.decoder.stack.blocks[i].state_dict()}
    if unexpected or set(missing) != new:
        raise TokenwaveError(f"--init: the initial model does not fit (missing {sorted(set(missing) - new)[:3]}, "
                             f"unexpected {unexpected[:3]})")
    with torch.no_grad():
        for block in model.decoder.stack.blocks[have:]:
            block.gamma.zero_()


def freeze_token_space(model: CodecModel) -> None:
    """Fix what decides the codes (encoder weights and codebooks) so that training changes the
    decoder alone: token files and token LMs made with the model stay valid."""
    model.encoder.requires_grad_(False)
    model.quantizer.requires_grad_(False)
    model.quantizer.learn_codebooks = False


def _discriminator(config: TrainConfig, codec_config: CodecConfig, checkpoint: dict | None, device: torch.device,
                   main: bool):
    """The discriminator and its optimizer (None, None without ``config.adversarial``), restored
    from ``checkpoint`` when it has them."""
    has_state = checkpoint is not None and "discriminator" in checkpoint
    if not config.adversarial:
        if has_state and main:
            tqdm.write("note: the checkpoint's discriminator is not used without --adversarial "
                       "and is left out of new checkpoints", file=sys.stderr)
        return None, None
    # Created after the codec from the generator seeded by config.seed: the same fresh
    # discriminator whether the run starts or resumes a checkpoint without one.
    discriminator = MultiScaleSTFTDiscriminator(codec_config.sample_rate, **config.discriminator)
    if has_state:
        try:
            discriminator.load_state_dict(checkpoint["discriminator"])
        except RuntimeError as error:
            raise TokenwaveError(f"the checkpoint's discriminator does not match TrainConfig.discriminator "
                                 f"{config.discriminator}: {str(error).splitlines()[0]}") from None
    discriminator.to(device)
    d_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=config.lr * config.discriminator_lr_scale,
                                    betas=(0.5, 0.9), weight_decay=0.01)
    if has_state:
        d_optimizer.load_state_dict(checkpoint["discriminator_optimizer"])
    elif checkpoint is not None and main:
        tqdm.write(f"note: the checkpoint of step {checkpoint['step']} has no discriminator: "
                   "starting a fresh one", file=sys.stderr)
    return discriminator, d_optimizer


def discriminator_view(wav: torch.Tensor, recon: torch.Tensor, items: int | None,
                       window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What the discriminator sees of a batch: the first ``items`` items (all when None) of real
    ``wav`` and ``recon`` ``[B, 1, N]``, cut to one random window of ``window`` samples (the same
    for real and fake) -> two ``[min(items, B), 1, min(window, N)]`` tensors.

    On a CPU the multi-scale STFT discriminator costs far more than our frame-rate codec (2D
    convolutions over every STFT bin; ``tokenwave bench --training``), and its cost is linear in
    items x samples, so a smaller view buys cheap adversarial steps. The window's start comes from
    torch's generator, which the training loop reseeds from (seed, step): a resumed run draws the
    same windows."""
    if items is not None:
        wav, recon = wav[:items], recon[:items]
    length = wav.shape[-1]
    if window < length:
        start = int(torch.randint(0, length - window + 1, ()))
        wav, recon = wav[..., start : start + window], recon[..., start : start + window]
    return wav, recon


def _discriminator_step(d_net, discriminator, d_optimizer, wav: torch.Tensor, recon: torch.Tensor,
                        grad_clip: float) -> dict[str, torch.Tensor]:
    """Update the discriminator on ``wav`` (real) vs ``recon.detach()`` (fake), then return the
    generator's losses through the updated discriminator: ``g_adv`` and ``g_fm`` (with gradients
    towards ``recon`` only) and ``d_loss`` (detached, for the log).

    ``d_net`` is ``discriminator`` or its DDP wrapper; real and fake go through it in one pass so
    that DDP sees one forward per backward. The generator's pass uses the bare module with
    frozen parameters: its gradient reaches the codec (whose own DDP wrapper averages it), not
    the discriminator."""
    batch = wav.shape[0]
    logits, _ = d_net(torch.cat([wav, recon.detach()]))
    d_loss = discriminator_loss([x[:batch] for x in logits], [x[batch:] for x in logits])
    d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    torch.nn.utils.clip_grad_norm_(discriminator.parameters(), grad_clip)
    d_optimizer.step()

    discriminator.requires_grad_(False)
    try:
        with torch.no_grad():
            _, real_features = discriminator(wav)
        fake_logits, fake_features = discriminator(recon)
    finally:
        discriminator.requires_grad_(True)
    return {"d_loss": d_loss.detach(), "g_adv": generator_adversarial_loss(fake_logits),
            "g_fm": feature_matching_loss(real_features, fake_features)}


def training_record(config: TrainConfig, steps: int) -> dict:
    """What an export's config says about its training: the steps of this run, and where it started."""
    record: dict = {"steps": steps}
    if config.init:
        record["init"] = config.init
    if config.decoder_only:
        record["decoder_only"] = True
    if config.complex_loss_weight:
        record["complex_loss_weight"] = config.complex_loss_weight
    if config.precision != "fp32":
        record["precision"] = config.precision
    if config.grow_decoder is not None:
        record["grow_decoder"] = config.grow_decoder
    if config.noise_probability:
        record["noise"] = {"probability": config.noise_probability, "snr_db": list(config.noise_snr_db)}
    if config.adversarial:
        record["adversarial"] = {"start": config.adversarial_start, "weight": config.adversarial_weight,
                                 "feature_matching_weight": config.feature_matching_weight,
                                 "discriminator": dict(config.discriminator),
                                 "items": config.discriminator_items,
                                 "crop_seconds": config.discriminator_crop_seconds,
                                 "lr_scale": config.discriminator_lr_scale}
    return record


def export(model: CodecModel, corpus: AudioCorpus, directory: Path, training: dict, count: bool = True) -> None:
    """Float16 weights + config (``training`` recorded in it) with entropy tables counted on
    training crops (``count=False``: the tables stay as they are, as in a decoder-only run, where
    they belong to the fixed token space)."""
    if count:
        model.code_counts.copy_(count_codes(model, corpus))
    save_pretrained(model, directory, extra={"training": training})
