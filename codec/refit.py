"""``tokenwave refit-codes``: bring a codec's unused codes back to life by k-means on its latents.

EMA codebooks with dead-code replacement (:mod:`codec.quantizer`) still end a short training
run with many codes that nothing uses: in the CPU-trained ``speech-16k`` a third of level 1 and
more than half of level 12 never occur on its 7 h of training speech. Those codes cost bits and
give nothing. This command refits them, one level after the other, on the encoder's latents of a
training split (the encoder and decoder are not touched):

1. quantize the level's input (the residual after the refitted earlier levels) with its codebook;
   codes that get fewer than ``min_share`` of an even share of the frames are *freed*;
2. place the freed codes by k-means with the other codes held fixed (Lloyd iterations that move
   only freed codes), seeded where the quantization error is largest; in all but the last few
   iterations a freed code left with too few frames is moved next to a frame of the largest cell,
   splitting it, so that the codes end up evenly used;
3. go on to the next level with the new residuals.

Codes used often keep their vectors and their meaning; freed ones get new ones, so the codes
fingerprint changes: token LMs need their data re-tokenized (``tokenwave tokenize``), and token
files written with the old model need the old model. The written model has per-level entropy
tables counted on the refit frames and no context tables: run ``tokenwave count-codes`` on it for
those.

    tokenwave refit-codes --model weights/speech-16k --manifest ../shared/data/manifest.jsonl \\
        --out runs/speech-16k-refit
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from codec.data import read_manifest, select_split
from codec.errors import AudioError, TokenwaveError

#: Lloyd iterations at the end that only average (no re-seeding), so the codes settle.
SETTLE_ITERS = 3
#: A freed code with fewer frames than this share of an even split is re-seeded (balancing).
BALANCE_SHARE = 0.25


@dataclass
class LevelReport:
    level: int
    freed: int  # codes refitted
    error_before: float  # mean squared quantization error per frame, old codebook
    error_after: float  # the same with the refitted codebook
    used_before: float  # share of codes used on the refit frames
    used_after: float


def collect_latents(model, recordings, max_frames: int, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Encoder latents ``[M, D]`` (float32) of recordings taken in a seeded random order until
    ``max_frames`` frames; unreadable recordings are reported on stderr and skipped."""
    from codec.audio import load_audio
    from codec.modules import frame_signal

    order = list(recordings)
    random.Random(seed).shuffle(order)
    dtype = model.encoder.proj_in.weight.dtype
    latents, total = [], 0
    bar = tqdm(total=max_frames, desc="latents", unit="frame", disable=not progress, file=sys.stderr)
    for recording in order:
        try:
            wav, _ = load_audio(recording.path, model.sample_rate)
        except AudioError as error:
            tqdm.write(f"skipped: {error}", file=sys.stderr)
            continue
        if wav.shape[-1] < model.hop:
            continue
        with torch.inference_mode():
            batch = model._as_batch(torch.from_numpy(wav[0]).to(dtype), model.sample_rate)
            frames = frame_signal(model.pad(batch), model.config.n_fft, model.hop)
            latent, _ = model.encoder(frames)  # [1, T, D]
        latents.append(latent[0].float())
        total += latent.shape[1]
        bar.update(latent.shape[1])
        if total >= max_frames:
            break
    bar.close()
    if not latents:
        raise TokenwaveError("no readable recordings to refit the codes on")
    return torch.cat(latents)[:max_frames]


def nearest(vectors: torch.Tensor, codebook: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest code ``[M]`` for ``vectors [M, D]`` and ``codebook [N, D]``."""
    squared = codebook.pow(2).sum(-1)[None]
    return torch.cat([
        torch.addmm(squared, vectors[i : i + chunk], codebook.t(), alpha=-2.0).argmin(-1)
        for i in range(0, vectors.shape[0], chunk)
    ])


def _error_weighted(vectors: torch.Tensor, codes: torch.Tensor, count: int, generator) -> torch.Tensor:
    """``count`` distinct rows of ``vectors`` drawn with probability proportional to their squared
    distance to their code ``codes [M, D]`` (k-means++ style seeding)."""
    error = (vectors - codes).pow(2).sum(-1).double()
    if float(error.sum()) <= 0:
        error = torch.ones_like(error)
    count = min(count, vectors.shape[0])
    return vectors[torch.multinomial(error / error.sum(), count, replacement=False, generator=generator)]


def refit_level(residuals: torch.Tensor, codebook: torch.Tensor, min_share: float, iters: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One level: ``residuals [M, D]``, ``codebook [N, D]`` -> (new codebook ``[N, D]``, freed
    mask ``[N]``, assignment of every residual to the new codebook ``[M]``)."""
    M, N = residuals.shape[0], codebook.shape[0]
    codebook = codebook.clone()
    assignment = nearest(residuals, codebook)
    sizes = torch.bincount(assignment, minlength=N)
    freed = sizes < min_share * M / N
    if not freed.any():
        return codebook, freed, assignment
    codebook[freed] = _error_weighted(residuals, codebook[assignment], int(freed.sum()), generator)
    for iteration in range(iters):
        assignment = nearest(residuals, codebook)
        sizes = torch.bincount(assignment, minlength=N)
        sums = torch.zeros_like(codebook).index_add_(0, assignment, residuals)
        moved = freed & (sizes > 0)
        codebook[moved] = sums[moved] / sizes[moved, None].to(codebook.dtype)
        if iteration >= iters - SETTLE_ITERS:
            continue
        starved = torch.nonzero(freed & (sizes < BALANCE_SHARE * M / N)).flatten()
        if starved.numel():
            # Split the largest cells: each starved code moves next to a frame of the currently
            # largest cell, whose size is then counted as halved.
            remaining = sizes.double().clone()
            for code in starved.tolist():
                largest = int(remaining.argmax())
                members = torch.nonzero(assignment == largest).flatten()
                pick = members[torch.randint(members.numel(), (1,), generator=generator)]
                codebook[code] = residuals[pick[0]]
                remaining[largest] /= 2
    return codebook, freed, nearest(residuals, codebook)


def refit_codebooks(latents: torch.Tensor, codebooks: list[torch.Tensor], min_share: float = 0.5,
                    iters: int = 20, seed: int = 0, progress: bool = True):
    """Refit every level in order on ``latents [M, D]``; returns (new codebooks, per-level code
    counts ``[K, N]`` on the latents, list of :class:`LevelReport`)."""
    if not 0 < min_share <= 1:
        raise TokenwaveError(f"min_share must be in (0, 1], got {min_share}")
    if iters < 1:
        raise TokenwaveError(f"iters must be >= 1, got {iters}")
    generator = torch.Generator().manual_seed(seed)
    residuals = latents.float().clone()
    new_codebooks, counts, reports = [], [], []
    for level, codebook in enumerate(tqdm(codebooks, desc="refit", unit="level", disable=not progress,
                                          file=sys.stderr)):
        old = codebook.float()
        old_assignment = nearest(residuals, old)
        new, freed, assignment = refit_level(residuals, old, min_share, iters, generator)
        N = old.shape[0]
        old_sizes = torch.bincount(old_assignment, minlength=N)
        new_sizes = torch.bincount(assignment, minlength=N)
        reports.append(LevelReport(
            level=level + 1, freed=int(freed.sum()),
            error_before=float((residuals - old[old_assignment]).pow(2).sum(-1).mean()),
            error_after=float((residuals - new[assignment]).pow(2).sum(-1).mean()),
            used_before=float((old_sizes > 0).float().mean()), used_after=float((new_sizes > 0).float().mean()),
        ))
        residuals = residuals - new[assignment]
        new_codebooks.append(new)
        counts.append(new_sizes.double())
    return new_codebooks, torch.stack(counts), reports


def with_codebooks(model, codebooks: list[torch.Tensor], code_counts: torch.Tensor, name: str | None = None):
    """A copy of ``model`` (renamed ``name`` when given) with new codebooks (their EMA state made
    consistent with them), the per-level tables ``code_counts + 1`` and no context tables."""
    from codec.model import CodecModel
    from codec.tables import storable

    config = dataclasses.replace(model.config, context_levels=0, name=name or model.config.name)
    state = {k: v for k, v in model.state_dict().items() if k not in ("transition_counts", "pair_counts")}
    for level, codebook in enumerate(codebooks):
        prefix = f"quantizer.codebooks.{level}."
        size = code_counts[level].float().clamp(min=1.0)
        state[prefix + "embed"] = codebook.to(state[prefix + "embed"].dtype)
        state[prefix + "cluster_size"] = size
        state[prefix + "embed_avg"] = codebook.float() * size[:, None]
    state["code_counts"] = torch.from_numpy(storable(code_counts.numpy() + 1.0)).float()
    copy = CodecModel(config)
    copy.load_state_dict(state)
    return copy.prepare_for_inference()


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="codec folder (model.safetensors + config.json) or name")
    parser.add_argument("--manifest", action="append", required=True,
                        help="manifest.jsonl or folder of audio (repeatable): the model's training data")
    parser.add_argument("--split", default="train", choices=["train", "dev", "unseen", "other", "all"],
                        help="which recordings to refit on (default train)")
    parser.add_argument("--max-frames", type=int, default=400_000,
                        help="latent frames to use, from recordings in random order (default 400,000: 2.2 h)")
    parser.add_argument("--min-share", type=float, default=0.5,
                        help="free the codes used by fewer frames than this share of an even split (default 0.5)")
    parser.add_argument("--iters", type=int, default=20, help="k-means iterations per level (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--name", default=None, help="name of the refitted model (default: the source model's)")
    parser.add_argument("--out", required=True, help="folder for the refitted model")
    parser.add_argument("--force", action="store_true", help="write into --out even if it holds a model")


def main(args) -> int:
    from codec.pretrained import CONFIG_FILE, load_pretrained, save_pretrained
    from codec.tables import _model_folder

    out = Path(args.out)
    if (out / CONFIG_FILE).exists() and not args.force:
        raise TokenwaveError(f"{out} already holds a model; use --force to replace it")
    if args.max_frames < 1:
        raise TokenwaveError(f"--max-frames must be positive, got {args.max_frames}")
    if args.threads:
        torch.set_num_threads(args.threads)
    source = _model_folder(args.model)
    model = load_pretrained(source)
    recordings = [r for m in args.manifest for r in read_manifest(m)]
    if args.split != "all":
        recordings = select_split(recordings, args.split)
    if not recordings:
        raise TokenwaveError(f"no recordings in split {args.split!r} of {', '.join(args.manifest)}")
    latents = collect_latents(model, recordings, args.max_frames, args.seed)
    if latents.shape[0] < model.codebook_size:
        raise TokenwaveError(f"{latents.shape[0]} frames are too few to refit {model.codebook_size} codes")
    codebooks = [cb.embed for cb in model.quantizer.codebooks]
    new_codebooks, counts, reports = refit_codebooks(latents, codebooks, args.min_share, args.iters, args.seed)
    new = with_codebooks(model, new_codebooks, counts, args.name)
    config = json.loads((source / CONFIG_FILE).read_text())
    record = {"frames": int(latents.shape[0]), "split": args.split, "manifests": [str(m) for m in args.manifest],
              "min_share": args.min_share, "iters": args.iters, "seed": args.seed,
              "levels": [dataclasses.asdict(r) for r in reports]}
    extra = {key: config[key] for key in ("training",) if key in config}
    save_pretrained(new, out, extra={**extra, "refit_codes": record})
    for r in reports:
        print(f"level {r.level:2d}: {r.freed:4d} codes refitted; used {r.used_before:.1%} -> {r.used_after:.1%}; "
              f"quantization error {r.error_before:.4f} -> {r.error_after:.4f}")
    saved = load_pretrained(out)  # the fingerprint of the weights as stored (float16)
    print(f"refitted on {latents.shape[0]:,} frames; codes fingerprint {model.codes_fingerprint} -> "
          f"{saved.codes_fingerprint}; written to {out} (per-level tables only: run tokenwave count-codes "
          f"for context tables)")
    return 0
