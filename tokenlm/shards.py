"""Token shards: the LM training corpus on disk (codec codes + phoneme ids of many utterances).

One shard is one safetensors file (no pickle) holding N utterances, concatenated:

    tensor            dtype   shape      meaning
    codes             int16   [K, sumT]  codes of utterance i: codes[:, code_offsets[i]:code_offsets[i+1]]
    code_offsets      int64   [N + 1]    0 = o_0 <= o_1 <= ... <= o_N = sumT
    phonemes          int32   [sumP]     phoneme ids of utterance i: phonemes[phoneme_offsets[i]:...[i+1]]
    phoneme_offsets   int64   [N + 1]    as code_offsets, ending at sumP

Metadata (string to string, as safetensors requires): ``{"tokenwave_shard": "1", "info": JSON}``
with ``info`` an object holding

    codec    {name, fingerprint, sample_rate, frame_rate, num_codebooks (= K), codebook_size}
    vocab    the phoneme vocabulary, PhonemeVocab.to_dict(): {"symbols": [...]}
    items    N objects {id, speaker, text, duration, split, source}, in tensor order
    skipped  objects {id, source, reason}: recordings of this shard's slice of the work list that
             could not be read (so a resumed ``tokenize`` knows the shard is complete)

Shards are untrusted input: :func:`unpack` checks the container (safetensors' own parser: header,
dtypes, shapes, data offsets covering the file exactly), the tensor names, dtypes and shapes, the
offsets (start at 0, monotone, end at the tensor length), codes in ``[0, codebook_size)``,
phoneme ids in ``[1, len(vocab))`` (no ``<pad>``), and the type and range of every metadata field;
any problem raises :class:`LMError` with a one-line message. Files are written atomically
(temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codec.atomic import atomic_write_bytes
from tokenlm.errors import LMError
from tokenlm.text import PhonemeVocab

FORMAT = "1"
SHARD_GLOB = "shard_*.safetensors"
INDEX_FILE = "index.json"
SPLITS = ("train", "dev", "unseen", "other")
CODEC_FIELDS = ("name", "fingerprint", "sample_rate", "frame_rate", "num_codebooks", "codebook_size")
ITEM_FIELDS = ("id", "speaker", "text", "duration", "split", "source")
TENSORS = {"codes": np.int16, "code_offsets": np.int64, "phonemes": np.int32, "phoneme_offsets": np.int64}
MAX_SHARD_BYTES = 2**31  # 2 GiB
MAX_HEADER_BYTES = 2**27  # 128 MiB of JSON
MAX_STRING = 100_000  # characters of one text/id/speaker/source field


@dataclass
class Utterance:
    """One recording: codes int16 ``[K, T]``, phoneme ids int32 ``[P]`` (P = 0 without text)."""

    id: str
    speaker: str
    text: str
    duration: float
    split: str
    codes: np.ndarray
    phonemes: np.ndarray
    source: str = ""

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])


@dataclass
class Shard:
    """A shard's contents: codec info, vocabulary, utterances, and the recordings it skipped."""

    codec_info: dict
    vocab: PhonemeVocab
    utterances: list[Utterance]
    skipped: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Validation helpers


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and math.isfinite(value)


def _string(value, what: str, allow_empty: bool = True) -> str:
    if not isinstance(value, str) or (not allow_empty and not value) or len(value) > MAX_STRING:
        raise LMError(f"{what} must be a{'' if allow_empty else ' non-empty'} string of at most {MAX_STRING} "
                      f"characters, got {_show(value)}")
    return value


def check_codec_info(info) -> dict:
    """The codec description of a shard, validated (see the module docstring); a plain copy."""
    if not isinstance(info, dict) or set(info) != set(CODEC_FIELDS):
        keys = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise LMError(f"codec info must have exactly the fields {', '.join(CODEC_FIELDS)}; got {_show(keys)}")
    _string(info["name"], "codec name", allow_empty=False)
    if not isinstance(info["fingerprint"], str) or not re.fullmatch(r"[0-9a-f]{1,128}", info["fingerprint"]):
        raise LMError(f"codec fingerprint must be 1-128 lower-case hex digits, got {_show(info['fingerprint'])}")
    for key, low, high in (("sample_rate", 1, 768_000), ("num_codebooks", 1, 64), ("codebook_size", 2, 32768)):
        if not _is_int(info[key]) or not low <= info[key] <= high:
            raise LMError(f"codec {key} must be an integer in {low}..{high}, got {_show(info[key])}")
    if not _is_number(info["frame_rate"]) or not 0 < info["frame_rate"] <= info["sample_rate"]:
        raise LMError(f"codec frame_rate must be a number in (0, sample_rate], got {_show(info['frame_rate'])}")
    return {"name": info["name"], "fingerprint": info["fingerprint"], "sample_rate": int(info["sample_rate"]),
            "frame_rate": float(info["frame_rate"]), "num_codebooks": int(info["num_codebooks"]),
            "codebook_size": int(info["codebook_size"])}


def _check_item(item, index: int) -> dict:
    where = f"item {index}"
    if not isinstance(item, dict) or set(item) != set(ITEM_FIELDS):
        raise LMError(f"{where} must have exactly the fields {', '.join(ITEM_FIELDS)}")
    _string(item["id"], f"{where} id", allow_empty=False)
    for key in ("speaker", "text", "source"):
        _string(item[key], f"{where} {key}")
    if not _is_number(item["duration"]) or item["duration"] < 0:
        raise LMError(f"{where} duration must be a finite number >= 0, got {_show(item['duration'])}")
    if item["split"] not in SPLITS:
        raise LMError(f"{where} split must be one of {', '.join(SPLITS)}, got {_show(item['split'])}")
    return item


def _check_skipped(skipped) -> list[dict]:
    if not isinstance(skipped, list):
        raise LMError("'skipped' must be a list")
    for i, entry in enumerate(skipped):
        if not isinstance(entry, dict) or set(entry) != {"id", "source", "reason"}:
            raise LMError(f"skipped entry {i} must have exactly the fields id, source, reason")
        _string(entry["id"], f"skipped entry {i} id", allow_empty=False)
        _string(entry["source"], f"skipped entry {i} source")
        _string(entry["reason"], f"skipped entry {i} reason")
    return [dict(entry) for entry in skipped]


def _check_offsets(offsets: np.ndarray, total: int, n: int, name: str) -> None:
    if offsets.shape != (n + 1,):
        raise LMError(f"{name} must have shape [{n + 1}] (one more than the {n} items), got {list(offsets.shape)}")
    if offsets[0] != 0 or offsets[-1] != total:
        raise LMError(f"{name} must start at 0 and end at {total}, got {int(offsets[0])}..{int(offsets[-1])}")
    if n and np.any(np.diff(offsets) < 0):
        raise LMError(f"{name} must not decrease")


def _as_codes(codes, index: int, num_codebooks: int, codebook_size: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != num_codebooks or codes.dtype.kind not in "iu":
        raise LMError(f"utterance {index}: codes must be an integer array [{num_codebooks}, T], "
                      f"got {codes.dtype} {list(codes.shape)}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise LMError(f"utterance {index}: codes must lie in [0, {codebook_size})")
    return codes.astype(np.int16)


def _as_phonemes(phonemes, index: int, vocab_size: int) -> np.ndarray:
    phonemes = np.asarray(phonemes)
    if phonemes.ndim != 1 or (phonemes.size and phonemes.dtype.kind not in "iu"):
        raise LMError(f"utterance {index}: phonemes must be an integer array [P], got {phonemes.dtype} "
                      f"{list(phonemes.shape)}")
    if phonemes.size and (phonemes.min() < 1 or phonemes.max() >= vocab_size):
        raise LMError(f"utterance {index}: phoneme ids must lie in [1, {vocab_size}) (no <pad>)")
    return phonemes.astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Bytes


def pack(utterances: list[Utterance], codec_info: dict, vocab: PhonemeVocab, skipped: list[dict] | None = None) -> bytes:
    """Utterances -> the bytes of one shard (everything validated first; raises :class:`LMError`)."""
    from safetensors.numpy import save

    codec_info = check_codec_info(codec_info)
    if not isinstance(vocab, PhonemeVocab):
        raise LMError("vocab must be a PhonemeVocab")
    K, size = codec_info["num_codebooks"], codec_info["codebook_size"]
    codes, phonemes, items = [], [], []
    for i, u in enumerate(utterances):
        item = {"id": u.id, "speaker": u.speaker, "text": u.text, "duration": u.duration, "split": u.split,
                "source": u.source}
        items.append(_check_item(item, i) | {"duration": float(u.duration)})
        codes.append(_as_codes(u.codes, i, K, size))
        phonemes.append(_as_phonemes(u.phonemes, i, len(vocab)))
    ids = [item["id"] for item in items]
    if len(set(ids)) != len(ids):
        raise LMError("utterance ids must be unique within a shard")
    info = {"codec": codec_info, "vocab": vocab.to_dict(), "items": items, "skipped": _check_skipped(skipped or [])}
    tensors = {
        "codes": np.concatenate(codes, axis=1) if codes else np.zeros((K, 0), np.int16),
        "code_offsets": np.concatenate([[0], np.cumsum([c.shape[1] for c in codes], dtype=np.int64)]).astype(np.int64),
        "phonemes": np.concatenate(phonemes) if phonemes else np.zeros(0, np.int32),
        "phoneme_offsets": np.concatenate([[0], np.cumsum([len(p) for p in phonemes], dtype=np.int64)]).astype(np.int64),
    }
    metadata = {"tokenwave_shard": FORMAT, "info": json.dumps(info, ensure_ascii=False, allow_nan=False)}
    return save(tensors, metadata=metadata)


def _metadata(data: bytes) -> dict:
    """The ``__metadata__`` of safetensors bytes (the header is parsed and size-checked here)."""
    if len(data) < 8:
        raise LMError(f"not a shard: {len(data)} bytes is shorter than a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES or 8 + length > len(data):
        raise LMError(f"not a shard: header length {length} does not fit the {len(data)}-byte file (truncated?)")
    try:
        header = json.loads(data[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise LMError("not a shard: the safetensors header is not valid JSON") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or metadata.get("tokenwave_shard") != FORMAT or not isinstance(metadata.get("info"), str):
        found = metadata.get("tokenwave_shard") if isinstance(metadata, dict) else None
        raise LMError(f"not a tokenwave shard of format {FORMAT} (tokenwave_shard = {_show(found)})")
    return metadata


def unpack(data: bytes) -> Shard:
    """The bytes of one shard -> :class:`Shard` (validated; raises :class:`LMError`)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    metadata = _metadata(data)
    try:
        info = json.loads(metadata["info"])
    except (json.JSONDecodeError, RecursionError):
        raise LMError("shard info is not valid JSON") from None
    if not isinstance(info, dict) or set(info) != {"codec", "vocab", "items", "skipped"}:
        raise LMError("shard info must be an object with exactly codec, vocab, items, skipped")
    codec_info = check_codec_info(info["codec"])
    vocab = PhonemeVocab.from_dict(info["vocab"])
    if not isinstance(info["items"], list):
        raise LMError("shard items must be a list")
    items = [_check_item(item, i) for i, item in enumerate(info["items"])]
    skipped = _check_skipped(info["skipped"])
    ids = [item["id"] for item in items]
    if len(set(ids)) != len(ids):
        raise LMError("utterance ids must be unique within a shard")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, TypeError) as error:
        raise LMError(f"corrupted shard: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if set(tensors) != set(TENSORS):
        raise LMError(f"a shard holds exactly the tensors {', '.join(TENSORS)}; got {_show(sorted(tensors))}")
    for name, dtype in TENSORS.items():
        if tensors[name].dtype != dtype:
            raise LMError(f"shard tensor {name} must be {np.dtype(dtype).name}, got {tensors[name].dtype}")
    codes, phonemes = tensors["codes"], tensors["phonemes"]
    K, size, n = codec_info["num_codebooks"], codec_info["codebook_size"], len(items)
    if codes.ndim != 2 or codes.shape[0] != K:
        raise LMError(f"shard codes must have shape [{K}, T] (num_codebooks = {K}), got {list(codes.shape)}")
    if phonemes.ndim != 1:
        raise LMError(f"shard phonemes must have shape [P], got {list(phonemes.shape)}")
    _check_offsets(tensors["code_offsets"], codes.shape[1], n, "code_offsets")
    _check_offsets(tensors["phoneme_offsets"], phonemes.shape[0], n, "phoneme_offsets")
    if codes.size and (codes.min() < 0 or codes.max() >= size):
        raise LMError(f"shard codes must lie in [0, {size}) (codebook_size), found {int(codes.min())}..{int(codes.max())}")
    if phonemes.size and (phonemes.min() < 1 or phonemes.max() >= len(vocab)):
        raise LMError(f"shard phoneme ids must lie in [1, {len(vocab)}), found {int(phonemes.min())}..{int(phonemes.max())}")
    co, po = tensors["code_offsets"], tensors["phoneme_offsets"]
    utterances = [
        Utterance(item["id"], item["speaker"], item["text"], float(item["duration"]), item["split"],
                  codes[:, co[i] : co[i + 1]], phonemes[po[i] : po[i + 1]], item["source"])
        for i, item in enumerate(items)
    ]
    return Shard(codec_info, vocab, utterances, skipped)


# ---------------------------------------------------------------------------------------------
# Files


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`codec.atomic.atomic_write_bytes`); LMError on failure."""
    atomic_write_bytes(path, data, "shard file", LMError)
    return Path(path)


def write_shard(path: str | os.PathLike, utterances: list[Utterance], codec_info: dict, vocab: PhonemeVocab,
                skipped: list[dict] | None = None) -> Path:
    """Write one shard atomically (see :func:`pack`); returns its path."""
    return atomic_write(path, pack(utterances, codec_info, vocab, skipped))


def read_shard(path: str | os.PathLike, max_bytes: int = MAX_SHARD_BYTES) -> Shard:
    """Read and validate one shard file; any problem raises :class:`LMError` naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise LMError(f"{path}: {size} bytes is more than a shard may hold ({max_bytes})")
        data = path.read_bytes()
    except OSError as error:
        raise LMError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return unpack(data)
    except LMError as error:
        raise LMError(f"{path}: {error}") from None


def shard_files(folder: str | os.PathLike) -> list[Path]:
    """The shard files of a corpus folder, sorted; those listed in its ``index.json`` when present
    (which must then match the files found)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LMError(f"{folder}: no such folder")
    found = sorted(folder.glob(SHARD_GLOB))
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            listed = json.loads(index.read_text())["shards"]
            names = [entry["file"] for entry in listed]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise LMError(f"{index} is not a tokenwave shard index") from None
        if sorted(names) != [p.name for p in found]:
            raise LMError(f"{folder}: the shard files do not match {INDEX_FILE} (an unfinished tokenize run? "
                          "run it again to complete the folder)")
    if not found:
        raise LMError(f"{folder}: no {SHARD_GLOB} files")
    return found


def shard_folders(folders: str | os.PathLike | list) -> list[str]:
    """One shard folder (a string or path) or several, as a list of strings."""
    return [os.fspath(folders)] if isinstance(folders, (str, os.PathLike)) else [os.fspath(f) for f in folders]


def read_corpus(folders: str | os.PathLike | list) -> Shard:
    """Every shard of one folder, or of several (``[folder, ...]``), merged into one :class:`Shard`;
    all must share codec info and vocabulary, and utterance ids must be unique across them."""
    folders = shard_folders(folders)
    if not folders:
        raise LMError("no shard folder given")
    merged: Shard | None = None
    seen: set[str] = set()
    for path in [path for folder in folders for path in shard_files(folder)]:
        shard = read_shard(path)
        if merged is None:
            merged = Shard(shard.codec_info, shard.vocab, [], [])
        elif shard.codec_info != merged.codec_info:
            raise LMError(f"{path}: made with another codec ({shard.codec_info['name']} {shard.codec_info['fingerprint']}, "
                          f"{shard.codec_info['num_codebooks']} codebooks) than the other shards")
        elif shard.vocab != merged.vocab:
            raise LMError(f"{path}: uses another phoneme vocabulary than the other shards")
        for utterance in shard.utterances:
            if utterance.id in seen:
                raise LMError(f"{path}: utterance id {utterance.id!r} also appears in another shard")
            seen.add(utterance.id)
        merged.utterances.extend(shard.utterances)
        merged.skipped.extend(shard.skipped)
    assert merged is not None
    return merged


def read_shards(folder: str | os.PathLike) -> list[Utterance]:
    """All utterances of the shards in ``folder`` (checked as in :func:`read_corpus`)."""
    return read_corpus(folder).utterances
