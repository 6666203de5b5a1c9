"""Training data of the token LMs: length-bucketed batches with a frame budget, drawn per step.

An :class:`LMCorpus` holds the utterances of one split (read from shards,
:func:`tokenlm.shards.read_shards`; the split is each utterance's ``split`` field, see
:func:`split_utterances`) and draws batches:

- **Length cap** (``max_seconds``, default 20 s): utterances *with* text that are longer are
  skipped (cropping would cut the audio away from its transcript), counted in ``skipped_long``
  and reported by the trainer; utterances *without* text (music, unlabeled speech) are cropped
  to a random window of the cap, drawn anew at every step.
- **Buckets**: utterances are sorted by (capped) length and cut into ``n_buckets`` groups of
  about equal count (fewer in a small corpus, so that each holds at least two batches' worth of
  frames). A batch comes from one bucket, so rows have similar lengths and little padding. The bucket is chosen with probability proportional to its total frames (every frame
  of the corpus about equally likely), then its utterances in random order until the padded
  size ``rows x longest`` would exceed ``batch_frames`` (at least ``min_rows`` rows).
- **Text-free rows**: with probability ``text_free_prob`` an utterance's phonemes are dropped
  for that step, so the model also learns to continue audio without text (``tokenwave
  continue``); utterances without text are always text-free.
- **Determinism**: the batch of step s depends only on (seed, s) through
  :func:`codec.data.step_rng`, so a resumed run draws exactly the batches an uninterrupted one
  would, whatever happened before. Under torchrun every process draws the whole global batch
  (cheap) and keeps rows ``rank, rank + N, ...`` (:func:`rank_slice`); ``min_rows`` = the number
  of processes guarantees each one gets a row.

Rows are :class:`Example` objects (``id``, ``phonemes`` int32 ``[P]``, ``codes`` int16 ``[K, T]``),
which :func:`tokenlm.batch.collate` pads into an :class:`tokenlm.batch.LMBatch`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from codec.data import step_rng
from tokenlm.errors import LMError

TRAIN_SPLITS = ("train",)


@dataclass
class Example:
    """One row of a batch: ``phonemes`` int32 ``[P]`` (empty when text-free), ``codes`` int16 ``[K, T]``;
    ``start``: first frame of the utterance's codes used (non-zero for cropped text-free rows)."""

    id: str
    phonemes: np.ndarray
    codes: np.ndarray
    start: int = 0

    @property
    def text_free(self) -> bool:
        return len(self.phonemes) == 0


def has_text(utterance) -> bool:
    return len(utterance.phonemes) > 0


def split_utterances(utterances: list) -> dict[str, list]:
    """Utterances grouped by their ``split`` (``train``, ``dev``, ``unseen``; text-free material such
    as music may carry ``other``: :func:`training_utterances` adds it to training, text-free only)."""
    groups: dict[str, list] = {}
    for utterance in utterances:
        groups.setdefault(str(utterance.split), []).append(utterance)
    return groups


def training_utterances(utterances: list) -> list:
    """The training set: the ``train`` split plus every utterance without text that is not held out
    (``dev``/``unseen``), e.g. music marked ``other`` (it is only ever used text-free)."""
    return [u for u in utterances if u.split in TRAIN_SPLITS or (not has_text(u) and u.split not in ("dev", "unseen"))]


class LMCorpus:
    """Utterances of one split with per-step bucketed batch drawing (see the module docstring)."""

    def __init__(self, utterances: list, frame_rate: float = 50.0, max_seconds: float = 20.0, n_buckets: int = 10,
                 batch_frames: int | None = None):
        if max_seconds <= 0:
            raise LMError(f"max_seconds must be positive, got {max_seconds}")
        self.max_frames = max(1, round(max_seconds * frame_rate))
        self.utterances: list = []
        self.skipped_long = 0
        self.skipped_empty = 0
        for utterance in utterances:
            frames = utterance.codes.shape[1]
            if frames == 0:
                self.skipped_empty += 1
            elif frames > self.max_frames and has_text(utterance):
                self.skipped_long += 1
            else:
                self.utterances.append(utterance)
        self.lengths = np.array([min(u.codes.shape[1], self.max_frames) for u in self.utterances], dtype=np.int64)
        order = np.argsort(self.lengths, kind="stable")
        if batch_frames:  # a small corpus: fewer buckets, so that each can fill a batch (twice over)
            n_buckets = min(n_buckets, int(self.lengths.sum()) // (2 * batch_frames))
        n_buckets = max(1, min(n_buckets, len(order)))
        self.buckets = [bucket for bucket in np.array_split(order, n_buckets) if len(bucket)]
        totals = np.array([self.lengths[b].sum() for b in self.buckets], dtype=np.float64)
        self.bucket_weights = totals / totals.sum() if len(totals) else totals

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())

    @property
    def text_free_only(self) -> int:
        """Utterances without any text."""
        return sum(not has_text(u) for u in self.utterances)

    def example(self, index: int, rng: np.random.Generator | None, text_free: bool) -> Example:
        """Utterance ``index`` as a row: cropped to a window of ``max_frames`` (random with ``rng``,
        else the first), phonemes dropped when ``text_free`` or when it has none."""
        utterance = self.utterances[index]
        frames = utterance.codes.shape[1]
        start = 0
        if frames > self.max_frames:  # only text-free utterances get here
            start = int(rng.integers(0, frames - self.max_frames + 1)) if rng is not None else 0
        codes = utterance.codes[:, start : start + self.max_frames]
        phonemes = utterance.phonemes if (has_text(utterance) and not text_free) else utterance.phonemes[:0]
        return Example(str(utterance.id), phonemes, codes, start)

    def batch(self, rng: np.random.Generator, batch_frames: int, text_free_prob: float = 0.0,
              min_rows: int = 1) -> list[Example]:
        """One global batch: rows of one bucket whose padded size ``rows x longest <= batch_frames``
        (but at least ``min_rows`` rows, repeating utterances if the bucket is smaller)."""
        if not self.utterances:
            raise LMError("no utterances to draw batches from")
        bucket = self.buckets[int(rng.choice(len(self.buckets), p=self.bucket_weights))]
        order = rng.permutation(bucket)
        if len(order) < min_rows:
            order = np.resize(order, min_rows)
        chosen, longest = [], 0
        for index in order:
            longest_with = max(longest, int(self.lengths[index]))
            if chosen and len(chosen) >= min_rows and (len(chosen) + 1) * longest_with > batch_frames:
                break
            chosen.append(int(index))
            longest = longest_with
        drops = rng.random(len(chosen)) < text_free_prob
        return [self.example(index, rng, bool(drop)) for index, drop in zip(chosen, drops)]

    def step_batch(self, seed: int, step: int, batch_frames: int, text_free_prob: float = 0.0,
                   min_rows: int = 1) -> list[Example]:
        """The global batch of ``step``: depends on (seed, step) only."""
        return self.batch(step_rng(seed, step), batch_frames, text_free_prob, min_rows)

    def fixed_batches(self, batch_frames: int, limit: int | None = None) -> list[list[Example]]:
        """Deterministic batches over ``limit`` utterances spread evenly over the corpus order (so
        every speaker block of the shards is represented), sorted by length, text kept, first
        windows: the dev set of teacher-forced evaluation."""
        chosen = np.arange(len(self.lengths))
        if limit and limit < len(chosen):
            chosen = np.unique(np.linspace(0, len(chosen) - 1, limit).round().astype(np.int64))
        order = chosen[np.argsort(self.lengths[chosen], kind="stable")]
        batches, current, longest = [], [], 0
        for index in order:
            longest_with = max(longest, int(self.lengths[index]))
            if current and (len(current) + 1) * longest_with > batch_frames:
                batches.append(current)
                current, longest_with = [], int(self.lengths[index])
            current.append(self.example(int(index), None, False))
            longest = longest_with
        if current:
            batches.append(current)
        return batches


def rank_slice(rows: list, rank: int, world_size: int) -> list:
    """This process's rows of a global batch: ``rank, rank + world_size, ...`` (lengths stay balanced)."""
    return rows[rank::world_size]


def batch_digest(rows: list[Example]) -> int:
    """A CRC32 over what a batch holds (ids, crop starts, text-free flags): equal digests, equal data."""
    text = ";".join(f"{row.id}@{row.start}{'-' if row.text_free else '+'}" for row in rows)
    return zlib.crc32(text.encode())
