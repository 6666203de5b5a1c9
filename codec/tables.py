"""``tokenwave count-codes``: a codec's entropy-coding tables, counted on its training data.

Training exports count codes on a few dozen random crops, which is enough for per-level
tables but far too little for context tables (a 1024-code level has a million
``(previous, next)`` pairs). This command encodes every recording of a split (``train`` by
default: the tables must not be fitted to the data they are measured on) at the model's full
number of codebooks, counts the codes (:func:`codec.context_coding.count_contexts`) and writes
the model with the new tables to ``--out``. Weights other than the tables are copied
unchanged, so the decoder and the codes stay the same, but the model's fingerprint changes:
token files entropy-coded with the old tables need the old model.

    tokenwave count-codes --model weights/speech-16k --manifest ../shared/data/manifest.jsonl \
        --manifest runs/synth/manifest.jsonl --context-levels 3 --out runs/speech-16k-tables
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from codec.context_coding import count_contexts
from codec.data import read_manifest, select_split
from codec.errors import AudioError, TokenwaveError

#: Counts are stored as float16 (like all weights); a table whose largest count is above this
#: is scaled down as a whole (the distributions it gives barely change) so none overflows.
MAX_STORED_COUNT = 2.0**15


def storable(counts: np.ndarray) -> np.ndarray:
    """``counts`` scaled (all by one factor) so that the largest is at most :data:`MAX_STORED_COUNT`,
    and rounded to float16 values: the model in memory is the model that is saved."""
    largest = float(counts.max()) if counts.size else 0.0
    if largest > MAX_STORED_COUNT:
        counts = counts * (MAX_STORED_COUNT / largest)
    return counts.astype(np.float16).astype(np.float64)


def encoded_recordings(model, recordings, progress: bool = True):
    """Codes ``[K, T]`` (all K codebooks) of each readable recording, resampled to the model's rate;
    unreadable ones are reported on stderr and skipped."""
    from codec.audio import load_audio

    for recording in tqdm(recordings, desc="count-codes", unit="file", disable=not progress, file=sys.stderr):
        try:
            wav, _ = load_audio(recording.path, model.sample_rate)
        except AudioError as error:
            tqdm.write(f"skipped: {error}", file=sys.stderr)
            continue
        if wav.shape[-1] < model.hop:
            continue
        with torch.inference_mode():
            codes = model.encode(torch.from_numpy(wav), model.sample_rate)  # [1, K, T]
        yield codes[0].cpu().numpy()


def with_tables(model, context_levels: int, counts: tuple[np.ndarray, np.ndarray, np.ndarray]):
    """A copy of ``model`` with ``context_levels`` and the counted tables (all other weights kept)."""
    from codec.model import CodecModel

    config = dataclasses.replace(model.config, context_levels=context_levels)
    state = {k: v for k, v in model.state_dict().items() if k not in ("transition_counts", "pair_counts")}
    code_counts, transitions, pairs = counts
    state["code_counts"] = torch.from_numpy(storable(code_counts + 1.0)).float()  # + 1: as training exports
    if context_levels:
        state["transition_counts"] = torch.from_numpy(storable(transitions)).float()
        state["pair_counts"] = torch.from_numpy(storable(pairs)).float()
    copy = CodecModel(config)
    copy.load_state_dict(state)
    return copy.prepare_for_inference()


def _model_folder(name_or_path: str) -> Path:
    """The folder of a tokenwave codec given by folder or shipped name."""
    from codec.pretrained import CONFIG_FILE, weights_dirs

    path = Path(name_or_path).expanduser()
    candidates = [path] + ([d / name_or_path for d in weights_dirs()] if "/" not in name_or_path else [])
    for folder in candidates:
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise TokenwaveError(f"{name_or_path}: not a codec folder (model.safetensors + config.json) or the name of one in weights/")


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="codec folder (model.safetensors + config.json) or name")
    parser.add_argument("--manifest", action="append", required=True,
                        help="manifest.jsonl or folder of audio (repeatable): the model's training data")
    parser.add_argument("--split", default="train", choices=["train", "dev", "unseen", "other", "all"],
                        help="which recordings to count (default train)")
    parser.add_argument("--context-levels", type=int, default=None,
                        help="levels coded with a context (0: per-level tables only; default: the model's)")
    parser.add_argument("--out", required=True, help="folder for the model with the new tables")
    parser.add_argument("--force", action="store_true", help="write into --out even if it holds a model")


def main(args) -> int:
    from codec.pretrained import CONFIG_FILE, load_pretrained, save_pretrained

    out = Path(args.out)
    if (out / CONFIG_FILE).exists() and not args.force:
        raise TokenwaveError(f"{out} already holds a model; use --force to replace it")
    source = _model_folder(args.model)
    model = load_pretrained(source)
    levels = model.config.context_levels if args.context_levels is None else args.context_levels
    if not 0 <= levels <= model.max_codebooks:
        raise TokenwaveError(f"--context-levels must be in [0, {model.max_codebooks}], got {levels}")
    recordings = [r for m in args.manifest for r in read_manifest(m)]
    if args.split != "all":
        recordings = select_split(recordings, args.split)
    if not recordings:
        raise TokenwaveError(f"no recordings in split {args.split!r} of {', '.join(args.manifest)}")
    frames = used = 0

    def counted():
        nonlocal frames, used
        for codes in encoded_recordings(model, recordings):
            frames, used = frames + codes.shape[1], used + 1
            yield codes

    counts = count_contexts(counted(), model.codebook_size, levels)
    new = with_tables(model, levels, counts)
    config = json.loads((source / CONFIG_FILE).read_text())
    record = {"recordings": used, "frames": frames, "hours": round(frames / model.frame_rate / 3600, 3),
              "split": args.split, "manifests": [str(m) for m in args.manifest], "context_levels": levels}
    kept = {key: config[key] for key in ("training", "refit_codes") if key in config}
    save_pretrained(new, out, extra={**kept, "entropy_tables": record})
    print(f"counted {frames:,} frames ({record['hours']:.2f} h) of {used} recordings; "
          f"context levels {levels}; fingerprint {model.fingerprint} -> {new.fingerprint}; written to {out}")
    return 0
