"""Tests of codec.tokenfile and codec.entropy: bit-exact round trips, compression, independent
chunks, and that every malformed, truncated, corrupted or hostile file raises TokenFileError."""

from __future__ import annotations

import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec import context_coding, entropy
from codec import tokenfile as tf
from codec.context_coding import ContextTables
from codec.errors import TokenFileError, TokenwaveError
from codec.tokenfile import MAGIC, TokenFileHeader

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# Helpers


def header_for(C, K, T, N, coding="range", chunk_frames=250, **kw) -> TokenFileHeader:
    fields = {
        "model": "tokenwave-test", "model_hash": "0123abcd", "sample_rate": 24000, "frame_rate": 50.0,
        "num_codebooks": K, "codebook_size": N, "num_frames": T, "length": T * 480, "channels": C,
        "coding": coding, "chunk_frames": chunk_frames,
    }
    fields.update(kw)
    return TokenFileHeader(**fields)


def skewed_table(rng, K, N, a=1.3) -> np.ndarray:
    """A Zipf-like table, as a real codec's code statistics look, with shuffled ranks."""
    counts = np.stack([rng.permutation(1e6 / np.arange(1, N + 1) ** a) for _ in range(K)])
    return entropy.probabilities_from_counts(counts)


def skewed_tables(rng, K, N, a=1.3, levels=2) -> ContextTables:
    """Context tables from Zipf-like counts (per level, per previous code, per lower-level code)."""
    def ranked(rows):
        return np.array([rng.permutation(1e6 / np.arange(1, N + 1) ** a) for _ in range(rows)]).reshape(rows, N)
    return ContextTables.from_counts(ranked(K), ranked(N + 1), ranked((levels - 1) * N).reshape(levels - 1, N, N))


def sample_codes(rng, table, C, T) -> np.ndarray:
    K, N = table.shape
    out = np.empty((C, K, T), dtype=np.int64)
    for k in range(K):
        out[:, k, :] = rng.choice(N, size=(C, T), p=table[k] / table[k].sum())
    return out


def assemble(header, chunk_list, version=1, magic=MAGIC) -> bytes:
    """A token file with valid checksums from a header (dict, str or bytes) and
    ``(index, frames, payload)`` chunks: for building hostile files that pass the CRCs."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    pre = magic + struct.pack("<HI", version, len(header)) + header
    out = [pre, struct.pack("<I", zlib.crc32(pre))]
    for index, frames, payload in chunk_list:
        c = struct.pack("<III", index, frames, len(payload)) + payload
        out += [c, struct.pack("<I", zlib.crc32(c))]
    return b"".join(out)


def split(data: bytes):
    """(header dict, [(index, frames, payload)]) of a valid file: the inverse of ``assemble``."""
    header = tf.read_header(data)
    obj = json.loads(header.to_json())
    return obj, [
        (c.index, c.num_frames, data[c.offset + 12 : c.offset + 12 + c.payload_bytes]) for c in tf.chunks(data)
    ]


def expect_error(data, table=None, match=None):
    with pytest.raises(TokenFileError, match=match) as info:
        tf.unpack(data, table)
    assert "\n" not in str(info.value) and str(info.value)
    return info.value


RNG = np.random.default_rng(1234)
CONTEXT_1024 = skewed_tables(RNG, 12, 1024, levels=3)  # serves every coding
TABLE_1024 = CONTEXT_1024.unigram  # the same per-level table as an array (range coding only)
SMALL = {  # small valid files: C=2, K=3, T=7 in chunks of 3 frames
    coding: tf.pack(sample_codes(RNG, TABLE_1024[:3], 2, 7), header_for(2, 3, 7, 1024, coding, 3), CONTEXT_1024)
    for coding in tf.CODINGS
}


# --------------------------------------------------------------------------------------------
# Round trips


SHAPES = [(1, 1, 0), (1, 1, 1), (2, 12, 1), (1, 8, 250), (2, 4, 251), (1, 12, 1200), (2, 3, 499)]


@pytest.mark.parametrize("coding", tf.CODINGS)
@pytest.mark.parametrize("N", [1024, 2048, 1000, 3, 2, 65536])
@pytest.mark.parametrize("C,K,T", SHAPES)
def test_round_trip_is_bit_exact(coding, N, C, K, T):
    rng = np.random.default_rng(C * 1000 + K * 100 + T + N)
    if coding == "context" and N > 2048:
        pytest.skip("context tables are [N + 1, N]: not for huge codebooks")
    tables = skewed_tables(rng, 12, N) if N <= 2048 else np.ones((12, N))
    table = tables.unigram if coding == "context" or N <= 2048 else tables
    codes = sample_codes(rng, table[:K], C, T)
    if T > 2:
        codes[..., 0], codes[..., 1] = 0, N - 1  # the extremes of the codebook
    header = header_for(C, K, T, N, coding, chunk_frames=int(rng.choice([1, 7, 250, 1000])))
    data = tf.pack(codes, header, tables)
    got_header, got = tf.unpack(data, tables)
    assert got_header == header and tf.read_header(data) == header
    assert got.dtype == np.int64 and got.shape == (C, K, T)
    np.testing.assert_array_equal(got, codes)


@given(
    C=st.integers(1, 2), K=st.integers(1, 12), T=st.integers(0, 1200),
    N=st.sampled_from([1024, 2048, 1000, 777, 5]), coding=st.sampled_from(tf.CODINGS),
    chunk_frames=st.integers(1, 400), seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=60, deadline=None)
def test_round_trip_random_shapes(C, K, T, N, coding, chunk_frames, seed):
    rng = np.random.default_rng(seed)
    tables = skewed_tables(rng, K, N, a=rng.uniform(0.0, 2.0), levels=min(K, 3))
    codes = sample_codes(rng, tables.unigram, C, T) if rng.random() < 0.7 else rng.integers(0, N, (C, K, T))
    header = header_for(C, K, T, N, coding, chunk_frames)
    data = tf.pack(codes, header, tables if coding == "context" else tables.unigram)
    got_header, got = tf.unpack(data, tables)
    assert got_header == header
    np.testing.assert_array_equal(got, codes)
    assert len(tf.chunks(data)) == header.num_chunks


def test_torch_input_and_uint_input():
    codes = torch.randint(0, 1024, (2, 4, 300))
    for coding in tf.CODINGS:
        header = header_for(2, 4, 300, 1024, coding)
        data = tf.pack(codes, header, CONTEXT_1024)
        assert tf.pack(codes.numpy().astype(np.uint16), header, CONTEXT_1024) == data
        np.testing.assert_array_equal(tf.unpack(data, CONTEXT_1024)[1], codes.numpy())


def test_worst_and_best_case_symbols_round_trip():
    """Every code the most likely one (1 bit each, the bound's edge) or the least likely one."""
    for N in (2, 3, 1024):
        table = entropy.probabilities_from_counts(np.arange(N, dtype=float)[None].repeat(4, 0) ** 4)
        for pick in (np.argmax, np.argmin):
            codes = np.broadcast_to(pick(table, axis=1)[None, :, None], (2, 4, 2000)).copy()
            data = tf.pack(codes, header_for(2, 4, 2000, N, "range", 1000), table)
            np.testing.assert_array_equal(tf.unpack(data, table)[1], codes)
            for c in tf.chunks(data):
                assert 2 * 4 * c.num_frames <= entropy.max_symbols(c.payload_bytes)


def test_header_accepts_numpy_scalars():
    header = header_for(np.int64(1), np.int32(4), np.int64(10), np.int64(1024), frame_rate=np.float32(50),
                        sample_rate=np.int64(24000), length=np.uint32(4800))
    assert header == header_for(1, 4, 10, 1024) and type(header.num_frames) is int
    assert TokenFileHeader.from_json(header.to_json()) == header
    with pytest.raises(TokenFileError, match="sample_rate"):
        header_for(1, 4, 10, 1024, sample_rate=np.bool_(True)).validate()


def test_header_json_round_trip_and_prefix_read():
    header = header_for(2, 8, 1200, 1024, "packed", frame_rate=75, length=1200 * 320)
    assert TokenFileHeader.from_json(header.to_json()) == header
    assert isinstance(TokenFileHeader.from_json(header.to_json()).frame_rate, float)
    data = tf.pack(np.zeros((2, 8, 1200), np.int64), header)
    prefix = data[: 10 + len(header.to_json().encode()) + 4]
    assert tf.read_header(prefix) == header  # info needs only the first bytes


# --------------------------------------------------------------------------------------------
# Compression and statistics


def test_skewed_tables_compress_better_than_packing():
    rng = np.random.default_rng(7)
    table = skewed_table(rng, 8, 1024, a=1.2)
    codes = sample_codes(rng, table, 1, 1500)
    ranged = tf.pack(codes, header_for(1, 8, 1500, 1024, "range"), table)
    packed = tf.pack(codes, header_for(1, 8, 1500, 1024, "packed"), table)
    assert len(ranged) < 0.8 * len(packed)
    header = tf.read_header(ranged)
    payload_bits = 8 * sum(tf.chunk_sizes(ranged))
    ideal = entropy.estimate_bits(codes, table)
    assert ideal <= payload_bits <= ideal * 1.01 + 64 * header.num_chunks
    assert tf.bits_per_second(header, sum(tf.chunk_sizes(packed))) == pytest.approx(
        tf.packed_bits_per_second(header)
    )
    assert tf.packed_bits_per_second(header) == 8 * 10 * 50
    assert tf.bits_per_second(header, sum(tf.chunk_sizes(ranged))) < 0.8 * tf.packed_bits_per_second(header)
    assert tf.bits_per_second(header_for(1, 1, 0, 1024), 100) == 0.0


def test_uniform_codes_cost_about_plain_packing():
    rng = np.random.default_rng(8)
    codes = rng.integers(0, 1024, (1, 4, 1000))
    ranged = tf.pack(codes, header_for(1, 4, 1000, 1024, "range"), np.ones((4, 1024)))
    assert sum(tf.chunk_sizes(ranged)) <= 4 * 1000 * 10 / 8 * 1.001 + 4 * 8


def test_probabilities_from_counts():
    counts = np.array([[1e9, 0, 0, 0], [5, 1, 0, 0], [0, 0, 0, 0]], dtype=float)
    p = entropy.probabilities_from_counts(counts)
    assert p.dtype == np.float64 and p.shape == (3, 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert (p > 0).all() and (p <= 0.5).all()
    assert p[0, 0] == 0.5 and p[0, 1] == pytest.approx(1 / 6)  # capped, rest spread evenly
    np.testing.assert_allclose(p[1], [0.5, 0.25, 0.125, 0.125])  # [6, 2, 1, 1] / 10: excess spread in proportion
    np.testing.assert_allclose(p[2], 0.25)  # add-one smoothing
    assert entropy.probabilities_from_counts([[5, 0]]).tolist() == [[0.5, 0.5]]
    for bad in ([1, 2], [[1]], [[1, -1]], [[1, np.nan]]):
        with pytest.raises(ValueError):
            entropy.probabilities_from_counts(bad)


def test_coding_table_caps_floors_and_validates():
    t = entropy.coding_table([[1.0, 0, 0, 0], [2, 2, 2, 2]], 2, 4)
    assert (t > 0).all() and (t <= entropy.MAX_PROBABILITY).all()
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    for bad, K, N in [
        (np.ones(4), 1, 4), (np.ones((1, 4)), 2, 4), (np.ones((2, 5)), 2, 4), ([[1, -1, 1, 1]], 1, 4),
        ([[0, 0, 0, 0]], 1, 4), ([[np.inf, 1, 1, 1]], 1, 4), ([[1e308, 1e308, 1, 1]], 1, 4), ("x", 1, 4),
    ]:
        with pytest.raises(ValueError):
            entropy.coding_table(bad, K, N)


def test_estimate_bits():
    table = np.full((2, 4), 0.25)
    assert entropy.estimate_bits(np.zeros((1, 2, 10), np.int64), table) == pytest.approx(40.0)
    assert entropy.estimate_bits(np.zeros((2, 0)), table) == 0.0
    with pytest.raises(ValueError):
        entropy.estimate_bits(np.full((2, 3), 4), table)


# --------------------------------------------------------------------------------------------
# Independent chunks


@pytest.mark.parametrize("coding", tf.CODINGS)
def test_each_chunk_decodes_independently(coding):
    rng = np.random.default_rng(3)
    codes = sample_codes(rng, TABLE_1024[:5], 2, 1100)
    data = tf.pack(codes, header_for(2, 5, 1100, 1024, coding), CONTEXT_1024)
    listed = tf.chunks(data)
    assert [c.num_frames for c in listed] == [250, 250, 250, 250, 100]
    assert [c.frame_offset for c in listed] == [0, 250, 500, 750, 1000]
    assert listed[-1].offset + listed[-1].size == len(data)
    for i, chunk in enumerate(listed):
        # Garble every other chunk's payload: chunk i must still decode on its own.
        garbled = bytearray(data)
        for other in listed:
            if other.index != i:
                start = other.offset + 12
                garbled[start : start + other.payload_bytes] = rng.bytes(other.payload_bytes)
        offset, got = tf.unpack_chunk(bytes(garbled), i, CONTEXT_1024)
        assert offset == chunk.frame_offset
        np.testing.assert_array_equal(got, codes[:, :, offset : offset + chunk.num_frames])
        # ...and the payload bytes alone suffice.
        payload = data[chunk.offset + 12 : chunk.offset + 12 + chunk.payload_bytes]
        if coding == "range":
            models = entropy.make_models(entropy.coding_table(TABLE_1024, 5, 1024))
            rows = entropy.decode_symbols(payload, [2 * chunk.num_frames] * 5, models)
            alone = np.stack(rows).reshape(5, 2, -1).transpose(1, 0, 2)
        elif coding == "context":
            alone = context_coding.decode_block(payload, (5, 2, chunk.num_frames), CONTEXT_1024).transpose(1, 0, 2)
        else:
            alone = tf._unpack_bits(payload, 10 * chunk.num_frames, 10).reshape(5, 2, -1).transpose(1, 0, 2)
        np.testing.assert_array_equal(alone, codes[:, :, offset : offset + chunk.num_frames])
    with pytest.raises(TokenFileError):
        tf.unpack(bytes(garbled), CONTEXT_1024)
    with pytest.raises(IndexError):
        tf.unpack_chunk(data, len(listed), CONTEXT_1024)


# --------------------------------------------------------------------------------------------
# Every documented error


@pytest.mark.parametrize("coding", tf.CODINGS)
def test_truncation_at_every_byte_offset(coding):
    data = SMALL[coding]
    for n in range(len(data)):
        expect_error(data[:n], CONTEXT_1024)
        with pytest.raises(TokenFileError):
            tf.chunks(data[:n])


@pytest.mark.parametrize("coding", tf.CODINGS)
def test_every_single_bit_flip_is_caught(coding):
    data = SMALL[coding]
    for pos in range(len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << bit
            expect_error(bytes(flipped), CONTEXT_1024)


def test_bad_magic_and_version():
    data = SMALL["packed"]
    expect_error(b"RIFF" + data[4:], match="bad magic")
    expect_error(b"TW", match="truncated")
    expect_error(b"", match="truncated")
    expect_error(b"\x89PNG\r\n", match="bad magic")
    obj, chunk_list = split(data)
    expect_error(assemble(obj, chunk_list, version=2), match="version 2")
    expect_error(assemble(obj, chunk_list, magic=b"TWTX"), match="bad magic")
    assert tf.unpack(assemble(obj, chunk_list))[0] == tf.read_header(data)  # the helper itself is right


def test_header_length_limits():
    pre = MAGIC + struct.pack("<HI", 1, 0)
    expect_error(pre + struct.pack("<I", zlib.crc32(pre)), match="header length")
    pre = MAGIC + struct.pack("<HI", 1, 2**32 - 1)
    expect_error(pre + b"{}" * 100, match="header length")
    big = json.dumps({"pad": "x" * 70000})
    expect_error(assemble(big, []), match="header length")


def test_header_crc_mismatch():
    data = bytearray(SMALL["packed"])
    data[12] ^= 0x20  # a character inside the JSON
    expect_error(bytes(data), match="header checksum")


VALID = json.loads(header_for(1, 2, 3, 1024, "packed", chunk_frames=2).to_json())


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "JSON"), ("[1, 2]", "JSON object"), ('"x"', "JSON object"), ("{", "JSON"),
        (b"\xff\xfe{}", "UTF-8"), ("[" * 50000 + "]" * 50000, "header length|JSON"),
        ("[" * 30000 + "]" * 30000, "JSON"), ('{"a": 1' + "0" * 5000 + "}", "JSON|field"),
        (json.dumps(VALID)[:-1] + ', "model": "x"}', "repeats"),
        (json.dumps(VALID).replace('"frame_rate": 50.0', '"frame_rate": NaN'), "NaN"),
        (json.dumps(VALID).replace('"frame_rate": 50.0', '"frame_rate": Infinity'), "Infinity"),
        (json.dumps(VALID).replace('"frame_rate": 50.0', '"frame_rate": 1e999'), "frame_rate"),
    ],
)
def test_bad_json_headers(text, match):
    expect_error(assemble(text, []), match=match)


@pytest.mark.parametrize(
    "field, value",
    [
        ("model", ""), ("model", 3), ("model", "x" * 257), ("model", "evil\x1b[2J"), ("model", "a\u202eb"),
        ("model", None), ("model_hash", "xyz"), ("model_hash", ""), ("model_hash", "ab\n"), ("model_hash", 12),
        ("sample_rate", 0), ("sample_rate", 768001), ("sample_rate", 24000.0), ("sample_rate", True),
        ("sample_rate", "24000"), ("frame_rate", 0), ("frame_rate", -50.0), ("frame_rate", 24001.0),
        ("frame_rate", "50"), ("frame_rate", False), ("frame_rate", None), ("num_codebooks", 0),
        ("num_codebooks", 65), ("codebook_size", 1), ("codebook_size", 65537), ("codebook_size", 2**64),
        ("channels", 0), ("channels", 17), ("num_frames", -1), ("num_frames", 2**27 + 1),
        ("num_frames", 1.5), ("length", -1), ("length", 10**12), ("length", [1]), ("coding", "zip"),
        ("coding", None), ("chunk_frames", 0), ("chunk_frames", 2**20 + 1), ("chunk_frames", {}),
    ],
)
def test_header_fields_are_validated(field, value):
    obj = dict(VALID, **{field: value})
    expect_error(assemble(obj, []), match="header")
    with pytest.raises(TokenFileError):
        TokenFileHeader(**obj).validate()


def test_header_missing_and_unknown_fields():
    expect_error(assemble({k: v for k, v in VALID.items() if k != "coding"}, []), match="lacks the field 'coding'")
    expect_error(assemble(dict(VALID, extra=1), []), match="unknown field 'extra'")


def test_length_may_reach_one_frame_past_the_codes():
    obj, chunk_list = split(SMALL["packed"])  # T = 7 frames of 480 samples
    assert tf.unpack(assemble(dict(obj, length=8 * 480), chunk_list))[0].length == 3840
    expect_error(assemble(dict(obj, length=8 * 480 + 1), chunk_list), match="length")


def test_oversize_claims_are_refused_before_allocating():
    # The largest legal claim, 2**27 codes, in a file of a few hundred bytes: rejected by size.
    for coding in tf.CODINGS:
        obj = dict(VALID, channels=16, num_codebooks=64, num_frames=2**27 // 1024, coding=coding,
                   chunk_frames=2**20, length=0)
        expect_error(assemble(obj, [(0, 2**17, b"\0" * 64)]), TABLE_1024, match="truncated|claims")
    expect_error(assemble(dict(VALID, channels=16, num_codebooks=64, num_frames=2**27 // 1024 + 1), []),
                 match="more than the limit")
    # A range coded chunk claiming more codes than 8 per byte (+ slack).
    obj = dict(VALID, coding="range", num_codebooks=2, num_frames=1000, chunk_frames=1000, length=0)
    expect_error(assemble(obj, [(0, 1000, b"\0" * 96)]), TABLE_1024, match="claims")
    expect_error(assemble(obj, [(0, 1000, b"\0" * 4)]), TABLE_1024, match="claims")


def test_chunk_structure_errors():
    obj, chunk_list = split(SMALL["range"])  # chunks of 3, 3, 1 frames
    (i0, f0, p0), (i1, f1, p1), (i2, f2, p2) = chunk_list
    expect_error(assemble(obj, [(i0, f0, p0), (i1, f1, p1)]), TABLE_1024, match="truncated")
    expect_error(assemble(obj, [(i1, f1, p1), (i0, f0, p0), (i2, f2, p2)]), TABLE_1024, match="out of order")
    expect_error(assemble(obj, [(i0, f0, p0), (i1, f1, p1), (i2, 2, p2)]), TABLE_1024, match="frames")
    expect_error(assemble(obj, chunk_list + [(3, 1, p2)]), TABLE_1024, match="unexpected bytes")
    expect_error(assemble(obj, chunk_list) + b"\0", TABLE_1024, match="unexpected bytes")
    expect_error(assemble(obj, [(i0, f0, p0 + b"\0"), (i1, f1, p1), (i2, f2, p2)]), TABLE_1024, match="32-bit")
    expect_error(assemble(obj, [(i0, f0, p0 + b"\0" * 8), (i1, f1, p1), (i2, f2, p2)]), TABLE_1024,
                 match="left over|invalid")
    expect_error(assemble(obj, [(i0, f0, p0[:-4]), (i1, f1, p1), (i2, f2, p2)]), TABLE_1024)
    expect_error(assemble(dict(obj, num_frames=6, length=0), chunk_list), TABLE_1024)
    expect_error(assemble(dict(obj, num_frames=8, length=0), chunk_list), TABLE_1024)
    expect_error(assemble(dict(obj, chunk_frames=4), chunk_list), TABLE_1024)


def test_packed_payload_errors_and_symbols_out_of_range():
    codes = np.array([[[999, 0, 5]]])
    obj = json.loads(header_for(1, 1, 3, 1000, "packed", 3).to_json())
    data = tf.pack(codes, TokenFileHeader(**obj))
    _, [(_, _, payload)] = split(data)
    assert len(payload) == 4  # 3 codes x 10 bits = 30 bits
    bits = tf._pack_bits(np.array([1023, 0, 5]), 10)  # 1023 >= codebook_size 1000
    expect_error(assemble(obj, [(0, 3, bits)]), match="outside the codebook")
    expect_error(assemble(obj, [(0, 3, payload[:-1] + bytes([payload[-1] | 1]))]), match="padding")
    expect_error(assemble(obj, [(0, 3, payload + b"\0")]), match="packed codes need")
    expect_error(assemble(obj, [(0, 3, payload[:3])]), match="truncated|packed codes need")


def test_range_files_need_matching_tables():
    data = SMALL["range"]
    expect_error(data, None, match="probability tables")
    expect_error(data, TABLE_1024[:2], match="rows")
    expect_error(data, np.ones((12, 2048)), match="codebook size")
    expect_error(data, np.full((12, 1024), np.nan), match="finite")
    expect_error(data, "not a table", match="probability table")
    assert tf.unpack(SMALL["packed"], None)[1].shape == (2, 3, 7)  # packed files need none


def test_wrong_table_yields_error_or_garbage_never_a_crash():
    rng = np.random.default_rng(5)
    for _ in range(20):
        other = skewed_table(rng, 12, 1024)
        try:
            _, codes = tf.unpack(SMALL["range"], other)
        except TokenFileError:
            continue
        assert codes.shape == (2, 3, 7) and codes.max() < 1024


def test_pack_rejects_bad_arguments():
    header = header_for(1, 2, 10, 1024, "range")
    with pytest.raises(ValueError, match="shape"):
        tf.pack(np.zeros((1, 3, 10), np.int64), header, CONTEXT_1024)
    with pytest.raises(ValueError, match="lie in"):
        tf.pack(np.full((1, 2, 10), 1024), header, CONTEXT_1024)
    with pytest.raises(ValueError, match="lie in"):
        tf.pack(np.full((1, 2, 10), -1), header, CONTEXT_1024)
    with pytest.raises(ValueError, match="integers"):
        tf.pack(np.zeros((1, 2, 10)), header, CONTEXT_1024)
    with pytest.raises(ValueError, match="probability"):
        tf.pack(np.zeros((1, 2, 10), np.int64), header)
    with pytest.raises(TokenFileError, match="codebook_size"):
        tf.pack(np.zeros((1, 2, 10), np.int64), header_for(1, 2, 10, 1), CONTEXT_1024)


# --------------------------------------------------------------------------------------------
# Files on disk


def test_write_and_read_token_files(tmp_path):
    path = tmp_path / "speech.twt"
    tf.write_token_file(path, SMALL["packed"])
    assert tf.read_token_file(path) == SMALL["packed"]
    with pytest.raises(TokenwaveError, match="already exists"):
        tf.write_token_file(path, SMALL["range"])
    assert path.read_bytes() == SMALL["packed"]
    tf.write_token_file(str(path), SMALL["range"], overwrite=True)
    assert path.read_bytes() == SMALL["range"]
    assert sorted(os.listdir(tmp_path)) == ["speech.twt"]  # no temp files left behind
    with pytest.raises(TokenFileError, match="limit"):
        tf.read_token_file(path, max_bytes=10)
    with pytest.raises(TokenFileError, match="cannot read"):
        tf.read_token_file(tmp_path / "missing.twt")
    with pytest.raises(TokenFileError, match="cannot read"):
        tf.read_token_file(tmp_path)
    with pytest.raises(TokenFileError, match="cannot write"):
        tf.write_token_file(tmp_path / "no" / "such" / "dir.twt", b"x")
    with pytest.raises(TokenFileError):
        tf.write_token_file(tmp_path, b"x", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["speech.twt"]


# --------------------------------------------------------------------------------------------
# Fuzzing: whatever the bytes, only TokenFileError


def check_only_token_file_errors(data: bytes, table=CONTEXT_1024) -> None:
    try:
        header, codes = tf.unpack(data, table)
    except TokenFileError as e:
        assert "\n" not in str(e)
    else:
        assert codes.shape == (header.channels, header.num_codebooks, header.num_frames)
        assert codes.size == 0 or (0 <= codes.min() and codes.max() < header.codebook_size)
    for probe in (tf.read_header, tf.chunks, lambda d: tf.unpack_chunk(d, 0, table)):
        try:
            probe(data)
        except (TokenFileError, IndexError):
            pass


BASES = list(SMALL.values()) + [
    tf.pack(sample_codes(RNG, TABLE_1024[:2], 1, 40), header_for(1, 2, 40, 1024, c, 16), CONTEXT_1024)
    for c in tf.CODINGS
]


@FUZZ
@given(base=st.sampled_from(BASES), data=st.data())
def test_fuzz_truncations_and_bit_flips(base, data):
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(buf)))
    check_only_token_file_errors(bytes(buf[:cut]) + data.draw(st.binary(max_size=8)))


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(blob):
    check_only_token_file_errors(blob)
    check_only_token_file_errors(MAGIC + blob)
    check_only_token_file_errors(MAGIC + b"\x01\x00" + blob)


def field_values(name):
    """Hostile values for one header field: edge cases, huge numbers, wrong types."""
    ints = st.one_of(st.integers(-3, 70), st.integers(-(2**70), 2**70), st.sampled_from([2**27, 2**20, 65536, 65537]))
    junk = st.one_of(
        st.none(), st.booleans(), st.floats(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    )
    specific = {
        "model": st.text(max_size=300), "model_hash": st.from_regex(r"[0-9a-fA-Fg]{0,130}", fullmatch=True),
        "frame_rate": st.floats(-1, 1e6, allow_nan=False), "coding": st.sampled_from(["range", "packed", "RANGE"]),
    }.get(name, ints)
    return st.one_of(specific, junk)


TABLES = {N: skewed_table(RNG, 12, N) for N in (2, 3, 1000)} | {1024: TABLE_1024}


@st.composite
def hostile_files(draw):
    """(file, table): a small valid header with up to two hostile fields, and chunks with valid
    CRCs whose indices, frame counts, sizes and payloads are mostly but not always consistent
    with the header; range payloads are often real encodings, so decoding is exercised."""
    C, K, T = draw(st.integers(1, 2)), draw(st.integers(1, 12)), draw(st.integers(0, 40))
    N, chunk_frames = draw(st.sampled_from(sorted(TABLES))), draw(st.integers(1, 16))
    coding = draw(st.sampled_from(tf.CODINGS))
    obj = dict(VALID, channels=C, num_codebooks=K, codebook_size=N, num_frames=T, chunk_frames=chunk_frames,
               length=draw(st.integers(0, (T + 1) * 480)), coding=coding)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        name = draw(st.sampled_from(sorted(VALID)))
        obj[name] = draw(field_values(name))
    if draw(st.integers(0, 19)) == 0:
        obj.pop(draw(st.sampled_from(sorted(VALID))))
    table = TABLES[N] if draw(st.integers(0, 9)) else draw(st.sampled_from([None, *TABLES.values(), np.ones((64, 3))]))
    models = entropy.make_models(entropy.coding_table(TABLES[N], K, N))

    # Per-chunk choices come from one seeded generator: many hypothesis draws per chunk are slow.
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = -(-T // chunk_frames) + draw(st.sampled_from([0, 0, 0, 0, -1, 1]))
    chunk_list = []
    for i in range(max(0, n)):
        frames = max(0, min(chunk_frames, T - i * chunk_frames))
        if rng.random() < 0.1:
            frames = int(rng.choice([frames + 1, max(frames - 1, 0), 0, 2**32 - 1, rng.integers(0, 2**32)]))
        index = i if rng.random() < 0.95 else int(rng.integers(0, 2**32))
        real = frames <= 64 and rng.random() < 0.75
        if real and coding == "packed":  # codes up to 2**bits - 1: some beyond the codebook
            bits = entropy.bits_per_code(N)
            limit = N if rng.random() < 0.7 else 2**bits
            payload = tf._pack_bits(rng.integers(0, limit, C * K * frames), bits)
        elif real:
            payload = entropy.encode_symbols(rng.integers(0, N, (K, C * frames)), models)
        else:
            payload = rng.bytes(int(4 * rng.integers(0, 65) if rng.random() < 0.5 else rng.integers(0, 200)))
        if rng.random() < 0.1:
            payload = payload[: rng.integers(0, len(payload) + 1)] + rng.bytes(int(rng.integers(0, 9)))
        chunk_list.append((index, frames, payload))
    return assemble(obj, chunk_list), table


@FUZZ
@given(hostile_files())
def test_fuzz_hostile_headers_with_valid_crcs(file_and_table):
    check_only_token_file_errors(*file_and_table)


@FUZZ
@given(base=st.sampled_from(BASES), data=st.data())
def test_fuzz_valid_crcs_over_mutated_payloads(base, data):
    """Payload bytes changed and CRCs recomputed: the decoders themselves must cope."""
    obj, chunk_list = split(base)
    mutated = []
    for index, frames, payload in chunk_list:
        payload = bytearray(payload)
        for _ in range(data.draw(st.integers(0, 3))):
            if payload:
                payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.sampled_from([0, 0, 0, 1, 4]))
        mutated.append((index, frames, bytes(payload[: len(payload) - cut])))
    check_only_token_file_errors(assemble(obj, mutated))
