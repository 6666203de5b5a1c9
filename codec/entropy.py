"""Entropy coding of codec tokens with per-codebook probability tables.

A model ships a float table ``[K_max, codebook_size]``: row ``k`` is the distribution of
codebook ``k``'s codes (measured on a corpus with :func:`probabilities_from_counts`). Token files
(:mod:`codec.tokenfile`) range code each codebook's codes with constriction's ``RangeEncoder``
and a ``Categorical`` model built from its row.

Every table goes through :func:`coding_table` before use, which makes it safe:

* every symbol gets at least :data:`MIN_PROBABILITY` (so every code is codable), and
* no symbol gets more than :data:`MAX_PROBABILITY` = 1/2, so every symbol costs at least one
  bit. A chunk of ``n`` symbols therefore needs at least ``n - SLACK_BITS`` bits of payload,
  which lets a decoder reject a file that claims more symbols than its bytes can hold
  *before* decoding (see :func:`max_symbols`).

Encoder and decoder must use the same table; :func:`coding_table` is deterministic, so they
get identical models from the same input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import constriction
import numpy as np

#: No symbol is coded with a probability above this, so each costs >= 1 bit.
MAX_PROBABILITY = 0.5
#: Every symbol is coded with at least this probability (constriction's 24-bit precision
#: floors it there too), so every code is codable.
MIN_PROBABILITY = 2.0**-24
#: Range coder overhead allowance, in bits, per independently coded block.
SLACK_BITS = 64


def max_symbols(payload_bytes: int) -> int:
    """The most symbols a range coded payload of ``payload_bytes`` bytes can hold."""
    return 8 * payload_bytes + SLACK_BITS


def _clamp_and_normalise(p: np.ndarray, cap: float) -> np.ndarray:
    """Rows of ``p`` (each summing to 1) with no entry above ``cap``: excess mass is moved to
    the other entries in proportion to their mass (water-filling), so the result still sums to 1."""
    p = p.copy()
    for _ in range(p.shape[1]):  # each pass caps at least one more entry; usually one pass
        over = p > cap
        if not over.any():
            break
        capped = p >= cap
        capped |= over
        free_mass = np.where(capped, 0.0, p).sum(axis=1, keepdims=True)
        want = 1.0 - cap * capped.sum(axis=1, keepdims=True)
        scale = np.divide(want, free_mass, out=np.ones_like(free_mass), where=free_mass > 0)
        p = np.where(capped, cap, p * scale)
    return np.minimum(p, cap)


def probabilities_from_counts(counts) -> np.ndarray:
    """Per-codebook code counts ``[K, N]`` -> probability table ``[K, N]`` float64.

    Add-one smoothing (so unseen codes stay codable), then no code above probability 1/2
    (excess spread over the others), rows summing to 1.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] < 1 or counts.shape[1] < 2:
        raise ValueError(f"counts must be [K >= 1, N >= 2], got shape {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError("counts must be finite and non-negative")
    p = counts + 1.0
    p /= p.sum(axis=1, keepdims=True)
    return _clamp_and_normalise(p, MAX_PROBABILITY)


def coding_table(probabilities, num_codebooks: int, codebook_size: int) -> np.ndarray:
    """Validate a model's table and make it safe to code with; returns float64 ``[K, N]``
    (the first ``num_codebooks`` rows). Raises ``ValueError`` with a one-line reason."""
    try:
        p = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"probability table is not a float array ({e})") from None
    if p.ndim != 2:
        raise ValueError(f"probability table must be 2-D [codebooks, codebook_size], got shape {p.shape}")
    if p.shape[1] != codebook_size:
        raise ValueError(f"probability table is for codebook size {p.shape[1]}, not {codebook_size}")
    if p.shape[0] < num_codebooks:
        raise ValueError(f"probability table has {p.shape[0]} rows, {num_codebooks} codebooks need one each")
    p = p[:num_codebooks]
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError("probability table must be finite and non-negative")
    with np.errstate(over="ignore"):
        sums = p.sum(axis=1, keepdims=True)
    if not (sums > 0).all() or not np.isfinite(sums).all():
        raise ValueError("every row of the probability table needs a positive, finite sum")
    p = np.maximum(p / sums, MIN_PROBABILITY)
    p /= p.sum(axis=1, keepdims=True)
    return _clamp_and_normalise(p, MAX_PROBABILITY)


def make_models(table: np.ndarray) -> list:
    """One constriction ``Categorical`` model per row of a :func:`coding_table` result."""
    cat = constriction.stream.model.Categorical
    return [cat(np.ascontiguousarray(row), perfect=False) for row in table]


def range_encode(write: Callable) -> bytes:
    """Run ``write(encoder)`` on a fresh constriction ``RangeEncoder``; returns its stream as
    little-endian 32-bit words."""
    encoder = constriction.stream.queue.RangeEncoder()
    write(encoder)
    return encoder.get_compressed().astype("<u4").tobytes()


def range_decode(payload: bytes, symbols: int, read: Callable):
    """Run ``read(decoder)`` on a ``RangeDecoder`` over ``payload``, which must hold ``symbols``
    codes; returns what ``read`` returns.

    Raises ``ValueError`` if the payload is not whole words, is too short for the symbols it
    claims (:func:`max_symbols`, checked before decoding), is invalid for the models, or has
    words left over.
    """
    if len(payload) % 4:
        raise ValueError(f"range coded payload of {len(payload)} bytes is not a whole number of 32-bit words")
    if symbols > max_symbols(len(payload)):
        raise ValueError(f"{symbols} symbols cannot fit in a range coded payload of {len(payload)} bytes")
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        out = read(decoder)
        exhausted = decoder.maybe_exhausted()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - constriction raises AssertionError (or a Rust panic) on bad data
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"range coded payload is invalid ({reason})") from None
    if not exhausted:
        raise ValueError("range coded payload has data left over after its symbols")
    return out


def encode_symbols(rows, models: list) -> bytes:
    """Range code a sequence of symbol arrays, ``rows[i]`` with ``models[i]``, into one
    independently decodable little-endian stream of 32-bit words."""

    def write(encoder) -> None:
        for symbols, model in zip(rows, models, strict=True):
            symbols = np.ascontiguousarray(symbols, dtype=np.int32).reshape(-1)
            if symbols.size:
                encoder.encode(symbols, model)

    return range_encode(write)


def decode_symbols(payload: bytes, counts, models: list) -> list[np.ndarray]:
    """Inverse of :func:`encode_symbols`: decode ``counts[i]`` symbols with ``models[i]``
    (errors as :func:`range_decode`)."""

    def read(decoder) -> list[np.ndarray]:
        return [decoder.decode(model, n) if n else np.zeros(0, np.int32) for n, model in zip(counts, models, strict=True)]

    return range_decode(payload, sum(counts), read)


def estimate_bits(codes, probabilities) -> float:
    """Ideal code length in bits of ``codes`` ``[..., K, T]`` under the (coding-safe) table:
    the sum over codes of -log2 p_k(code). Range coding gets within a few bits of it."""
    codes = np.asarray(codes)
    if codes.ndim < 2:
        raise ValueError(f"codes must be [..., K, T], got shape {codes.shape}")
    num_codebooks = codes.shape[-2]
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise ValueError(f"probability table must be 2-D, got shape {probabilities.shape}")
    table = coding_table(probabilities, num_codebooks, probabilities.shape[1])
    if codes.size and (codes.min() < 0 or codes.max() >= table.shape[1]):
        raise ValueError(f"codes must lie in [0, {table.shape[1]})")
    if codes.size == 0:
        return 0.0
    log_p = -np.log2(table)
    k = np.arange(num_codebooks).reshape(-1, 1)
    flat = codes.reshape(-1, num_codebooks, codes.shape[-1]).astype(np.int64)
    return float(log_p[k, flat].sum())


def bits_per_code(codebook_size: int) -> int:
    """Bits per code with plain packing: ceil(log2(codebook_size)), at least 1."""
    return max(1, math.ceil(math.log2(codebook_size)))
