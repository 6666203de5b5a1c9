"""Tests of context coding (codec.context_coding), the models that carry its tables, the
``context`` token-file coding end to end, and ``tokenwave count-codes``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import entropy
from codec import tokenfile as tf
from codec.cli import main as cli_main
from codec.config import tiny
from codec.context_coding import ContextTables, count_contexts, decode_block, encode_block
from codec.errors import ModelError, TokenFileError, TokenwaveError
from codec.files import available_codings, coding_tables, decode_bytes, encode_audio
from codec.model import CodecModel
from codec.pretrained import load_pretrained, save_pretrained, tiny_random


def markov_codes(rng, N: int, K: int, C: int, T: int, stay: float = 0.8) -> np.ndarray:
    """Codes ``[K, C, T]`` where level 1 mostly repeats or steps by one and level k + 1 is mostly
    a function of level k: what context coding is for."""
    out = np.empty((K, C, T), dtype=np.int64)
    for c in range(C):
        x = int(rng.integers(N))
        for t in range(T):
            x = x if rng.random() < stay else (x + int(rng.integers(-2, 3))) % N
            out[0, c, t] = x
    for k in range(1, K):
        noise = rng.integers(0, N, (C, T))
        out[k] = np.where(rng.random((C, T)) < 0.7, (out[k - 1] * 7 + k) % N, noise)
    return out


def tables_from(codes: np.ndarray, N: int, levels: int) -> ContextTables:
    """Tables counted on ``codes [K, C, T]`` (each channel an utterance)."""
    return ContextTables.from_counts(*count_contexts([codes[:, c] for c in range(codes.shape[1])], N, levels))


# --------------------------------------------------------------------------------------------
# Counting and tables


def test_count_contexts_counts_what_it_says():
    codes = np.array([[1, 1, 2, 0], [3, 0, 3, 3], [2, 2, 2, 1]])  # K=3, T=4, N=4
    unigram, transitions, pairs = count_contexts([codes, codes[:, :2]], 4, 3)
    np.testing.assert_array_equal(unigram[0], [1, 4, 1, 0])  # 1,1,2,0 then 1,1
    assert transitions[4, 1] == 2  # both utterances start with code 1 in context N
    assert transitions[1, 1] == 2 and transitions[1, 2] == 1 and transitions[2, 0] == 1
    assert transitions.sum() == 6  # one per frame
    assert pairs.shape == (2, 4, 4)
    assert pairs[0, 1, 3] == 2 and pairs[0, 1, 0] == 2 and pairs[0, 2, 3] == 1 and pairs[0, 0, 3] == 1
    assert pairs[1, 3, 2] == 3 and pairs[1, 0, 2] == 2 and pairs[1, 3, 1] == 1
    assert count_contexts([codes], 4, 1)[2].shape == (0, 4, 4)
    with pytest.raises(ValueError, match="levels"):
        count_contexts([codes, codes[:2]], 4, 2)
    with pytest.raises(ValueError, match="lie in"):
        count_contexts([codes + 1], 4, 2)
    with pytest.raises(ValueError, match="no codes"):
        count_contexts([], 4, 2)


def test_tables_are_coding_safe_and_validated():
    rng = np.random.default_rng(0)
    codes = markov_codes(rng, 64, 3, 1, 3000)
    tables = tables_from(codes, 64, 3)
    for rows in (tables.transitions, tables.pairs[0], tables.pairs[1]):
        assert np.allclose(rows.sum(axis=1), 1.0)
        assert rows.max() <= entropy.MAX_PROBABILITY and rows.min() >= entropy.MIN_PROBABILITY
    # A context never seen falls back to the level's own distribution.
    unseen = next(j for j in range(64) if j not in codes[0])
    np.testing.assert_allclose(tables.pairs[0][unseen], entropy.coding_table(tables.unigram[1:2], 1, 64)[0])
    u, t, p = count_contexts([codes[:, 0]], 64, 3)
    with pytest.raises(ValueError, match="transition counts"):
        ContextTables.from_counts(u, t[:-1], p)
    with pytest.raises(ValueError, match="pair counts"):
        ContextTables.from_counts(u, t, np.zeros((3, 64, 64)))  # more pair levels than K - 1
    with pytest.raises(ValueError, match="finite"):
        ContextTables.from_counts(u, np.full_like(t, np.nan), p)
    with pytest.raises(ValueError, match="non-negative"):
        ContextTables.from_counts(u, t, -p)


# --------------------------------------------------------------------------------------------
# Coding


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("K,C,F", [(1, 1, 1), (2, 1, 0), (3, 2, 50), (5, 1, 250), (4, 2, 7)])
def test_blocks_round_trip(levels, K, C, F):
    rng = np.random.default_rng(levels * 100 + K * 10 + C + F)
    training = markov_codes(rng, 32, 5, 2, 2000)
    tables = tables_from(training, 32, levels)
    for block in (markov_codes(rng, 32, K, C, F), rng.integers(0, 32, (K, C, F))):
        payload = encode_block(block, tables)
        np.testing.assert_array_equal(decode_block(payload, (K, C, F), tables), block)
        assert K * C * F <= entropy.max_symbols(len(payload))


def test_context_beats_range_coding_on_predictable_codes():
    rng = np.random.default_rng(1)
    N = 256
    tables = tables_from(markov_codes(rng, N, 3, 4, 5000), N, 3)
    codes = markov_codes(rng, N, 3, 2, 1000).transpose(1, 0, 2)  # [C, K, T]
    header = tf.TokenFileHeader(model="t", model_hash="ab", sample_rate=16000, frame_rate=50.0, num_codebooks=3,
                                codebook_size=N, num_frames=1000, length=320_000, channels=2, coding="context")
    context = tf.pack(codes, header, tables)
    ranged = tf.pack(codes, dataclasses.replace(header, coding="range"), tables)
    assert len(context) < 0.75 * len(ranged)
    np.testing.assert_array_equal(tf.unpack(context, tables)[1], codes)
    np.testing.assert_array_equal(tf.unpack(ranged, tables.unigram)[1], codes)  # same table as the array
    with pytest.raises(TokenFileError, match="context tables"):
        tf.unpack(context, tables.unigram)
    with pytest.raises(TokenFileError, match="context tables"):
        tf.unpack(context, None)


def test_bad_payloads_raise_value_error_never_crash():
    rng = np.random.default_rng(2)
    tables = tables_from(markov_codes(rng, 32, 3, 1, 2000), 32, 3)
    block = markov_codes(rng, 32, 3, 1, 100)
    payload = encode_block(block, tables)
    for bad, match in [(payload[:-1], "32-bit"), (payload + b"\0" * 4 * 40, "left over"),
                       (b"\0" * 4, "cannot fit"), (payload, "levels")]:
        shape = (4, 1, 100) if match == "levels" else (3, 1, 100)
        small = tables_from(markov_codes(rng, 32, 2, 1, 500), 32, 2) if match == "levels" else tables
        with pytest.raises(ValueError, match=match):
            decode_block(bad, shape, small)
    for _ in range(200):  # random bytes: an error or some codes in range, nothing else
        junk = rng.bytes(4 * int(rng.integers(1, 80)))
        try:
            out = decode_block(junk, (3, 1, 100), tables)
        except ValueError:
            continue
        assert out.shape == (3, 1, 100) and 0 <= out.min() and out.max() < 32


# --------------------------------------------------------------------------------------------
# Models with context tables


def context_model(levels: int = 2, seed: int = 0) -> CodecModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CodecModel(dataclasses.replace(tiny(16_000), context_levels=levels))
    rng = np.random.default_rng(seed)
    N = model.codebook_size
    counts = count_contexts([markov_codes(rng, N, 12, 1, 3000)[:, 0]], N, levels)
    for buffer, value in zip((model.code_counts, model.transition_counts, model.pair_counts), counts, strict=True):
        buffer.copy_(torch.from_numpy(value + (buffer is model.code_counts)))
    return model.prepare_for_inference()


def test_config_bounds_context_levels():
    with pytest.raises(ModelError, match="context_levels"):
        dataclasses.replace(tiny(16_000), context_levels=13)
    with pytest.raises(ModelError, match="context tables"):
        dataclasses.replace(tiny(16_000), codebook_size=65536, context_levels=1)
    assert tiny_random().context_tables() is None
    model = context_model(3)
    tables = model.context_tables()
    assert tables.context_levels == 3 and model.context_tables() is tables  # built once...
    model.transition_counts[5, 7] += 1000.0
    rebuilt = model.context_tables()  # ...and again when a count changes
    assert rebuilt is not tables and rebuilt.transitions[5, 7] > tables.transitions[5, 7]


def test_context_model_saves_loads_and_codes_audio(tmp_path):
    model = context_model(2)
    save_pretrained(model, tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.config.context_levels == 2 and loaded.fingerprint == load_pretrained(tmp_path / "m").fingerprint
    np.testing.assert_array_equal(loaded.context_tables().transitions, model.context_tables().transitions)
    assert isinstance(coding_tables(loaded), ContextTables)
    assert available_codings(loaded, "auto", coding_tables(loaded)) == ["context", "range", "packed"]
    assert available_codings(tiny_random(), "auto", coding_tables(tiny_random())) == ["range", "packed"]
    with pytest.raises(TokenwaveError, match="context tables"):
        available_codings(tiny_random(), "context", coding_tables(tiny_random()))
    wav = np.random.default_rng(0).standard_normal((1, 16_000)).astype(np.float32) * 0.1
    sizes = {}
    for coding in ("context", "range", "packed"):
        data = encode_audio(loaded, wav, 16_000, None, coding)
        assert tf.read_header(data).coding == coding
        sizes[coding] = len(data)
        audio, rate = decode_bytes(loaded, data)
        assert rate == 16_000 and audio.shape == (1, 16_000) and np.isfinite(audio).all()
    auto = encode_audio(loaded, wav, 16_000, None)
    assert len(auto) == min(sizes.values())
    # Another model's tables: a context file is refused (fingerprint), never misread.
    with pytest.raises(TokenFileError, match="weights"):
        decode_bytes(context_model(2, seed=1), encode_audio(loaded, wav, 16_000, None, "context"))


def test_count_codes_command(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(25):  # one speaker: every 20th recording is dev, the rest train
        t = np.arange(8000) / 16_000
        wav = 0.2 * np.sin(2 * np.pi * (120 + 15 * i) * t) + 0.01 * rng.standard_normal(len(t))
        sf.write(tmp_path / f"u{i}.wav", wav.astype(np.float32), 16_000)
        rows.append({"audio": f"u{i}.wav", "text": f"utterance {i}", "speaker": "s"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_pretrained(tiny_random(), tmp_path / "src", extra={"training": {"steps": 7}})
    source = load_pretrained(tmp_path / "src")
    out = tmp_path / "counted"
    args = ["count-codes", "--model", str(tmp_path / "src"), "--manifest", str(tmp_path / "manifest.jsonl"),
            "--context-levels", "2", "--out", str(out)]
    assert cli_main(args) == 0
    counted = load_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    assert config["training"] == {"steps": 7} and config["entropy_tables"]["recordings"] == 23
    assert config["entropy_tables"]["frames"] == 23 * 26 and config["context_levels"] == 2
    assert counted.fingerprint != source.fingerprint  # token files need the tables they were coded with
    assert counted.codes_fingerprint == source.codes_fingerprint  # token LMs stay paired with the codec
    assert f"-> {counted.fingerprint}" in capsys.readouterr().out  # the saved model's
    old, new = source.state_dict(), counted.state_dict()
    for name, value in old.items():  # only the tables differ
        if name != "code_counts":
            torch.testing.assert_close(new[name], value, rtol=0, atol=0)
    assert float(counted.transition_counts.sum()) == 23 * 26 and float(counted.pair_counts.sum()) == 23 * 26
    assert float(counted.code_counts.sum()) == 12 * (23 * 26 + counted.codebook_size)
    wav = np.random.default_rng(1).standard_normal((1, 8000)).astype(np.float32) * 0.1
    np.testing.assert_array_equal(counted.encode(torch.from_numpy(wav), 16_000).numpy(),
                                  source.encode(torch.from_numpy(wav), 16_000).numpy())
    assert cli_main(args) == 2  # refuses to replace a model without --force
    assert cli_main(args[:-4] + ["--context-levels", "13", "--out", str(tmp_path / "x")]) == 2
    assert cli_main(args[:-2] + ["--out", str(out), "--force", "--split", "unseen"]) == 2  # no recordings


def test_storable_counts_fit_float16():
    from codec.tables import MAX_STORED_COUNT, storable

    big = np.array([[1e6, 5e5, 0.0]])
    scaled = storable(big)
    assert scaled.max() == MAX_STORED_COUNT and np.array_equal(scaled.astype(np.float16), scaled)
    np.testing.assert_allclose(scaled / scaled.sum(), big / big.sum(), rtol=1e-3)
    small = np.array([[3.0, 1.0, 2049.0]])
    np.testing.assert_array_equal(storable(small), [[3.0, 1.0, 2048.0]])  # float16 steps of 2 above 2048

