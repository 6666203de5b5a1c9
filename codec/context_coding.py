"""Context-model entropy coding of token files (coding ``"context"``).

Plain range coding (:mod:`codec.entropy`) codes every level with one distribution. The first
levels are far more predictable than that:

* a level-1 code depends on the level-1 code before it (speech changes slowly at 50 Hz):
  ``p(c1[t] | c1[t-1])``, a table ``transitions [N + 1, N]`` whose row ``N`` is the context at the
  start of a chunk;
* a code of level ``k`` (2 .. L) depends on the code of level ``k - 1`` in the same frame (it
  quantizes what that code left over): ``p(ck[t] | c(k-1)[t])``, tables ``pairs [L - 1, N, N]``.

Measured on ``speech-16k-v1``'s dev split (tables from its training data): level 1 cost 5.6 bits
instead of 9.0, level 2 7.9 instead of 8.9, level 3 8.6 instead of 8.9; deeper levels gained
about 0.2 bit each, not worth a 1024 x 1024 table apiece, so the levels after L keep the unigram
tables. For ``speech-16k``, whose codebooks are used evenly, ``tokenwave code-entropy``
(:mod:`codec.code_entropy`) gives level 1 5.89 bits against 9.67 and level 2 9.49 against 9.74.

A model stores counts; :meth:`ContextTables.from_counts` smooths each row towards its level's
unigram distribution (``(n_j + ALPHA * N * p) / (sum_j n_j + ALPHA * N)``) and makes it
coding-safe exactly like a unigram row (:func:`codec.entropy.coding_table`: every code
``>= 2**-24``, none above 1/2), so every code still costs at least one bit and the decoder's
"no more codes than bits" check holds. Encoder and decoder derive identical tables from the
same counts.

Order of a chunk's codes ``[K, C, F]`` in the stream: level by level, channel by channel,
frame by frame (as in range coding). The decoder reads level 1 one code at a time (each row
needs the previous code), then each further level with all its rows known.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

import constriction
import numpy as np

from codec import entropy

#: Weight of the unigram prior in a context row, in pseudo-counts per code.
ALPHA = 0.1


def smoothed_rows(counts: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Count rows ``[R, N]`` -> coding-safe probability rows ``[R, N]``, each smoothed towards
    ``prior [N]`` with ``ALPHA * N`` pseudo-counts (a row never seen is the prior itself)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.shape[1]
    rows = (counts + ALPHA * n * prior) / (counts.sum(axis=1, keepdims=True) + ALPHA * n)
    return entropy.coding_table(rows, rows.shape[0], n)


@dataclass(frozen=True)
class ContextTables:
    """A model's entropy tables for both range and context coding (all coding-safe float64).

    ``unigram [K, N]``: one distribution per level (what range coding uses);
    ``transitions [N + 1, N]``: level 1 given the previous level-1 code (row N: chunk start);
    ``pairs [L - 1, N, N]``: ``pairs[k - 2]`` is level k given level k - 1 of the same frame.
    """

    unigram: np.ndarray
    transitions: np.ndarray
    pairs: np.ndarray

    @classmethod
    def from_counts(cls, code_counts, transition_counts, pair_counts) -> ContextTables:
        """Counts ``[K, N]``, ``[N + 1, N]`` and ``[L - 1, N, N]`` (``1 <= L <= K``) -> tables.
        ``ValueError`` on bad shapes or values (the counts come from a weights file)."""
        unigram = entropy.probabilities_from_counts(code_counts)
        K, N = unigram.shape
        transition_counts = _counts(transition_counts, (N + 1, N), "transition counts")
        pair_counts = np.asarray(pair_counts, dtype=np.float64)
        if pair_counts.ndim != 3 or pair_counts.shape[0] > K - 1:
            raise ValueError(f"pair counts must be [L - 1 <= {K - 1}, {N}, {N}], got {list(pair_counts.shape)}")
        pair_counts = _counts(pair_counts, (pair_counts.shape[0], N, N), "pair counts")
        pairs = np.stack([smoothed_rows(level, unigram[k + 1]) for k, level in enumerate(pair_counts)]) \
            if len(pair_counts) else np.zeros((0, N, N))
        return cls(unigram, smoothed_rows(transition_counts, unigram[0]), pairs)

    @property
    def codebook_size(self) -> int:
        return self.unigram.shape[1]

    @property
    def context_levels(self) -> int:
        """L: levels 1 .. L are coded with a context."""
        return 1 + self.pairs.shape[0]

    @cached_property
    def level_models(self) -> list:
        """The range coder's fixed models of the levels coded without context (3 and up)."""
        return entropy.make_models(self.unigram)


def _counts(values, shape: tuple[int, int], name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(values.shape)}")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return values


def count_contexts(code_rows: Iterable[np.ndarray], codebook_size: int,
                   context_levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts for :meth:`ContextTables.from_counts` from utterances ``[K, T]`` (all with the same
    ``K >= context_levels``): ``(code_counts [K, N], transition_counts [N + 1, N], pair_counts
    [L - 1, N, N])``, float64. Each utterance starts in context N, as a chunk does."""
    N, L = codebook_size, context_levels
    unigram = transitions = pairs = None
    for codes in code_rows:
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[0] < max(1, L):
            raise ValueError(f"codes must be [K >= {max(1, L)}, T], got shape {codes.shape}")
        if unigram is None:
            unigram = np.zeros((codes.shape[0], N))
            transitions, pairs = np.zeros((N + 1, N)), np.zeros((max(L - 1, 0), N, N))
        if codes.shape[0] != unigram.shape[0]:
            raise ValueError(f"every utterance needs {unigram.shape[0]} levels, got {codes.shape[0]}")
        if codes.size and (codes.min() < 0 or codes.max() >= N):
            raise ValueError(f"codes must lie in [0, {N})")
        for k, level in enumerate(codes):
            unigram[k] += np.bincount(level, minlength=N)
        previous = np.concatenate([[N], codes[0, :-1]])
        np.add.at(transitions, (previous, codes[0]), 1.0)
        for k in range(1, L):
            np.add.at(pairs[k - 1], (codes[k - 1], codes[k]), 1.0)
    if unigram is None:
        raise ValueError("no codes to count")
    return unigram, transitions, pairs


def _family():
    return constriction.stream.model.Categorical(perfect=False)


def encode_block(block: np.ndarray, tables: ContextTables) -> bytes:
    """Codes ``[K, C, F]`` -> one range coded stream of 32-bit little-endian words."""
    K, C, F = block.shape
    family = _family()

    def write(encoder) -> None:
        for k in range(K if F else 0):
            for c in range(C):
                symbols = np.ascontiguousarray(block[k, c], dtype=np.int32)
                if k == 0:
                    context = np.concatenate([[tables.codebook_size], block[0, c, :-1]])
                    encoder.encode(symbols, family, tables.transitions[context])
                elif k < tables.context_levels:
                    encoder.encode(symbols, family, tables.pairs[k - 1][block[k - 1, c]])
                else:
                    encoder.encode(symbols, tables.level_models[k])

    return entropy.range_encode(write)


def decode_block(payload: bytes, shape: tuple[int, int, int], tables: ContextTables) -> np.ndarray:
    """Inverse of :func:`encode_block`: ``shape = (K, C, F)`` -> codes ``[K, C, F]`` int64.

    Raises ``ValueError`` if the tables cover fewer than K levels, and as
    :func:`codec.entropy.range_decode` for a bad payload."""
    K, C, F = shape
    if K > tables.unigram.shape[0]:
        raise ValueError(f"the tables cover {tables.unigram.shape[0]} levels, the chunk has {K}")
    family = _family()

    def read(decoder) -> np.ndarray:
        out = np.zeros((K, C, F), dtype=np.int64)
        for k in range(K if F else 0):
            for c in range(C):
                if k == 0:
                    previous = tables.codebook_size
                    for t in range(F):
                        previous = int(decoder.decode(family, tables.transitions[previous : previous + 1])[0])
                        out[0, c, t] = previous
                elif k < tables.context_levels:
                    out[k, c] = decoder.decode(family, tables.pairs[k - 1][out[k - 1, c]])
                else:
                    out[k, c] = decoder.decode(tables.level_models[k], F)
        return out

    return entropy.range_decode(payload, K * C * F, read)
