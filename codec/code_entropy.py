"""``tokenwave code-entropy``: how many bits a codec's codes need under simple context models.

For each RVQ level k, count tables are fitted on the codes of one split (``train``) and scored
on another (``dev`` by default), as held-out cross-entropy in bits per code, for:

* ``marginal``: ``p(c_k[t])``, one distribution per level (what ``range`` coding spends);
* ``previous frame``: ``p(c_k[t] | c_k[t-1])``, the same level one frame earlier (what
  ``context`` coding uses at level 1);
* ``previous level``: ``p(c_k[t] | c_(k-1)[t])``, the level above in the same frame (what
  ``context`` coding uses at levels 2 .. L);
* ``mixed``: ``a p_frame + b p_level + (1 - a - b) p_marginal``, the weights per level chosen
  (on a 0.1 grid) on every other utterance of the fitting split after fitting the tables on the
  rest, never on the scored split; the marginal share lets the mixture fall back where a context only adds
  noise.

Rows are smoothed towards the level's marginal exactly as the context coder smooths its tables
(:func:`codec.context_coding.smoothed_rows`, which also gives no code more than 1/2, so every
code costs at least 1 bit), so the numbers are what a coder with such tables would spend, up to a
few bytes per chunk. Bits are compared with plain 10-bit packing
(``log2 N`` bits per code) at the model's bitrates.

    tokenwave code-entropy --model speech-16k --manifest ../shared/data/manifest.jsonl

Codes ``[K, T]`` per utterance; tables ``[N + 1, N]`` (row N: the first frame, which has no
previous frame).
"""

from __future__ import annotations

import json
import math

import numpy as np

from codec.context_coding import smoothed_rows
from codec.entropy import coding_table
from codec.errors import ModelError, TokenwaveError

MODELS = ("marginal", "previous frame", "previous level", "mixed")
#: Mixture weights (previous frame, previous level), the marginal taking the rest.
MIXING_GRID = [(a / 10, b / 10) for a in range(11) for b in range(11 - a)]


def _contexts(codes: list[np.ndarray], level: int, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(context ``[F]``, code ``[F]``) over every frame of ``codes`` for ``level`` (0-based):
    ``kind`` "frame" -> the previous frame's code of that level (``size`` at an utterance's
    first frame), "level" -> the code of the level above in the same frame (``size`` at level 0)."""
    contexts, targets = [], []
    for utterance in codes:
        row = utterance[level]
        if kind == "frame":
            contexts.append(np.concatenate([[size], row[:-1]]))
        else:
            contexts.append(utterance[level - 1] if level > 0 else np.full(row.shape, size))
        targets.append(row)
    return np.concatenate(contexts).astype(np.int64), np.concatenate(targets).astype(np.int64)


def _table(contexts: np.ndarray, targets: np.ndarray, marginal: np.ndarray, size: int) -> np.ndarray:
    counts = np.zeros((size + 1, size))
    np.add.at(counts, (contexts, targets), 1.0)
    return smoothed_rows(counts, marginal)


def _marginal(codes: list[np.ndarray], level: int, size: int) -> np.ndarray:
    counts = sum(np.bincount(u[level], minlength=size) for u in codes).astype(np.float64) + 1.0
    return counts / counts.sum()


def _level_probabilities(fit: list[np.ndarray], score: list[np.ndarray], level: int, size: int) -> dict:
    """The probability each model gives to every code of ``level`` in ``score``, tables fitted on ``fit``."""
    marginal = _marginal(fit, level, size)
    targets = np.concatenate([u[level] for u in score]).astype(np.int64)
    result = {"marginal": coding_table(marginal[None], 1, size)[0][targets]}
    for kind, name in (("frame", "previous frame"), ("level", "previous level")):
        table = _table(*_contexts(fit, level, kind, size), marginal, size)
        contexts, _ = _contexts(score, level, kind, size)
        result[name] = table[contexts, targets]
    return result


def _bits(p: np.ndarray) -> float:
    return float(-np.log2(p).mean())


def _mixed(probabilities: dict, weights: tuple[float, float]) -> np.ndarray:
    frame, level = weights
    return (frame * probabilities["previous frame"] + level * probabilities["previous level"]
            + (1.0 - frame - level) * probabilities["marginal"])


def code_entropy(fit: list[np.ndarray], score: list[np.ndarray], codebook_size: int) -> list[dict]:
    """Per level: bits per code of ``score``'s codes under each of :data:`MODELS`, and the mixture's
    weights ``mix`` (previous frame, previous level; the marginal has the rest).

    ``fit``, ``score``: utterances ``[K, T]`` (all with the same K, codes in ``[0, codebook_size)``).
    The weights are chosen on the odd-numbered utterances of ``fit`` with tables from the even ones,
    then the tables are refitted on all of ``fit``."""
    if not fit or not score:
        raise TokenwaveError("code-entropy needs codes to fit the tables on and codes to score")
    levels = fit[0].shape[0]
    if any(u.ndim != 2 or u.shape[0] != levels for u in fit + score):
        raise TokenwaveError(f"every utterance needs {levels} levels of codes")
    if any(u.size and (u.min() < 0 or u.max() >= codebook_size) for u in fit + score):
        raise TokenwaveError(f"codes must lie in [0, {codebook_size})")
    first, second = fit[0::2], fit[1::2] or fit[0::2]  # interleaved: both halves hold every speaker
    rows = []
    for level in range(levels):
        tune = _level_probabilities(first, second, level, codebook_size)
        weights = min(MIXING_GRID, key=lambda w: _bits(_mixed(tune, w)))
        scored = _level_probabilities(fit, score, level, codebook_size)
        scored["mixed"] = _mixed(scored, weights)
        rows.append({"level": level + 1, "mix": list(weights)} | {name: _bits(scored[name]) for name in MODELS})
    return rows


def report(rows: list[dict], codebook_size: int, level_counts: list[int], frames: tuple[int, int]) -> str:
    """Markdown: bits per code per level and model, then the saving against plain packing at each
    number of levels in ``level_counts``."""
    packed = math.ceil(math.log2(codebook_size))
    header = (f"codes: {frames[0]:,} frames to fit the tables, {frames[1]:,} frames scored; "
              f"plain packing: {packed} bits per code")
    lines = [header, "",
             "| level | " + " | ".join(MODELS) + " | mixture (frame, level) |", "|---" * (len(MODELS) + 2) + "|"]
    for row in rows:
        weights = ", ".join(f"{w:.1f}" for w in row["mix"])
        lines.append(f"| {row['level']} | " + " | ".join(f"{row[m]:.2f}" for m in MODELS) + f" | {weights} |")
    lines += ["", "| levels | " + " | ".join(MODELS) + " |", "|---" * (len(MODELS) + 1) + "|"]
    for count in level_counts:
        cells = [f"{100 * (1 - np.mean([r[m] for r in rows[:count]]) / packed):.1f}% smaller" for m in MODELS]
        lines.append(f"| 1..{count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="codec name or folder")
    parser.add_argument("--manifest", action="append", required=True, help="manifest.jsonl or folder (repeatable)")
    parser.add_argument("--fit-split", default="train", choices=["train", "dev", "unseen"],
                        help="recordings the tables are counted on (default train)")
    parser.add_argument("--split", default="dev", choices=["train", "dev", "unseen"],
                        help="recordings scored (default dev)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many recordings of each split")
    parser.add_argument("--json", dest="json_path", help="also write the rows as JSON here")
    parser.add_argument("--threads", type=int, default=None)


def main(args) -> int:
    import torch

    import codec
    from codec.atomic import atomic_write_text
    from codec.data import read_manifest, select_split
    from codec.model import CodecModel
    from codec.tables import encoded_recordings

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit_split == args.split:
        raise TokenwaveError("--fit-split and --split must differ: the tables would be scored on their own data")
    if args.limit is not None and args.limit < 1:
        raise TokenwaveError(f"--limit must be at least 1, not {args.limit}")
    model = codec.load(args.model)
    if not isinstance(model, CodecModel):
        raise TokenwaveError(f"{args.model}: code-entropy measures tokenwave codecs")
    recordings = [r for m in args.manifest for r in read_manifest(m)]
    codes = {}
    for split in (args.fit_split, args.split):
        chosen = select_split(recordings, split)[: args.limit]
        if not chosen:
            raise TokenwaveError(f"no speech recordings in split {split!r}")
        codes[split] = [c.astype(np.int64) for c in encoded_recordings(model, chosen)]
    rows = code_entropy(codes[args.fit_split], codes[args.split], model.codebook_size)
    counts = sorted({_codebooks(model, kbps) for kbps in (1.5, 3, 6)} - {None} | {model.max_codebooks})
    frames = tuple(sum(u.shape[1] for u in codes[s]) for s in (args.fit_split, args.split))
    print(report(rows, model.codebook_size, counts, frames))
    if args.json_path:
        atomic_write_text(args.json_path, json.dumps({"model": args.model, "fit_split": args.fit_split,
                                                      "split": args.split, "frames": frames, "levels": rows}, indent=1))
    return 0


def _codebooks(model, kbps: float) -> int | None:
    """Codebooks at ``kbps``, or None where the codec has no such bitrate."""
    try:
        return model.bitrate_to_codebooks(kbps)
    except ModelError:
        return None
