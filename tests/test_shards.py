"""Token shards: exact round trips, atomic writes, and every kind of damaged or hostile shard."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save

from tokenlm.errors import LMError
from tokenlm.shards import (
    INDEX_FILE,
    Utterance,
    pack,
    read_corpus,
    read_shard,
    read_shards,
    unpack,
    write_shard,
)
from tokenlm.text import PhonemeVocab, default_vocab

INFO = {"name": "tiny-16k", "fingerprint": "0123456789abcdef", "sample_rate": 16000, "frame_rate": 50.0,
        "num_codebooks": 3, "codebook_size": 64}
VOCAB = default_vocab()


def utterance(i: int, frames: int = 5, phonemes: int = 4, K: int = 3, split: str = "train") -> Utterance:
    rng = np.random.default_rng(i)
    return Utterance(id=f"spk/utt{i}", speaker="spk", text=f"text {i} ✓" if phonemes else "",
                     duration=frames / 50, split=split, codes=rng.integers(0, 64, (K, frames)).astype(np.int16),
                     phonemes=rng.integers(1, len(VOCAB), phonemes).astype(np.int32), source=f"/data/{i}.wav")


def same(a: Utterance, b: Utterance) -> bool:
    return (a.id, a.speaker, a.text, a.duration, a.split, a.source) == (b.id, b.speaker, b.text, b.duration, b.split,
                                                                        b.source) and \
        np.array_equal(a.codes, b.codes) and a.codes.dtype == np.int16 and \
        np.array_equal(a.phonemes, b.phonemes) and b.phonemes.dtype == np.int32


def test_round_trip_keeps_everything(tmp_path):
    utterances = [utterance(0), utterance(1, frames=0, phonemes=0, split="other"), utterance(2, frames=9, phonemes=1)]
    skipped = [{"id": "spk/bad", "source": "/data/bad.wav", "reason": "not audio"}]
    path = write_shard(tmp_path / "shard_00000.safetensors", utterances, INFO, VOCAB, skipped)
    shard = read_shard(path)
    assert shard.codec_info == INFO and shard.vocab == VOCAB and shard.skipped == skipped
    assert len(shard.utterances) == 3 and all(same(a, b) for a, b in zip(utterances, shard.utterances))
    assert [p.name for p in tmp_path.iterdir()] == ["shard_00000.safetensors"]  # no temporary file left
    assert unpack(pack([], INFO, VOCAB)).utterances == []


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12)), max_size=6), st.integers(1, 4))
def test_round_trip_any_lengths(lengths, K):
    info = INFO | {"num_codebooks": K}
    utterances = [utterance(i, frames, phonemes, K=K) for i, (frames, phonemes) in enumerate(lengths)]
    shard = unpack(pack(utterances, info, VOCAB))
    assert len(shard.utterances) == len(utterances) and all(same(a, b) for a, b in zip(utterances, shard.utterances))


def test_read_shards_merges_and_checks_folders(tmp_path):
    write_shard(tmp_path / "shard_00000.safetensors", [utterance(0), utterance(1)], INFO, VOCAB)
    write_shard(tmp_path / "shard_00001.safetensors", [utterance(2)], INFO, VOCAB)
    assert [u.id for u in read_shards(tmp_path)] == ["spk/utt0", "spk/utt1", "spk/utt2"]
    assert read_corpus(tmp_path).codec_info == INFO

    (tmp_path / INDEX_FILE).write_text(json.dumps({"shards": [{"file": "shard_00000.safetensors"}]}))
    with pytest.raises(LMError, match="do not match index.json"):
        read_shards(tmp_path)
    (tmp_path / INDEX_FILE).unlink()

    write_shard(tmp_path / "shard_00002.safetensors", [utterance(1)], INFO, VOCAB)
    with pytest.raises(LMError, match="also appears"):
        read_shards(tmp_path)
    write_shard(tmp_path / "shard_00002.safetensors", [utterance(3)], INFO | {"fingerprint": "ff"}, VOCAB)
    with pytest.raises(LMError, match="another codec"):
        read_shards(tmp_path)
    write_shard(tmp_path / "shard_00002.safetensors", [utterance(3)], INFO, PhonemeVocab(list(VOCAB.symbols) + ["x"]))
    with pytest.raises(LMError, match="another phoneme vocabulary"):
        read_shards(tmp_path)
    with pytest.raises(LMError, match="no such folder"):
        read_shards(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LMError, match="no shard_"):
        read_shards(tmp_path / "empty")


@pytest.mark.parametrize("change, message", [
    (lambda u: setattr(u, "codes", np.full((3, 4), 64)), r"codes must lie in \[0, 64\)"),
    (lambda u: setattr(u, "codes", np.full((3, 4), -1)), r"codes must lie"),
    (lambda u: setattr(u, "codes", np.zeros((2, 4), np.int16)), r"\[3, T\]"),
    (lambda u: setattr(u, "codes", np.zeros((3, 4), np.float32)), "integer array"),
    (lambda u: setattr(u, "phonemes", np.array([0, 5])), "no <pad>"),
    (lambda u: setattr(u, "phonemes", np.array([len(VOCAB)])), "phoneme ids"),
    (lambda u: setattr(u, "split", "test"), "split must be one of"),
    (lambda u: setattr(u, "duration", float("nan")), "duration"),
    (lambda u: setattr(u, "id", ""), "id must be a non-empty string"),
    (lambda u: setattr(u, "text", None), "text must be"),
])
def test_pack_refuses_bad_utterances(change, message):
    u = utterance(0)
    change(u)
    with pytest.raises(LMError, match=message):
        pack([u], INFO, VOCAB)


@pytest.mark.parametrize("change, message", [
    ({"codebook_size": 40000}, "codebook_size"),
    ({"num_codebooks": 0}, "num_codebooks"),
    ({"fingerprint": "XYZ"}, "fingerprint"),
    ({"frame_rate": 0}, "frame_rate"),
    ({"sample_rate": True}, "sample_rate"),
    ({"extra": 1}, "exactly the fields"),
])
def test_pack_refuses_bad_codec_info(change, message):
    with pytest.raises(LMError, match=message):
        pack([utterance(0)], INFO | change, VOCAB)
    with pytest.raises(LMError, match="unique"):
        pack([utterance(0), utterance(0)], INFO, VOCAB)


# ---------------------------------------------------------------------------------------------
# Hostile bytes: build shards by hand with one thing wrong


def raw_shard(tensors: dict | None = None, info: dict | None = None, fmt: str = "1", info_text: str | None = None,
              **tensor_changes) -> bytes:
    """A shard of two utterances (3 + 2 frames, 2 + 0 phonemes) with the given parts replaced."""
    items = [{"id": f"u{i}", "speaker": "s", "text": "t", "duration": 0.1, "split": "train", "source": ""}
             for i in range(2)]
    base = {"codes": np.ones((3, 5), np.int16), "code_offsets": np.array([0, 3, 5], np.int64),
            "phonemes": np.array([5, 6], np.int32), "phoneme_offsets": np.array([0, 2, 2], np.int64)}
    base |= (tensors or {}) | tensor_changes
    base = {k: v for k, v in base.items() if v is not None}  # None removes a tensor
    meta = {"codec": INFO, "vocab": VOCAB.to_dict(), "items": items, "skipped": []} | (info or {})
    return save(base, metadata={"tokenwave_shard": fmt, "info": info_text if info_text is not None else json.dumps(meta)})


def test_hand_built_shard_is_valid():
    shard = unpack(raw_shard())
    assert [u.codes.shape for u in shard.utterances] == [(3, 3), (3, 2)]
    assert [len(u.phonemes) for u in shard.utterances] == [2, 0]


BAD_SHARDS = {
    "wrong codes dtype": ({"codes": np.ones((3, 5), np.int32)}, "codes must be int16"),
    "wrong offsets dtype": ({"code_offsets": np.array([0, 3, 5], np.int32)}, "code_offsets must be int64"),
    "float phonemes": ({"phonemes": np.array([5, 6], np.float32)}, "phonemes must be int32"),
    "missing tensor": ({"codes": None}, "exactly the tensors"),
    "extra tensor": ({"extra": np.zeros(1, np.int8)}, "exactly the tensors"),
    "codes 1-d": ({"codes": np.ones(15, np.int16)}, r"shape \[3, T\]"),
    "too few codebooks": ({"codes": np.ones((2, 5), np.int16)}, r"shape \[3, T\]"),
    "offset past the end": ({"code_offsets": np.array([0, 3, 9], np.int64)}, "end at 5"),
    "offset not from 0": ({"code_offsets": np.array([1, 3, 5], np.int64)}, "start at 0"),
    "offsets decrease": ({"code_offsets": np.array([0, 6, 5], np.int64)}, "must not decrease"),
    "offsets wrong count": ({"phoneme_offsets": np.array([0, 2], np.int64)}, r"shape \[3\]"),
    "code >= codebook_size": ({"codes": np.full((3, 5), 64, np.int16)}, r"\[0, 64\)"),
    "negative code": ({"codes": np.full((3, 5), -3, np.int16)}, r"\[0, 64\)"),
    "phoneme id too large": ({"phonemes": np.array([5, 77], np.int32)}, r"phoneme ids must lie in \[1, 77\)"),
    "pad phoneme": ({"phonemes": np.array([0, 5], np.int32)}, r"\[1, 77\)"),
}


@pytest.mark.parametrize("name", sorted(BAD_SHARDS))
def test_bad_tensors_are_refused(name):
    changes, message = BAD_SHARDS[name]
    with pytest.raises(LMError, match=message):
        unpack(raw_shard(**changes))


BAD_INFO = {
    "info not JSON": ({"info_text": "{not json"}, "not valid JSON"),
    "info a list": ({"info_text": "[1, 2]"}, "exactly codec, vocab, items, skipped"),
    "missing skipped": ({"info_text": json.dumps({"codec": INFO, "vocab": VOCAB.to_dict(), "items": []})}, "exactly"),
    "wrong format": ({"fmt": "2"}, "format 1"),
    "codec name a number": ({"info": {"codec": INFO | {"name": 5}}}, "codec name"),
    "codec missing field": ({"info": {"codec": {k: v for k, v in INFO.items() if k != "frame_rate"}}}, "exactly the fields"),
    "vocab not an object": ({"info": {"vocab": ["<pad>"]}}, "JSON object"),
    "items not a list": ({"info": {"items": {"a": 1}}}, "items must be a list"),
    "item count differs": ({"info": {"items": [{"id": "u0", "speaker": "s", "text": "t", "duration": 0.1,
                                                 "split": "train", "source": ""}]}}, r"shape \[2\]"),
    "duplicate ids": ({"info": {"items": [{"id": "u", "speaker": "s", "text": "t", "duration": 0.1, "split": "train",
                                            "source": ""}] * 2}}, "unique"),
    "duration a string": ({"info": {"items": [{"id": f"u{i}", "speaker": "s", "text": "t", "duration": "1",
                                                "split": "train", "source": ""} for i in range(2)]}}, "duration"),
    "item extra field": ({"info": {"items": [{"id": f"u{i}", "speaker": "s", "text": "t", "duration": 1,
                                               "split": "train", "source": "", "x": 1} for i in range(2)]}}, "exactly"),
    "skipped malformed": ({"info": {"skipped": [{"id": "x"}]}}, "skipped entry 0"),
}


@pytest.mark.parametrize("name", sorted(BAD_INFO))
def test_bad_metadata_is_refused(name):
    changes, message = BAD_INFO[name]
    with pytest.raises(LMError, match=message):
        unpack(raw_shard(**changes))


def test_damaged_files_are_refused(tmp_path):
    data = raw_shard()
    path = tmp_path / "shard_00000.safetensors"
    for cut in (0, 4, 8, 50, len(data) // 2, len(data) - 1):  # truncation anywhere
        path.write_bytes(data[:cut])
        with pytest.raises(LMError, match="shard_00000.safetensors: "):
            read_shard(path)
    path.write_bytes(data + b"\0")  # trailing bytes
    with pytest.raises(LMError, match="corrupted shard"):
        read_shard(path)
    path.write_bytes(struct.pack("<Q", 2**40) + data[8:])  # absurd header length
    with pytest.raises(LMError, match="header length"):
        read_shard(path)
    flipped = bytearray(data)
    flipped[8] = ord("x")  # the header's opening brace
    path.write_bytes(bytes(flipped))
    with pytest.raises(LMError, match="header is not valid JSON"):
        read_shard(path)
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF  # a value out of range in the data section (the codes are stored last)
    path.write_bytes(bytes(flipped))
    with pytest.raises(LMError, match="must lie in"):
        read_shard(path)
    path.write_bytes(b"\x02\0\0\0\0\0\0\0{}")  # a safetensors file without our metadata
    with pytest.raises(LMError, match="not a tokenwave shard"):
        read_shard(path)
    with pytest.raises(LMError, match="more than a shard may hold"):
        path.write_bytes(data)
        read_shard(path, max_bytes=100)
    with pytest.raises(LMError, match="cannot read"):
        read_shard(tmp_path / "missing.safetensors")
