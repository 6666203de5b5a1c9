"""``tokenwave tokenize``: manifests -> token shards (codec codes + phoneme ids) for LM training.

    tokenwave tokenize --manifest M [--manifest M2 ...] [--model speech-16k] --out DIR
                       [--workers N] [--shard-size 200] [--codebooks K] [--limit N]

1. **Work list.** Every manifest row (:func:`codec.data.read_manifest`; a folder of audio files
   works too) becomes one item, with the split of the codec's data (:func:`codec.data.select_split`:
   ``unseen`` speakers, every 20th recording of the others ``dev``, the rest ``train``; rows
   without a transcript, e.g. music, ``other``). Ids are ``speaker/stem`` (``~2``, ``~3`` appended
   on a clash); a file listed twice is kept once. Items are sorted by id, ``--limit`` keeps the
   first N, and shard i holds items ``[i * shard_size, (i + 1) * shard_size)``: the same inputs
   always give the same shards.
2. **Per item** (in ``--workers`` processes, one torch thread each): the audio is read at the
   codec's rate as mono (:func:`codec.audio.load_audio`), encoded whole (``[K, T]`` codes, the
   first ``--codebooks`` levels), and the transcript phonemized (:func:`tokenlm.text.text_to_ids`;
   no text gives no phonemes: such utterances serve text-free continuation). Durations are
   recorded, long files kept (the trainer caps lengths). A file that cannot be read is reported,
   skipped, and recorded in its shard's ``skipped`` list.
3. **Output**: ``DIR/shard_00000.safetensors`` ... (:mod:`tokenlm.shards`, each written atomically
   as soon as its items are done) and ``DIR/index.json`` (written first with ``"complete": false``,
   rewritten at the end with the statistics; :func:`tokenlm.shards.read_shards` refuses a folder
   whose files do not match it).
4. **Resume**: running the same command again skips every shard that exists, is valid, was made
   with the same codec, codebooks and vocabulary, and holds exactly its slice of the work list
   (same ids, texts and splits; skipped files included: fix a broken file and delete its shard
   to retry it). A
   damaged shard is redone; shards beyond the work list (an earlier, larger run) are removed. A
   folder made with another codec or vocabulary is refused.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codec.errors import TokenwaveError
from tokenlm.errors import LMError
from tokenlm.shards import INDEX_FILE, SHARD_GLOB, Utterance, atomic_write, read_shard, write_shard
from tokenlm.text import default_vocab

DEFAULT_MODEL = "speech-16k"
DEFAULT_SHARD_SIZE = 200
LONG_SECONDS = 30.0  # reported in the summary (the LM trainer caps utterances at ~20 s)


@dataclass
class WorkItem:
    """One recording to tokenize."""

    id: str
    path: str
    speaker: str
    text: str
    split: str


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


# ---------------------------------------------------------------------------------------------
# The work list


def plan_work(manifests: list[str | Path], limit: int | None = None) -> list[WorkItem]:
    """The sorted work list of ``manifests`` (see the module docstring)."""
    from codec.data import read_manifest, select_split

    recordings, seen = [], set()
    for manifest in manifests:
        if not Path(manifest).exists():
            raise LMError(f"{manifest}: no such manifest file or folder")
        try:
            rows = read_manifest(manifest)
        except TokenwaveError as error:
            raise LMError(str(error)) from None
        for recording in rows:
            key = Path(recording.path).resolve()
            if key in seen:
                continue
            seen.add(key)
            recordings.append(recording)
    split = {}
    for name in ("train", "dev", "unseen", "other"):
        for recording in select_split(recordings, name):
            split[recording.path] = name
    items, ids = [], Counter()
    for recording in sorted(recordings, key=lambda r: (r.speaker, Path(r.path).stem, str(Path(r.path).resolve()))):
        base = f"{recording.speaker}/{Path(recording.path).stem}" if recording.speaker else Path(recording.path).stem
        ids[base] += 1
        item_id = base if ids[base] == 1 else f"{base}~{ids[base]}"
        text = recording.text if isinstance(recording.text, str) else str(recording.text or "")
        items.append(WorkItem(item_id, str(Path(recording.path).resolve()), recording.speaker, text.strip(),
                              split[recording.path]))
    items.sort(key=lambda item: item.id)
    if limit is not None:
        items = items[:limit]
    return items


# ---------------------------------------------------------------------------------------------
# Encoding one item (in the main process or a worker)

_STATE: dict = {}


def _init_worker(model_name: str, codebooks: int) -> None:
    """Pool initializer: one torch thread; the codec is loaded on the first item."""
    import torch

    torch.set_num_threads(1)
    _STATE.clear()
    _STATE["model_name"], _STATE["codebooks"] = model_name, codebooks


def _model():
    if "model" not in _STATE:
        import codec

        _STATE["model"] = codec.load(_STATE["model_name"])
    return _STATE["model"]


def encode_item(item: WorkItem) -> dict:
    """``{"codes": int16 [K, T], "phonemes": int32 [P], "duration": s}`` or ``{"error": message}``."""
    import torch

    from codec.audio import load_audio
    from tokenlm.text import text_to_ids

    try:
        model = _model()
        wav, rate = load_audio(item.path, model.sample_rate, mono=True)
        codes = model.encode(torch.from_numpy(wav)[None], rate)[0, : _STATE["codebooks"]]
        phonemes = np.asarray(text_to_ids(item.text, default_vocab()) if item.text else [], dtype=np.int32)
    except TokenwaveError as error:
        return {"error": str(error)}
    except (OSError, ValueError, RuntimeError, MemoryError) as error:
        return {"error": f"{item.path}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    return {"codes": codes.cpu().numpy().astype(np.int16), "phonemes": phonemes, "duration": wav.shape[1] / rate}


# ---------------------------------------------------------------------------------------------
# Resume


def _expected(chunk: list[WorkItem]) -> dict:
    return {item.id: (item.text, item.split) for item in chunk}


def shard_is_done(path: Path, chunk: list[WorkItem], codec_info: dict, vocab) -> bool:
    """Whether ``path`` is a valid shard of exactly ``chunk`` made with this codec and vocabulary.
    Raises :class:`LMError` when it comes from another codec or vocabulary."""
    if not path.exists():
        return False
    try:
        shard = read_shard(path)
    except LMError as error:
        tqdm.write(f"warning: redoing {path.name}: {error}", file=sys.stderr)
        return False
    if shard.codec_info != codec_info or shard.vocab != vocab:
        other = shard.codec_info
        raise LMError(f"{path.parent} holds shards made with another codec or vocabulary ({other['name']} "
                      f"{other['fingerprint']}, {other['num_codebooks']} codebooks, {len(shard.vocab)} phoneme symbols); "
                      "use another --out folder")
    found = {u.id: (u.text, u.split) for u in shard.utterances}  # not the path: data folders may move
    found |= {s["id"]: None for s in shard.skipped}
    expected = _expected(chunk)
    return set(found) == set(expected) and all(found[k] in (None, expected[k]) for k in expected)


# ---------------------------------------------------------------------------------------------
# The command


def tokenize_corpus(manifests: list[str | Path], out_dir: str | Path, model: str = DEFAULT_MODEL, workers: int = 1,
                    shard_size: int = DEFAULT_SHARD_SIZE, codebooks: int | None = None, limit: int | None = None,
                    progress: bool = True) -> dict:
    """Tokenize ``manifests`` into shards under ``out_dir`` (see the module docstring); returns the
    summary also written to ``index.json``."""
    import codec

    if shard_size < 1:
        raise LMError(f"--shard-size must be at least 1, got {shard_size}")
    if workers < 1:
        raise LMError(f"--workers must be at least 1, got {workers}")
    if limit is not None and limit < 1:
        raise LMError(f"--limit must be at least 1, got {limit}")
    start = time.perf_counter()
    items = plan_work(manifests, limit)
    if not items:
        raise LMError("the manifests list no recordings")
    codec_model = codec.load(model)
    codebooks = codec_model.max_codebooks if codebooks is None else codebooks
    if not 1 <= codebooks <= codec_model.max_codebooks:
        raise LMError(f"--codebooks must be in 1..{codec_model.max_codebooks} for {codec_model.name}, got {codebooks}")
    codec_info = {"name": codec_model.name, "fingerprint": codec_model.codes_fingerprint,
                  "sample_rate": int(codec_model.sample_rate), "frame_rate": float(codec_model.frame_rate),
                  "num_codebooks": int(codebooks), "codebook_size": int(codec_model.codebook_size)}
    vocab = default_vocab()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LMError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    chunks = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    names = [shard_name(i) for i in range(len(chunks))]
    done = [shard_is_done(out / name, chunk, codec_info, vocab) for name, chunk in zip(names, chunks)]
    for stale in sorted({p.name for p in out.glob(SHARD_GLOB)} - set(names)):
        tqdm.write(f"note: removing {stale} (not part of this work list)", file=sys.stderr)
        (out / stale).unlink()
    header = {"format": "tokenwave-shards", "version": 1, "complete": False, "codec": codec_info,
              "manifests": [str(Path(m).resolve()) for m in manifests], "shard_size": shard_size,
              "shards": [{"file": name} for name in names]}
    atomic_write(out / INDEX_FILE, (json.dumps(header, indent=2, ensure_ascii=False) + "\n").encode())

    todo = [(i, item) for i, chunk in enumerate(chunks) if not done[i] for item in chunk]
    if sum(done):
        tqdm.write(f"resuming: {sum(done)} of {len(chunks)} shards already done", file=sys.stderr)
    skipped_now = 0
    if todo:
        _STATE.clear()  # the main process encodes itself with --workers 1 (its torch threads as set)
        _STATE.update(model_name=model, codebooks=codebooks, model=codec_model)
        bar = tqdm(total=len(todo), desc="tokenize", unit="utt", disable=not progress, dynamic_ncols=True)
        pending: dict[int, list] = {}
        try:
            results = _run(todo, model, codebooks, workers)
            for (index, item), result in zip(todo, results):
                if "error" in result:
                    skipped_now += 1
                    tqdm.write(f"warning: skipped {item.id}: {result['error']}", file=sys.stderr)
                    bar.set_postfix(skipped=skipped_now)
                pending.setdefault(index, []).append((item, result))
                if len(pending[index]) == len(chunks[index]):
                    _write(out / names[index], pending.pop(index), codec_info, vocab)
                bar.update(1)
        finally:
            bar.close()
    summary = _summary(out, names, header, time.perf_counter() - start, skipped_now, sum(done))
    atomic_write(out / INDEX_FILE, (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode())
    return summary


def _run(todo: list, model: str, codebooks: int, workers: int):
    """Results of :func:`encode_item` in the order of ``todo``."""
    if workers == 1 or len(todo) < 2:
        yield from (encode_item(item) for _, item in todo)
        return
    context = multiprocessing.get_context("spawn")  # no fork: torch's thread pools do not survive it
    with context.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(model, codebooks)) as pool:
        yield from pool.imap(encode_item, [item for _, item in todo], chunksize=4)


def _write(path: Path, results: list, codec_info: dict, vocab) -> None:
    utterances, skipped = [], []
    for item, result in results:
        if "error" in result:
            skipped.append({"id": item.id, "source": item.path, "reason": result["error"]})
            continue
        utterances.append(Utterance(item.id, item.speaker, item.text, float(result["duration"]), item.split,
                                    result["codes"], result["phonemes"], item.path))
    write_shard(path, utterances, codec_info, vocab, skipped)


def _summary(out: Path, names: list[str], header: dict, seconds: float, skipped_now: int, reused: int) -> dict:
    """Statistics over every shard (read back and validated), for index.json and the console."""
    splits: dict[str, dict] = {}
    shards, skipped, long_files = [], [], 0
    phoneme_counts: Counter = Counter()
    max_duration = 0.0
    for name in names:
        shard = read_shard(out / name)
        frames = sum(u.num_frames for u in shard.utterances)
        shards.append({"file": name, "utterances": len(shard.utterances), "frames": frames,
                       "skipped": len(shard.skipped)})
        skipped += shard.skipped
        for u in shard.utterances:
            entry = splits.setdefault(u.split, {"utterances": 0, "frames": 0, "seconds": 0.0, "with_text": 0})
            entry["utterances"] += 1
            entry["frames"] += u.num_frames
            entry["seconds"] += u.duration
            entry["with_text"] += bool(len(u.phonemes))
            long_files += u.duration > LONG_SECONDS
            max_duration = max(max_duration, u.duration)
            phoneme_counts.update(u.phonemes.tolist())
    vocab = default_vocab()
    for entry in splits.values():
        entry["seconds"] = round(entry["seconds"], 3)
    return header | {
        "complete": True,
        "shards": shards,
        "utterances": sum(s["utterances"] for s in shards),
        "frames": sum(s["frames"] for s in shards),
        "seconds": round(sum(e["seconds"] for e in splits.values()), 3),
        "splits": dict(sorted(splits.items())),
        "longest_seconds": round(max_duration, 3),
        f"longer_than_{LONG_SECONDS:g}s": long_files,
        "vocab_size": len(vocab),
        "phoneme_symbols_used": len(phoneme_counts),
        "unknown_phonemes": phoneme_counts.get(vocab.unk_id, 0),
        "skipped": skipped,
        "run": {"seconds": round(seconds, 1), "reused_shards": reused, "skipped_this_run": skipped_now},
    }


def add_arguments(parser) -> None:
    parser.add_argument("--manifest", action="append", required=True, metavar="M",
                        help="manifest.jsonl or folder of audio files (repeatable)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for shard_*.safetensors and index.json")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"codec name or folder (default {DEFAULT_MODEL})")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes, one torch thread each (default 1)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                        help=f"utterances per shard (default {DEFAULT_SHARD_SIZE})")
    parser.add_argument("--codebooks", type=int, default=None, help="RVQ levels to keep (default: all of the codec's)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N recordings of the sorted work list")


def main(args) -> int:
    summary = tokenize_corpus(args.manifest, args.out, model=args.model, workers=args.workers,
                              shard_size=args.shard_size, codebooks=args.codebooks, limit=args.limit)
    frame_rate = summary["codec"]["frame_rate"]
    splits = ", ".join(f"{name} {e['utterances']}" for name, e in summary["splits"].items())
    print(f"{summary['utterances']} utterances in {len(summary['shards'])} shards -> {args.out} "
          f"({summary['run']['reused_shards']} shards reused) in {summary['run']['seconds']:.1f} s")
    print(f"splits: {splits}; {summary['frames']} frames ({summary['frames'] / frame_rate / 3600:.2f} h), "
          f"{summary['codec']['num_codebooks']} codebooks of {summary['codec']['name']}")
    print(f"phonemes: {summary['phoneme_symbols_used']} of {summary['vocab_size']} symbols used, "
          f"{summary['unknown_phonemes']} unknown; longest {summary['longest_seconds']:.1f} s")
    if summary["skipped"]:
        print(f"{len(summary['skipped'])} file(s) skipped (listed in {Path(args.out) / INDEX_FILE})", file=sys.stderr)
        return 1
    return 0

