"""Token LM training (``tokenwave train-lm --stage ar|nar``).

- **Data** (:mod:`tokenlm.data`): the ``train`` split of the shards (plus text-free material such
  as music), length-bucketed batches of at most ``batch_frames`` padded code frames, drawn per
  step from a generator seeded by (seed, step). Text utterances longer than ``max_seconds`` are
  skipped (and reported), text-free ones cropped. A fraction ``text_free_prob`` of rows lose
  their phonemes at each step, so the models learn to continue audio without text; this applies
  to both stages, because ``tokenwave continue`` runs the NAR without text too.
- **Stages**: ``ar`` trains :class:`tokenlm.ar.ARModel` on the first codebook layer
  (:func:`tokenlm.ar.ar_loss`); ``nar`` trains :class:`tokenlm.nar.NARModel` on layers 2..K, one
  random layer and a random prompt prefix per row (:func:`tokenlm.nar.nar_loss`).
- **Optimisation**: AdamW (betas 0.9/0.95, weight decay 0.01 on matrices only), linear warm-up
  then cosine decay to 10% (:func:`codec.checkpoints.warmup_cosine`), gradient clipping at 1. On
  CUDA the forward pass runs under autocast (bf16 where supported, else fp16 with a gradient
  scaler); the CPU trains in float32 unless ``--precision bf16`` (:mod:`codec.precision`).
- **Checkpoints** (:mod:`codec.checkpoints`): ``OUT/checkpoints/step_XXXXXXX.pt`` every
  ``checkpoint_every`` steps, at the end and when ``--time-limit`` runs out, atomic, the newest 3
  kept, with model, optimizer (and gradient scaler) state, the LM config, vocab and codec info.
  ``--resume`` continues from the newest readable one (a corrupted newest one falls back to the
  previous one). Since the batch of step s depends on (seed, s) only and torch's generator
  (dropout, the NAR's prompt and layer draws) is reseeded from (seed, step, rank) at every step,
  a resumed run repeats exactly what an uninterrupted one does, also after ``kill -9`` (bit for
  bit on the CPU; on CUDA the data and random draws are the same, but some kernels, e.g.
  embedding gradients, are not deterministic). Changing the data options on resume changes the
  data order (with a note).
  Each checkpoint also exports ``OUT/export/`` with :func:`tokenlm.pretrained.save_lm` (float16
  weights, vocab, codec info; with ``--init``, that LM's ``sampling`` entry), ready for
  ``tokenwave continue --ar/--nar`` or to copy into ``weights/``. ``OUT/best/`` is the export of
  the evaluation with the lowest dev loss so far (:class:`BestExport`; early stopping for a run
  that overfits).
- **Data from several corpora**: ``--shards`` repeated merges the folders (one codec and
  phoneme vocabulary; utterance ids unique).
- **Logs**: ``OUT/log.jsonl`` every ``log_every`` steps (loss, accuracy, grad norm, lr,
  ``steps_per_s``, ``tokens_per_s`` (target tokens, all processes), padded batch frames,
  text-free share, ``data``: a CRC of the batches of the logged window), the same numbers for
  TensorBoard under ``OUT/tensorboard/``, a tqdm bar with ETA. Every ``eval_every`` steps
  teacher-forced dev accuracy per layer on the shards' ``dev`` split: AR ``dev_accuracy_1``
  (with text) and ``dev_accuracy_1_text_free``; NAR ``dev_accuracy_2`` .. ``dev_accuracy_K``.
- **Several processes** (``torchrun --nproc_per_node N -m codec.cli train-lm ...``; gloo on the
  CPU, NCCL on CUDA): every process draws the global batch of the step and trains on rows
  ``rank::N``; each process's loss is weighted by its share of the batch's target tokens, so
  DDP's gradient average is the token-mean gradient of the global batch. Only rank 0 logs,
  evaluates, checkpoints and exports.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from codec import checkpoints
from codec.checkpoints import RunLog, warmup_cosine
from codec.distributed import Distributed, run_training_job, wrap_ddp
from codec.precision import PRECISIONS, autocast, autocast_dtype
from tokenlm.ar import ARModel, ar_loss
from tokenlm.batch import LMBatch, collate
from tokenlm.config import LMConfig
from tokenlm.data import LMCorpus, batch_digest, rank_slice, split_utterances, training_utterances
from tokenlm.errors import LMError
from tokenlm.grow import grow_layers
from tokenlm.nar import NARModel, nar_loss
from tokenlm.shards import shard_folders

MODELS = {"ar": ARModel, "nar": NARModel}
MODEL_OPTIONS = ("d_model", "n_layers", "n_heads", "ff_mult", "dropout")
DATA_OPTIONS = ("seed", "batch_frames", "text_free_prob", "max_seconds", "n_buckets")  # decide the batch of a step


@dataclass
class TrainLMConfig:
    stage: str  # "ar" or "nar"
    shards: str | list  # one folder of token shards, or several (merged; one codec and vocabulary)
    out_dir: str
    steps: int = 100_000
    batch_frames: int = 6000  # padded code frames per (global) batch
    lr: float = 5e-4
    warmup_steps: int = 1000
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    text_free_prob: float = 0.1
    guided_attention: float = 1.0  # AR: weight of the guided-attention term (0: off)
    nar_stage_decay: float = 1.0  # NAR: stage k drawn with weight decay**(k-1) (1: uniform)
    guided_sigma: float = 0.2  # AR: width of the guided-attention diagonal (fraction of the utterance)
    max_seconds: float = 20.0
    n_buckets: int = 10
    checkpoint_every: int = 1000
    eval_every: int = 1000
    log_every: int = 10
    keep_checkpoints: int = 3
    dev_utterances: int = 64  # teacher-forced dev evaluation on at most this many dev utterances
    seed: int = 0
    threads: int | None = None
    resume: bool = False
    time_limit_minutes: float | None = None  # stop after this long in the loop, with a checkpoint and an export
    init: str | None = None  # start a new run from these exported LM weights (e.g. on a refitted codec's tokens)
    remap_codes: bool = False  # with init: re-index its code rows to a refitted codec (tokenlm/remap.py)
    remap_shards: list[str] | None = None  # with init: re-index by code co-occurrence with these shards of its codec
    grow_layers: int | None = None  # with init: that many transformer layers, the new ones identity (tokenlm/grow.py)
    paced_text: bool = False  # new runs: paced phoneme positions (LMConfig.text_pace from the training data)
    device: str = "auto"  # auto (CUDA when available), cpu or cuda
    precision: str = "auto"  # auto (bf16/fp16 autocast on CUDA, fp32 on CPU), fp32, bf16 (also CPU), fp16
    model: dict = field(default_factory=dict)  # LMConfig overrides: d_model, n_layers, n_heads, ...

    def __post_init__(self) -> None:
        self.shards = shard_folders(self.shards)
        self.remap_shards = shard_folders(self.remap_shards) if self.remap_shards else None
        checks = {
            f"--stage must be ar or nar, got {self.stage!r}": self.stage in MODELS,
            "--steps must be positive": self.steps > 0,
            "--batch-frames must be positive": self.batch_frames > 0,
            "--lr must be positive": self.lr > 0,
            "--warmup must be >= 0": self.warmup_steps >= 0,
            "--checkpoint-every, --eval-every and the log interval must be positive":
                min(self.checkpoint_every, self.eval_every, self.log_every) > 0,
            "--text-free-prob must be in [0, 1]": 0.0 <= self.text_free_prob <= 1.0,
            "--guided-attention must be >= 0": self.guided_attention >= 0,
            "--grow-layers must be a positive number of layers": self.grow_layers is None or self.grow_layers > 0,
            "--remap-codes and --remap-shards are two ways to do one thing: give one":
                not (self.remap_codes and self.remap_shards),
            "--guided-sigma must be positive": self.guided_sigma > 0,
            "--nar-stage-decay must be in (0, 1]": 0.0 < self.nar_stage_decay <= 1.0,
            "--max-seconds must be positive": self.max_seconds > 0,
            f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}":
                self.precision in PRECISIONS,
            "keep_checkpoints must be >= 1": self.keep_checkpoints >= 1,
            f"--time-limit must be a number of minutes >= 0, not {self.time_limit_minutes}":
                self.time_limit_minutes is None or self.time_limit_minutes >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise LMError(message)
        unknown = sorted(set(self.model) - set(MODEL_OPTIONS))
        if unknown:
            raise LMError(f"unknown model options: {', '.join(unknown)}")


def load_corpus(folders: str | Path | list):
    """``(utterances, codec_info, vocab)`` of every shard in one folder or several (validated, one
    codec and vocab)."""
    from tokenlm.shards import read_corpus

    corpus = read_corpus(folders)
    return corpus.utterances, corpus.codec_info, corpus.vocab


def make_optimizer(model: torch.nn.Module, config: TrainLMConfig) -> torch.optim.AdamW:
    """AdamW, betas 0.9/0.95; weight decay on matrices (linear layers, embeddings) only, not on
    biases and norm gains (as nanoGPT)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


class _Forward:
    """What the loss functions call: the attributes of the bare model, the forward pass of its DDP
    wrapper (which averages the gradients over the processes)."""

    def __init__(self, net: torch.nn.Module, model: torch.nn.Module):
        self._net, self._model = net, model

    def __call__(self, *args, **kwargs):
        return self._net(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of torch's generators at ``step`` on process ``rank`` (dropout, NAR prompt/layer draws)."""
    return (seed * 1_000_003 + step + rank * 7_919_993_071) % (2**63)


def compute_loss(stage: str, model, batch: LMBatch, generator: torch.Generator, layer: int | None = None,
                 guided: tuple[float, float] = (0.0, 0.2), stage_decay: float = 1.0):
    """``(loss, metrics)`` of one batch: AR first layer (plus ``guided = (weight, sigma)``
    attention guidance), or NAR (random layer per row drawn with ``stage_decay``, or ``layer``)."""
    if stage == "ar":
        return ar_loss(model, batch, *guided)
    return nar_loss(model, batch, generator, stage=layer, stage_decay=stage_decay)


@torch.no_grad()
def evaluate(stage: str, model: torch.nn.Module, dev_batches: list, device: torch.device,
             amp: torch.dtype | None, guided_sigma: float = 0.2) -> dict:
    """Teacher-forced dev accuracy per layer (and loss) on fixed batches.

    AR: ``dev_accuracy_1`` / ``dev_loss_1`` with text, ``dev_accuracy_1_text_free`` without,
    ``dev_guided_1``: the guided-attention penalty (how far head 0 of each block is from the
    diagonal; about 0.6 for attention spread evenly over the phonemes, lower is more diagonal);
    NAR: ``dev_accuracy_k`` / ``dev_loss_k`` for layers k = 2..K (a fixed random prompt prefix)."""
    was_training = model.training
    model.eval()
    K = model.config.n_codebooks
    runs = [("1", None, False), ("1_text_free", None, True)] if stage == "ar" else [
        (str(k + 1), k, False) for k in range(1, K)
    ]
    result = {}
    try:
        for name, layer, text_free in runs:
            generator = torch.Generator().manual_seed(1234)  # the same prompts at every evaluation
            correct = loss_sum = guided_sum = tokens = 0.0
            guide = (1.0 if stage == "ar" and not text_free else 0.0, guided_sigma)
            for rows in dev_batches:
                if text_free:
                    rows = [dataclasses.replace(row, phonemes=row.phonemes[:0]) for row in rows]
                batch = collate(rows, 1 if stage == "ar" else K).to(device)
                with autocast(device, amp):
                    _, metrics = compute_loss(stage, model, batch, generator, layer, guide)
                correct += metrics["accuracy"] * metrics["tokens"]
                loss_sum += metrics["loss"] * metrics["tokens"]
                guided_sum += metrics.get("guided", 0.0) * metrics["tokens"]
                tokens += metrics["tokens"]
            result[f"dev_accuracy_{name}"] = correct / max(tokens, 1)
            if not text_free:
                result[f"dev_loss_{name}"] = loss_sum / max(tokens, 1)
            if guide[0] > 0:
                result[f"dev_guided_{name}"] = guided_sum / max(tokens, 1)
    finally:
        model.train(was_training)
    return result


def train_lm(config: TrainLMConfig) -> Path:
    """Train (or resume) and return the export folder (in every process of a torchrun job)."""
    return run_training_job(_train, config)


def _train(config: TrainLMConfig, device: torch.device, distributed: Distributed) -> Path:
    main = distributed.is_main
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoints.resume_checkpoint(out_dir, config.resume,
                                               required=("model", "optimizer", "step", "stage", "lm"))
    if checkpoint is not None and checkpoint["stage"] != config.stage:
        raise LMError(f"{out_dir} holds a run of --stage {checkpoint['stage']}; cannot resume it as --stage {config.stage}")
    if checkpoint is None and not config.init:  # before the shards are read
        if config.remap_codes or config.remap_shards:
            raise LMError("--remap-codes and --remap-shards need --init (the LM whose code rows are re-indexed)")
        if config.grow_layers is not None:
            raise LMError("--grow-layers needs --init (the LM to grow)")
    if checkpoint is not None and distributed.is_main:
        before = checkpoint.get("train", {})
        changed = [key for key in DATA_OPTIONS if key in before and before[key] != getattr(config, key)]
        if "shards" in before and shard_folders(before["shards"]) != config.shards:
            changed.append("shards")
        if changed:
            tqdm.write(f"note: {', '.join(changed)} changed since the checkpoint: the data order differs from the "
                       "interrupted run's", file=sys.stderr)

    utterances, codec_info, vocab = load_corpus(config.shards)
    shards = ", ".join(config.shards)
    frame_rate = float(codec_info.get("frame_rate", 50.0))
    groups = split_utterances(utterances)
    train_set = LMCorpus(training_utterances(utterances), frame_rate, config.max_seconds, config.n_buckets,
                         config.batch_frames)
    dev_set = LMCorpus(groups.get("dev", []), frame_rate, config.max_seconds)
    if not len(train_set):
        raise LMError(f"no training utterances in {shards} (split 'train', at most {config.max_seconds:g} s)")
    K = min(u.codes.shape[0] for u in train_set.utterances)
    if config.stage == "nar" and K < 2:
        raise LMError("the NAR needs shards with at least 2 codebooks")
    if checkpoint is not None:
        lm_config = LMConfig.from_dict(checkpoint["lm"])
        if checkpoint.get("codec", {}).get("fingerprint") != codec_info.get("fingerprint"):
            raise LMError(f"the shards in {shards} come from another codec than the run in {out_dir}")
        if checkpoint.get("vocab") != vocab.to_dict():
            raise LMError(f"the shards in {shards} use another phoneme vocabulary than the run in {out_dir}")
        if main and any(lm_config.to_dict()[k] != v for k, v in config.model.items()):
            tqdm.write("note: the model options are taken from the checkpoint", file=sys.stderr)
        if main and config.init:
            tqdm.write(f"note: resuming the run in {out_dir}; --init {config.init} is not used", file=sys.stderr)
        if main and (config.remap_codes or config.remap_shards):
            tqdm.write(f"note: resuming the run in {out_dir}; --remap-codes/--remap-shards is not used", file=sys.stderr)
        if main and config.grow_layers is not None:
            tqdm.write(f"note: resuming the run in {out_dir}; --grow-layers is not used", file=sys.stderr)
    elif config.init:
        initial = initial_weights(config.init, config.stage, vocab, int(codec_info["codebook_size"]), K)
        if main:
            tqdm.write(f"new run from the weights in {config.init} (model options taken from them)")
        if config.grow_layers is not None:
            grown_from = initial.config.n_layers
            initial = grow_layers(initial, config.grow_layers)
            if main:
                tqdm.write(f"grown from {grown_from} to {config.grow_layers} layers (the new ones start as identity)")
        lm_config = initial.config
        if config.remap_codes:
            remapped = remap_init_codes(initial, config.init, codec_info)
            if main:
                tqdm.write(f"code rows remapped from {remapped['from']} to {remapped['to']}; codes kept per level: "
                           f"{remapped['codes_mapped_to_themselves']}")
        if config.remap_shards:
            remapped = remap_init_by_shards(initial, config.init, codec_info, utterances, config.remap_shards)
            if main:
                tqdm.write(f"code rows remapped by co-occurrence on {remapped['utterances']} utterances "
                           f"({remapped['frames']} frames); same code in both: {remapped['same_code_share']}; "
                           f"codes kept per level: {remapped['codes_mapped_to_themselves']}")
    else:
        lm_config = LMConfig(**({"n_phonemes": max(len(vocab), 2), "codebook_size": int(codec_info["codebook_size"]),
                                 "n_codebooks": K} | config.model))
    if checkpoint is None and config.paced_text:
        lm_config = dataclasses.replace(lm_config, text_pace=median_pace(train_set.utterances))
        if main:
            detail = ("without a text prompt" if config.stage == "ar"
                      else "in the data, a record only: each row is paced by its own length")
            tqdm.write(f"paced text positions: {lm_config.text_pace:g} frames per phoneme {detail} "
                       "(the median of the training utterances)")
    if train_set.max_frames > lm_config.max_frames:
        raise LMError(f"--max-seconds {config.max_seconds:g} is longer than the model's "
                      f"{lm_config.max_frames / frame_rate:g} s")
    if main:
        processes = f"; {distributed.world_size} processes" if distributed.enabled else ""
        tqdm.write(f"train: {len(train_set)} utterances, {train_set.frames / frame_rate / 3600:.2f} h "
                   f"({train_set.text_free_only} without text); dev: {len(dev_set)}; device: {device.type}{processes}")
        if train_set.skipped_long or dev_set.skipped_long:
            tqdm.write(f"note: skipped {train_set.skipped_long} training and {dev_set.skipped_long} dev utterances "
                       f"with text longer than {config.max_seconds:g} s", file=sys.stderr)

    torch.manual_seed(config.seed)
    model = MODELS[config.stage](lm_config)
    start = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        start = checkpoint["step"]
    elif config.init:
        model.load_state_dict(initial.state_dict())
        del initial
    model.to(device)
    amp = autocast_dtype(config.precision, device)
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        if main:
            tqdm.write(f"resumed from step {start}")
    # Read once per run and kept in the checkpoints, so a resume without --init still exports it.
    init_sampling = (checkpoint or {}).get("init_sampling") or _init_sampling(config)
    del checkpoint
    distributed.check_same_step(start, device)
    net = wrap_ddp(model, device, distributed)
    forward = _Forward(net, model)
    if main:
        tqdm.write(f"{config.stage} model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
                   f"{lm_config.n_layers} layers x {lm_config.d_model}; precision: {amp or torch.float32}")
    dev_batches = dev_set.fixed_batches(config.batch_frames, config.dev_utterances) if len(dev_set) else []
    n_layers = 1 if config.stage == "ar" else K
    best = BestExport(out_dir / "best", zlib.crc32(b"".join(
        batch_digest(rows).to_bytes(4, "little") for rows in dev_batches)))
    state = {"stage": config.stage, "lm": lm_config.to_dict(), "codec": dict(codec_info),
             "vocab": vocab.to_dict(), "train": dataclasses.asdict(config), "init_sampling": init_sampling}

    with contextlib.closing(RunLog(out_dir, start, enabled=main)) as log:
        net.train()
        bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=f"train-lm {config.stage}",
                   unit="step", disable=not main, dynamic_ncols=True)
        window = _Window()
        loop_start = time.time()
        for step in bar:
            lr = warmup_cosine(step, config.lr, config.warmup_steps, config.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            rows = train_set.step_batch(config.seed, step, config.batch_frames, config.text_free_prob,
                                        min_rows=distributed.world_size)
            mine = rank_slice(rows, distributed.rank, distributed.world_size)
            batch = collate(mine, n_layers).to(device)
            seed = step_seed(config.seed, step, distributed.rank)
            torch.manual_seed(seed)  # dropout: the same after a resume, different on each process
            generator = torch.Generator().manual_seed(seed)  # NAR prompt lengths and layers
            with autocast(device, amp):
                loss, metrics = compute_loss(config.stage, forward, batch, generator,
                                             guided=(config.guided_attention, config.guided_sigma),
                                             stage_decay=config.nar_stage_decay)
            tokens = _global_tokens(metrics["tokens"], distributed, device)
            if distributed.enabled:  # the token mean of the global batch, once DDP averages the gradients
                loss = loss * (metrics["tokens"] * distributed.world_size / max(tokens, 1))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            window.add(metrics, tokens, rows, max(r.codes.shape[1] for r in rows) * len(rows))

            record = {}
            if (step + 1) % config.log_every == 0:
                record = window.record(distributed, device) | {"grad_norm": grad_norm, "lr": lr}
                window = _Window()
                if main:
                    bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.3f}",
                                    sps=f"{record['steps_per_s']:.2f}")
            if (step + 1) % config.eval_every == 0 and dev_batches and main:
                record |= evaluate(config.stage, model, dev_batches, device, amp, config.guided_sigma)
                tqdm.write(json.dumps({"step": step + 1} | {k: round(v, 4) for k, v in record.items()
                                                            if isinstance(v, float)}))
                if best.improves(record):
                    best.save(model, vocab, codec_info, config, step + 1, init_sampling)
            if record and main:
                log.write({"step": step + 1} | record)
            out_of_time = (config.time_limit_minutes is not None and (step + 1) % 10 == 0
                           and distributed.past_time_limit(loop_start, config.time_limit_minutes, device))
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps or out_of_time:
                if main:
                    extra = {} if scaler is None else {"scaler": scaler.state_dict()}
                    checkpoints.save_checkpoint(out_dir, step + 1, state | extra | {
                        "model": model.state_dict(), "optimizer": optimizer.state_dict()}, config.keep_checkpoints)
                    export(model, out_dir / "export", vocab, codec_info, config, step + 1, init_sampling)
                distributed.barrier()  # the others wait for the checkpoint and the export
            if out_of_time:
                if main:
                    tqdm.write(f"time limit of {config.time_limit_minutes:g} min reached after step {step + 1}: "
                               f"checkpoint and export written; --resume continues the run")
                break
    return out_dir / "export"


def median_pace(utterances: list) -> float:
    """Median frames per phoneme over the utterances with text (3 decimals)."""
    rates = [u.codes.shape[1] / len(u.phonemes) for u in utterances if len(u.phonemes)]
    if not rates:
        raise LMError("--paced-text needs training utterances with text")
    return round(float(np.median(rates)), 3)


def initial_weights(folder: str, stage: str, vocab, codebook_size: int, n_codebooks: int) -> torch.nn.Module:
    """The exported LM in ``folder`` to start a run from, checked against the shards: same stage,
    phoneme vocabulary, codebook size and number of codebooks. Its codec may differ (that is the
    point: fine-tuning on the tokens of a refitted or retrained codec)."""
    from tokenlm.pretrained import load_lm

    model, init_vocab = load_lm(folder, kind=stage)
    if init_vocab.to_dict() != vocab.to_dict():
        raise LMError(f"--init {folder} uses another phoneme vocabulary than the shards")
    if model.config.codebook_size != codebook_size or model.config.n_codebooks != n_codebooks:
        raise LMError(f"--init {folder} models {model.config.n_codebooks} codebooks of {model.config.codebook_size} "
                      f"codes, the shards have {n_codebooks} of {codebook_size}")
    return model.float().train()


def remap_init_codes(model: torch.nn.Module, folder: str, codec_info: dict) -> dict:
    """Re-index the code rows of the ``--init`` LM in ``folder`` (trained on the codec its config
    names) to the shards' codec, which must be a refit of it: same encoder, same codebook shape
    (:mod:`tokenlm.remap`). Both codecs are loaded by name and checked against the recorded codes
    fingerprints. Returns the remap summary."""
    from codec import load as load_codec
    from tokenlm.pretrained import read_lm_info
    from tokenlm.remap import remap_from_codec

    old_info = read_lm_info(folder).get("codec") or {}
    codecs = []
    for role, info in (("--init LM's", old_info), ("shards'", codec_info)):
        name = info.get("name")
        if not name:
            raise LMError(f"--remap-codes: the {role} codec has no name to load it by")
        try:
            loaded = load_codec(name)
        except Exception as error:  # any load failure is the same user error here
            raise LMError(f"--remap-codes: cannot load the {role} codec {name!r}: {error}") from error
        found = getattr(loaded, "codes_fingerprint", None)
        if found != info.get("fingerprint"):
            raise LMError(f"--remap-codes: the codec {name!r} found here is not the {role} one "
                          f"(codes fingerprint {found}, expected {info.get('fingerprint')})")
        codecs.append(loaded)
    old, new = codecs
    if old.codes_fingerprint == new.codes_fingerprint:
        raise LMError("--remap-codes: the --init LM was trained on the shards' codes already; nothing to remap")
    old_encoder, new_encoder = old.encoder.state_dict(), new.encoder.state_dict()
    if old_encoder.keys() != new_encoder.keys() or any(
            not torch.equal(old_encoder[k].float(), new_encoder[k].float()) for k in old_encoder):
        raise LMError(f"--remap-codes: {new.name} has another encoder than {old.name}; remapping is only meaningful "
                      "after a refit of the codebooks (tokenwave refit-codes)")
    return remap_from_codec(model, old, new)


def remap_init_by_shards(model: torch.nn.Module, folder: str, codec_info: dict, utterances: list,
                         old_shards: list[str]) -> dict:
    """Re-index the code rows of the ``--init`` LM in ``folder`` to the shards' codec (``codec_info``,
    ``utterances``) by how often each new code shares a frame with each old one in ``old_shards``:
    the same recordings tokenized with the LM's own codec (:func:`tokenlm.remap.remap_from_shards`).
    For a codec fine-tuned as a whole, whose encoder moved. Returns the remap summary."""
    from tokenlm.pretrained import read_lm_info
    from tokenlm.remap import remap_from_shards

    old_info = read_lm_info(folder).get("codec") or {}
    old_utterances, old_codec, _ = load_corpus(old_shards)
    if old_codec.get("fingerprint") != old_info.get("fingerprint"):
        raise LMError(f"--remap-shards: {', '.join(old_shards)} come from codec {old_codec.get('name')} "
                      f"{old_codec.get('fingerprint')}, the --init LM was trained on {old_info.get('name')} "
                      f"{old_info.get('fingerprint')}")
    if old_codec.get("fingerprint") == codec_info.get("fingerprint"):
        raise LMError("--remap-shards: the --init LM was trained on the shards' codes already; nothing to remap")
    N = int(codec_info["codebook_size"])
    if int(old_codec["codebook_size"]) != N:
        raise LMError(f"--remap-shards: {old_codec['codebook_size']} codes per level there, {N} in the shards")
    return remap_from_shards(model, old_utterances, utterances, N)


def export(model: torch.nn.Module, folder: Path, vocab, codec_info: dict, config: TrainLMConfig, step: int,
           init_sampling: dict | None = None, best: dict | None = None) -> Path:
    """Float16 weights + config (vocab, codec info, training summary) for inference;
    ``init_sampling`` (:func:`_init_sampling`) gives the config its ``sampling`` entry."""
    from tokenlm.pretrained import save_lm

    training = {"stage": config.stage, "steps": step, "batch_frames": config.batch_frames,
                "text_free_prob": config.text_free_prob, "shards": list(config.shards)}
    if config.init:
        training["init"] = str(config.init)
        if config.remap_codes:
            training["remap_codes"] = True
        if config.remap_shards:
            training["remap_shards"] = list(config.remap_shards)
        if config.grow_layers is not None:
            training["grow_layers"] = config.grow_layers
    if best is not None:
        training["best"] = best
    sampling = None
    if init_sampling is not None:
        training["sampling_from"] = init_sampling["from"]
        sampling = init_sampling["sampling"]
    return save_lm(model, folder, vocab, extra={"training": training}, codec=dict(codec_info), sampling=sampling)


def _init_sampling(config: TrainLMConfig) -> dict | None:
    """``{"sampling": ..., "from": folder}``: the ``sampling`` entry of the ``--init`` LM (the
    decoding it was tuned for), which a fine-tune's exports keep: without it ``speak`` and
    ``eval-tts`` would fall back to plain sampling, far from what the weights were evaluated with.
    None without one (or if the ``--init`` folder is unreadable)."""
    from tokenlm.pretrained import read_lm_info

    if not config.init:
        return None
    try:
        sampling = read_lm_info(config.init).get("sampling")
    except LMError:
        return None
    return None if sampling is None else {"sampling": sampling, "from": str(config.init)}


def dev_loss(record: dict) -> float | None:
    """The mean teacher-forced dev loss over the evaluated layers (``dev_loss_k``), None without any."""
    losses = [value for key, value in record.items() if key.startswith("dev_loss_")]
    return sum(losses) / len(losses) if losses else None


class BestExport:
    """``RUN/best``: the export with the lowest dev loss so far, for runs that overfit (the
    checkpoints rotate). Its config records that loss and a digest of the dev set, so a resumed
    run keeps beating the same number; a different dev set (other shards) starts afresh."""

    def __init__(self, folder: Path, dev_set: int):
        from tokenlm.pretrained import read_lm_info

        self.folder = folder
        self.dev_set = dev_set
        self.loss = float("inf")
        if (folder / "config.json").is_file():
            try:
                kept = read_lm_info(folder)["extra"]["training"]["best"]
                if kept["dev_set"] == dev_set:
                    self.loss = float(kept["dev_loss"])
            except (LMError, KeyError, TypeError, ValueError):
                pass  # an unreadable or older best export is replaced by the next evaluation

    def improves(self, record: dict) -> bool:
        loss = dev_loss(record)
        if loss is None or not loss < self.loss:
            return False
        self.loss = loss
        return True

    def save(self, model: torch.nn.Module, vocab, codec_info: dict, config: TrainLMConfig, step: int,
             init_sampling: dict | None = None) -> Path:
        return export(model, self.folder, vocab, codec_info, config, step, init_sampling,
                      best={"step": step, "dev_loss": self.loss, "dev_set": self.dev_set})


def _global_tokens(tokens: int, distributed: Distributed, device: torch.device) -> int:
    """Target tokens of the global batch (summed over the processes)."""
    if not distributed.enabled:
        return tokens
    total = torch.tensor([tokens], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(total)
    return int(total.item())


class _Window:
    """Sums over the steps between two log records."""

    def __init__(self):
        self.start = time.time()
        self.steps = 0
        self.sums = {"loss": 0.0, "accuracy": 0.0}
        self.tokens = 0
        self.frames = 0
        self.rows = 0
        self.text_free = 0
        self.digest = 0

    def add(self, metrics: dict, global_tokens: int, rows: list, padded_frames: int) -> None:
        self.steps += 1
        if "guided" in metrics:
            self.sums.setdefault("guided", 0.0)
        for key in self.sums:
            self.sums[key] += float(metrics[key])
        self.tokens += global_tokens
        self.frames += padded_frames
        self.rows += len(rows)
        self.text_free += sum(row.text_free for row in rows)
        self.digest = zlib.crc32(batch_digest(rows).to_bytes(4, "little"), self.digest)

    def record(self, distributed: Distributed, device: torch.device) -> dict:
        """Means over the window (and over the processes), speeds, the data digest."""
        seconds = max(time.time() - self.start, 1e-9)
        means = distributed.mean({key: value / self.steps for key, value in self.sums.items()}, device)
        return means | {
            "steps_per_s": self.steps / seconds,
            "tokens_per_s": self.tokens / seconds,
            "batch_frames": self.frames / self.steps,
            "batch_rows": self.rows / self.steps,
            "text_free": self.text_free / max(self.rows, 1),
            "data": f"{self.digest:08x}",
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainLMConfig(stage="ar", shards="", out_dir="")
    lm = LMConfig()
    parser.add_argument("--stage", choices=sorted(MODELS), required=True,
                        help="ar: first codebook layer from phonemes; nar: layers 2..K")
    parser.add_argument("--shards", required=True, action="append",
                        help="folder of token shards (tokenwave tokenize); repeat it to train on several corpora "
                             "made with the same codec")
    parser.add_argument("--out", required=True, help="run folder: checkpoints, logs, export/")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"total steps (default {defaults.steps})")
    parser.add_argument("--batch-frames", type=int, default=defaults.batch_frames,
                        help=f"padded code frames per batch, all processes together (default {defaults.batch_frames})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr:g})")
    parser.add_argument("--warmup", type=int, default=defaults.warmup_steps,
                        help=f"warm-up steps (default {defaults.warmup_steps})")
    parser.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                        help=f"checkpoint and export every N steps (default {defaults.checkpoint_every})")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help=f"teacher-forced dev accuracy every N steps (default {defaults.eval_every})")
    parser.add_argument("--log-every", type=int, default=defaults.log_every, help=argparse.SUPPRESS)
    parser.add_argument("--text-free-prob", type=float, default=defaults.text_free_prob,
                        help=f"share of rows trained without their text, for continuation "
                             f"(default {defaults.text_free_prob:g})")
    parser.add_argument("--guided-attention", type=float, default=defaults.guided_attention,
                        help=f"AR: weight of the guided-attention term that pulls one head per block towards the "
                             f"text/audio diagonal (0: off; default {defaults.guided_attention:g})")
    parser.add_argument("--guided-sigma", type=float, default=defaults.guided_sigma,
                        help=f"AR: width of that diagonal as a fraction of the utterance (default {defaults.guided_sigma:g})")
    parser.add_argument("--nar-stage-decay", type=float, default=defaults.nar_stage_decay,
                        help="NAR: draw the trained layer k (2..K) with weight DECAY**(k-2); below 1 trains the lower "
                             f"layers, which carry most of the intelligibility, more often (default {defaults.nar_stage_decay:g}: "
                             "uniform)")
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds,
                        help=f"longer utterances: skipped when they have text, cropped otherwise "
                             f"(default {defaults.max_seconds:g})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint")
    parser.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                        help="stop after this many minutes of training with a checkpoint and an export (checked every "
                             "10 steps; --resume continues; the learning-rate schedule still follows --steps)")
    parser.add_argument("--init", default=None, metavar="LM",
                        help="start a new run from this exported AR/NAR folder (its model options, fresh optimizer "
                             "and schedule); its codec may differ from the shards' (fine-tuning after a codec change)")
    parser.add_argument("--remap-codes", action="store_true",
                        help="with --init from an LM of a codec whose codebooks were since refitted (refit-codes): "
                             "each new code starts from the rows of the old code with the nearest vector "
                             "(tokenlm/remap.py)")
    parser.add_argument("--remap-shards", action="append", default=None, metavar="OLD_SHARDS",
                        help="with --init from an LM of a codec since fine-tuned as a whole (train-codec --init): "
                             "each new code starts from the rows of the old code it most often shares a frame "
                             "with, counted on OLD_SHARDS, the same recordings tokenized with the --init LM's "
                             "codec (repeat for several folders; tokenlm/remap.py)")
    parser.add_argument("--grow-layers", type=int, default=None, metavar="N",
                        help="with --init: a deeper LM of N transformer layers, the --init LM's first and new ones "
                             "appended that start as identity, so training resumes from the same function "
                             "(tokenlm/grow.py)")
    parser.add_argument("--paced-text", action="store_true",
                        help="new runs (also with --init): phoneme j at RoPE position j x (frames per phoneme), "
                             "audio frame t at t, so that the text/audio diagonal is a relative position "
                             "(tokenlm/ar.py, tokenlm/nar.py)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when available")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                        help="auto: bf16 (or fp16) autocast on CUDA, fp32 on the CPU; bf16 also on the CPU "
                             "(faster where it has bfloat16 instructions)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--d-model", type=int, default=lm.d_model, help=f"model width (default {lm.d_model})")
    parser.add_argument("--layers", type=int, default=lm.n_layers, help=f"transformer layers (default {lm.n_layers})")
    parser.add_argument("--heads", type=int, default=lm.n_heads, help=f"attention heads (default {lm.n_heads})")
    parser.add_argument("--ff-mult", type=int, default=lm.ff_mult, help=f"MLP width / d_model (default {lm.ff_mult})")
    parser.add_argument("--dropout", type=float, default=lm.dropout, help=f"(default {lm.dropout:g})")


def config_from_args(args: argparse.Namespace) -> TrainLMConfig:
    model = {"d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads, "ff_mult": args.ff_mult,
             "dropout": args.dropout}
    return TrainLMConfig(
        stage=args.stage, shards=args.shards, out_dir=args.out, steps=args.steps, batch_frames=args.batch_frames,
        lr=args.lr, warmup_steps=args.warmup, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
        log_every=args.log_every, text_free_prob=args.text_free_prob, guided_attention=args.guided_attention,
        guided_sigma=args.guided_sigma, nar_stage_decay=args.nar_stage_decay, max_seconds=args.max_seconds, seed=args.seed,
        threads=args.threads, resume=args.resume, time_limit_minutes=args.time_limit, init=args.init,
        remap_codes=args.remap_codes, remap_shards=args.remap_shards, grow_layers=args.grow_layers, paced_text=args.paced_text, device=args.device,
        precision=args.precision,
        model=model,
    )


def main(args: argparse.Namespace) -> int:
    folder = train_lm(config_from_args(args))
    print(f"{args.stage} model exported to {folder}")
    return 0
