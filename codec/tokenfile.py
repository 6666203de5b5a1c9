"""Token files: codec codes ``[C, K, T]`` on disk, in a small, checked binary format.

Layout (all integers little-endian)::

    offset  size  field
    0       4     magic  b"TWTK"
    4       2     format version, u16 (= 1)
    6       4     header length H, u32 (1 .. 65536)
    10      H     header: UTF-8 JSON object (fields below)
    10+H    4     CRC32 (zlib) of bytes [0, 10+H)
    then ceil(T / chunk_frames) chunks, chunk i being:
            4     chunk index i, u32
            4     frames F in this chunk, u32 (chunk_frames, except a shorter last chunk)
            4     payload length P in bytes, u32
            P     payload: the codes [C, K, F] of frames [i*chunk_frames, i*chunk_frames + F)
            4     CRC32 (zlib) of the chunk's 12 header bytes and its payload
    end of file (nothing may follow the last chunk)

Header fields (all required, no others allowed):

    model          str    codec name, 1-256 characters, no control characters
    model_hash     str    hex fingerprint of the codec's token space (1-128 hex digits)
    sample_rate    int    1 .. 768000 Hz
    frame_rate     float  code frames per second, 0 < frame_rate <= sample_rate
    num_codebooks  int    K, codebooks used, 1 .. 64
    codebook_size  int    N, codes per codebook, 2 .. 65536
    num_frames     int    T >= 0, with C*K*T <= 2**27
    length         int    original length in samples, 0 .. ceil((T+1) * sample_rate / frame_rate)
    channels       int    C, 1 .. 16 (each channel coded by the mono codec)
    coding         str    "range", "context" or "packed"
    chunk_frames   int    frames per chunk, 1 .. 2**20 (default 250: 5 s at 50 Hz)

Every chunk decodes on its own. Within a chunk the C*K*F codes are taken codebook-major:
for k in 0..K-1, for c in 0..C-1, the F codes ``codes[c, k, t0:t0+F]``.

* ``coding="packed"``: each code in b = ceil(log2 N) bits, most significant bit first, the
  chunk's last byte zero-padded; P is exactly ceil(C*K*F*b / 8) and padding bits must be 0.
* ``coding="range"``: one range coded stream per chunk (constriction's ``RangeEncoder``),
  stored as P/4 32-bit words; codebook k of every channel is coded with a ``Categorical``
  model (``perfect=False``) built from row k of the model's probability table
  ``[K_max, N]`` after :func:`codec.entropy.coding_table` (every code probability
  >= 2**-24, none above 1/2). With no code above 1/2 every code costs at least one bit,
  so a valid chunk satisfies C*K*F <= 8*P + 64; decoders check this before decoding, and
  reject a stream with data left over after its codes (as far as the range coder can tell:
  it reads 64 bits ahead, so one stray trailing word goes unnoticed).
* ``coding="context"``: as "range", but levels 1 .. L are coded with context models
  (:mod:`codec.context_coding`: level 1 given the previous level-1 code of the same channel,
  the chunk's first frame in context N; level k <= L given level k - 1 of the same frame),
  built from the model's context tables; levels after L as in "range". The same checks apply.
  Levels must still be coded in order, so a decoder reads level 1 code by code.

Token files are untrusted input: every problem with one raises
:class:`codec.errors.TokenFileError` with a one-line message, and sizes are checked against
the bytes actually present before anything is allocated or decoded (``tokenwave fuzz-tokens``,
:mod:`codec.fuzz`, checks this on mutated and random files).

Whole files: :func:`pack` / :func:`unpack`. Streams with bounded memory: :class:`StreamPacker`
(codes pushed in pieces, chunks spooled, header written at the end) and :func:`decode_chunks`
(everything checked first, then decoded chunk by chunk). Files are written with
:func:`codec.atomic.atomic_output`: a killed writer never leaves a partial file under the final name.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import struct
import tempfile
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from codec import context_coding, entropy
from codec.atomic import atomic_output
from codec.context_coding import ContextTables
from codec.errors import TokenFileError

__all__ = [
    "CODINGS",
    "DEFAULT_CHUNK_FRAMES",
    "DEFAULT_MAX_FILE_BYTES",
    "MAGIC",
    "MAX_SYMBOLS",
    "VERSION",
    "ChunkInfo",
    "StreamPacker",
    "TokenFileHeader",
    "atomic_output",
    "bits_per_second",
    "chunk_sizes",
    "chunks",
    "decode_chunks",
    "encode_chunk",
    "pack",
    "packed_bits_per_second",
    "preamble",
    "read_header",
    "read_token_file",
    "unpack",
    "unpack_chunk",
    "write_token_file",
]

MAGIC = b"TWTK"
VERSION = 1
CODINGS = ("range", "packed", "context")
RANGE_CODINGS = ("range", "context")  # entropy coded: every code costs at least one bit
DEFAULT_CHUNK_FRAMES = 250
MAX_HEADER_BYTES = 64 * 1024
MAX_SYMBOLS = 2**27  # C * K * T
MAX_CHUNK_FRAMES = 2**20
MAX_SAMPLE_RATE = 768_000
MAX_CODEBOOKS = 64
MAX_CODEBOOK_SIZE = 65536
MAX_CHANNELS = 16
DEFAULT_MAX_FILE_BYTES = 2**29  # 512 MiB: more than C*K*T = 2**27 codes at 16 bits need

_PREAMBLE = struct.Struct("<4sHI")  # magic, version, header length
_CRC = struct.Struct("<I")
_CHUNK = struct.Struct("<III")  # index, frames, payload bytes
_CHUNK_OVERHEAD = _CHUNK.size + _CRC.size
_BLOCK = 2**16  # codes per vectorised bit-packing step (a multiple of 8: blocks stay byte aligned)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------
# Header


@dataclass
class TokenFileHeader:
    """What a token file says about its codes; see the module docstring for the rules."""

    model: str
    model_hash: str
    sample_rate: int
    frame_rate: float
    num_codebooks: int
    codebook_size: int
    num_frames: int
    length: int
    channels: int = 1
    coding: str = "range"
    chunk_frames: int = DEFAULT_CHUNK_FRAMES

    def __post_init__(self):
        # Accept numpy scalars from callers (types only: values are checked by validate()).
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool):
                continue
            if f.name == "frame_rate" and isinstance(v, numbers.Real) and not isinstance(v, int):
                setattr(self, f.name, float(v))
            elif f.type in ("int", "float") and isinstance(v, numbers.Integral) and type(v) is not int:
                setattr(self, f.name, int(v))

    @property
    def num_chunks(self) -> int:
        return -(-self.num_frames // self.chunk_frames)

    @property
    def num_symbols(self) -> int:
        return self.channels * self.num_codebooks * self.num_frames

    @property
    def bits_per_code(self) -> int:
        """Bits per code with plain packing: ceil(log2(codebook_size))."""
        return entropy.bits_per_code(self.codebook_size)

    @property
    def duration(self) -> float:
        """Seconds of audio the codes cover (num_frames / frame_rate)."""
        return self.num_frames / self.frame_rate

    def validate(self) -> None:
        """Raise :class:`TokenFileError` unless every field has the right type and a sane value."""

        def fail(name, rule):
            raise TokenFileError(f"token file header field '{name}' must be {rule}, got {_show(getattr(self, name))}")

        def check_int(name, lo, hi):
            v = getattr(self, name)
            if type(v) is not int or not lo <= v <= hi:  # exactly int: True is not a sample rate
                fail(name, f"an integer in [{lo}, {hi}]")

        if not isinstance(self.model, str) or not 1 <= len(self.model) <= 256 or any(
            unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in self.model
        ):
            fail("model", "a name of 1-256 printable characters")
        if not isinstance(self.model_hash, str) or not re.fullmatch(r"[0-9a-fA-F]{1,128}", self.model_hash):
            fail("model_hash", "a string of 1-128 hex digits")
        check_int("sample_rate", 1, MAX_SAMPLE_RATE)
        fr = self.frame_rate
        if type(fr) not in (int, float) or not math.isfinite(fr) or not 0 < fr <= self.sample_rate:
            fail("frame_rate", f"a number in (0, sample_rate={self.sample_rate}]")
        check_int("num_codebooks", 1, MAX_CODEBOOKS)
        check_int("codebook_size", 2, MAX_CODEBOOK_SIZE)
        check_int("channels", 1, MAX_CHANNELS)
        check_int("num_frames", 0, MAX_SYMBOLS)
        if self.num_symbols > MAX_SYMBOLS:
            raise TokenFileError(
                f"token file claims {self.channels}x{self.num_codebooks}x{self.num_frames} = "
                f"{self.num_symbols} codes, more than the limit of {MAX_SYMBOLS}"
            )
        check_int("length", 0, math.ceil((self.num_frames + 1) * self.sample_rate / fr))
        if self.coding not in CODINGS:
            fail("coding", "'range', 'context' or 'packed'")
        check_int("chunk_frames", 1, MAX_CHUNK_FRAMES)

    def to_json(self) -> str:
        """The validated header as compact JSON (what :func:`pack` writes)."""
        self.validate()
        fields_ = asdict(self)
        fields_["frame_rate"] = float(self.frame_rate)
        return json.dumps(fields_, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> TokenFileHeader:
        """Parse and validate a header; any problem raises :class:`TokenFileError`."""
        try:
            if isinstance(text, (bytes, bytearray, memoryview)):
                text = bytes(text).decode("utf-8")
            obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except TokenFileError:
            raise
        except RecursionError:
            raise TokenFileError("token file header is not valid JSON (nested too deeply)") from None
        except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenFileError(f"token file header is not valid UTF-8 JSON ({reason[:80]})") from None
        if not isinstance(obj, dict):
            raise TokenFileError("token file header must be a JSON object")
        names = [f.name for f in fields(cls)]
        for name in names:
            if name not in obj:
                raise TokenFileError(f"token file header lacks the field '{name}'")
        for key in obj:
            if key not in names:
                raise TokenFileError(f"token file header has an unknown field {_show(key)}")
        header = cls(**obj)
        header.validate()
        header.frame_rate = float(header.frame_rate)
        return header


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise TokenFileError(f"token file header repeats the field {_show(key)}")
        obj[key] = value
    return obj


def _no_constant(name):
    raise TokenFileError(f"token file header holds {name}, which is not a valid number")


def _as_bytes(data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"token file data must be bytes, not {type(data).__name__}")


def _parse_header(data: bytes) -> tuple[TokenFileHeader, int]:
    """The header and the offset of the first chunk."""
    if data[: len(MAGIC)] != MAGIC[: min(len(data), len(MAGIC))]:
        raise TokenFileError("not a tokenwave token file (bad magic bytes)")
    if len(data) < _PREAMBLE.size:
        raise TokenFileError(f"token file is truncated: {len(data)} bytes, less than its fixed preamble")
    _, version, header_len = _PREAMBLE.unpack_from(data)
    if version != VERSION:
        raise TokenFileError(f"unsupported token file version {version} (this tokenwave reads version {VERSION})")
    if not 1 <= header_len <= MAX_HEADER_BYTES:
        raise TokenFileError(f"token file header length {header_len} is outside 1..{MAX_HEADER_BYTES}")
    end = _PREAMBLE.size + header_len
    if len(data) < end + _CRC.size:
        raise TokenFileError(f"token file is truncated inside its header ({len(data)} of {end + _CRC.size} bytes)")
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise TokenFileError("token file header checksum mismatch (the file is corrupted)")
    return TokenFileHeader.from_json(data[_PREAMBLE.size : end]), end + _CRC.size


def read_header(data: bytes) -> TokenFileHeader:
    """The validated header of a token file (only the first bytes, through the header CRC, are needed)."""
    return _parse_header(_as_bytes(data))[0]


# --------------------------------------------------------------------------------------------
# Chunks


@dataclass(frozen=True)
class ChunkInfo:
    """Where one chunk sits in a token file."""

    index: int
    frame_offset: int  # first frame it holds
    num_frames: int
    offset: int  # byte offset of its 12-byte header in the file
    payload_bytes: int

    @property
    def size(self) -> int:
        """Bytes the chunk takes in the file, header and CRC included."""
        return _CHUNK_OVERHEAD + self.payload_bytes


def _packed_payload_bytes(header: TokenFileHeader, frames: int) -> int:
    return -(-header.channels * header.num_codebooks * frames * header.bits_per_code // 8)


def _scan(data: bytes, header: TokenFileHeader, offset: int, verify_crc: bool) -> list[ChunkInfo]:
    """Check the chunk structure against the header and the bytes present; list the chunks."""
    n = header.num_chunks
    room = len(data) - offset
    per_frame = header.channels * header.num_codebooks
    if n * _CHUNK_OVERHEAD > room:
        raise TokenFileError(f"token file is truncated: {n} chunks need more than the {room} bytes left")
    if header.coding == "packed" and n:
        last_frames = header.num_frames - (n - 1) * header.chunk_frames
        need = n * _CHUNK_OVERHEAD + _packed_payload_bytes(header, last_frames)
        need += (n - 1) * _packed_payload_bytes(header, header.chunk_frames)
        if need > room:
            raise TokenFileError(f"token file is truncated: its codes need {need} bytes, {room} are left")
    elif header.coding in RANGE_CODINGS and header.num_symbols > 8 * room + entropy.SLACK_BITS * n:
        raise TokenFileError(f"token file claims {header.num_symbols} codes, more than its {len(data)} bytes can hold")

    out = []
    pos = offset
    for i in range(n):
        if pos + _CHUNK.size > len(data):
            raise TokenFileError(f"token file is truncated inside the header of chunk {i}")
        index, frames, size = _CHUNK.unpack_from(data, pos)
        end = pos + _CHUNK.size + size
        if end + _CRC.size > len(data):
            raise TokenFileError(f"token file is truncated inside chunk {i} ({size} payload bytes claimed)")
        if verify_crc:
            _check_crc(data, pos, end, i)
        want = header.chunk_frames if i < n - 1 else header.num_frames - (n - 1) * header.chunk_frames
        if index != i:
            raise TokenFileError(f"chunk {i} of the token file is labelled {index} (chunks out of order)")
        if frames != want:
            raise TokenFileError(f"chunk {i} of the token file holds {frames} frames, the header implies {want}")
        if header.coding == "packed":
            if size != _packed_payload_bytes(header, frames):
                raise TokenFileError(
                    f"chunk {i} payload is {size} bytes, packed codes need {_packed_payload_bytes(header, frames)}"
                )
        elif size % 4:
            raise TokenFileError(f"chunk {i} payload is {size} bytes, not a whole number of 32-bit words")
        elif per_frame * frames > entropy.max_symbols(size):
            raise TokenFileError(f"chunk {i} claims {per_frame * frames} codes, more than its {size} bytes can hold")
        out.append(ChunkInfo(i, i * header.chunk_frames, frames, pos, size))
        pos = end + _CRC.size
    if pos != len(data):
        raise TokenFileError(f"token file has {len(data) - pos} unexpected bytes after its last chunk")
    return out


def _check_crc(data: bytes, start: int, end: int, i: int) -> None:
    (crc,) = _CRC.unpack_from(data, end)
    if zlib.crc32(data[start:end]) != crc:
        raise TokenFileError(f"chunk {i} of the token file fails its checksum (the file is corrupted)")


def chunks(data: bytes) -> list[ChunkInfo]:
    """Validate a token file's structure and checksums (without decoding) and list its chunks."""
    data = _as_bytes(data)
    header, offset = _parse_header(data)
    return _scan(data, header, offset, verify_crc=True)


def chunk_sizes(data: bytes) -> list[int]:
    """Payload bytes of each chunk (see :func:`bits_per_second`)."""
    return [c.payload_bytes for c in chunks(data)]


def bits_per_second(header: TokenFileHeader, num_bytes: int) -> float:
    """Bitrate of ``num_bytes`` bytes spread over the file's duration (0.0 for an empty file).

    ``bits_per_second(h, sum(chunk_sizes(data)))`` is the payload rate actually used;
    ``bits_per_second(h, len(data))`` includes headers and checksums."""
    return 8.0 * num_bytes / header.duration if header.num_frames else 0.0


def packed_bits_per_second(header: TokenFileHeader) -> float:
    """Bitrate of plain packing (ceil(log2 N) bits per code, e.g. 10 for N = 1024)."""
    return header.channels * header.num_codebooks * header.bits_per_code * header.frame_rate


# --------------------------------------------------------------------------------------------
# Payload coding


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Flat non-negative ints < 2**bits -> bytes, ``bits`` per value, MSB first, zero padded."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    parts = []
    for start in range(0, values.size, _BLOCK):
        block = values[start : start + _BLOCK].astype(np.uint32)
        parts.append(np.packbits(((block[:, None] >> shifts) & 1).astype(np.uint8)).tobytes())
    return b"".join(parts)


def _unpack_bits(payload: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`_pack_bits`; ``payload`` must be exactly ceil(count*bits/8) bytes."""
    buf = np.frombuffer(payload, dtype=np.uint8)
    pad = 8 * buf.size - count * bits
    if pad and int(buf[-1]) & ((1 << pad) - 1):
        raise ValueError("padding bits after the last code are not zero")
    weights = (1 << np.arange(bits - 1, -1, -1, dtype=np.int64)).astype(np.int64)
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, _BLOCK):
        m = min(_BLOCK, count - start)
        first = start * bits // 8
        chunk_bits = np.unpackbits(buf[first : first + -(-m * bits // 8)])[: m * bits]
        out[start : start + m] = chunk_bits.reshape(m, bits).astype(np.int64) @ weights
    return out


def _unigram(tables) -> np.ndarray:
    """The ``[K_max, N]`` probability table of ``tables`` (an array, or ContextTables)."""
    return tables.unigram if isinstance(tables, ContextTables) else tables


def _models_for(header: TokenFileHeader, tables):
    """What the chunks of ``header`` are decoded with: None (packed), the per-level models
    (range) or the context tables (context); :class:`TokenFileError` if the tables are missing
    or do not fit."""
    if header.coding == "packed":
        return None
    if tables is None or (header.coding == "context" and not isinstance(tables, ContextTables)):
        kind = "context" if header.coding == "context" else "probability"
        raise TokenFileError(
            f"token file is {header.coding} coded: decoding it needs the {kind} tables of model '{header.model}'"
        )
    try:
        return coding_models(header, tables)
    except ValueError as e:
        raise TokenFileError(f"probability tables do not fit this token file: {e}") from None


def _decode_chunk(data: bytes, header: TokenFileHeader, chunk: ChunkInfo, models, verify_crc: bool) -> np.ndarray:
    start = chunk.offset + _CHUNK.size
    end = start + chunk.payload_bytes
    if verify_crc:
        _check_crc(data, chunk.offset, end, chunk.index)
    payload = data[start:end]
    C, K, F = header.channels, header.num_codebooks, chunk.num_frames
    try:
        if header.coding == "range":
            flat = np.stack(entropy.decode_symbols(payload, [C * F] * K, models)).astype(np.int64)
        elif header.coding == "context":
            flat = context_coding.decode_block(payload, (K, C, F), models)
        else:
            flat = _unpack_bits(payload, K * C * F, header.bits_per_code)
    except ValueError as e:
        raise TokenFileError(f"chunk {chunk.index} of the token file: {e}") from None
    if flat.size and int(flat.max()) >= header.codebook_size:
        raise TokenFileError(
            f"chunk {chunk.index} of the token file holds code {int(flat.max())}, "
            f"outside the codebook of size {header.codebook_size}"
        )
    return flat.reshape(K, C, F).transpose(1, 0, 2)


def preamble(header: TokenFileHeader) -> bytes:
    """Magic, version, header JSON and header CRC: everything before the first chunk."""
    header_json = header.to_json().encode("utf-8")
    if len(header_json) > MAX_HEADER_BYTES:
        raise TokenFileError(f"token file header would be {len(header_json)} bytes, over {MAX_HEADER_BYTES}")
    start = _PREAMBLE.pack(MAGIC, VERSION, len(header_json)) + header_json
    return start + _CRC.pack(zlib.crc32(start))


def coding_models(header: TokenFileHeader, tables):
    """What ``header``'s chunks are coded with: None (packed), the range coder's per-level
    models (range), or coding-safe :class:`ContextTables` (context). ``tables``: the model's
    ``[K_max, N]`` probability array, or its ContextTables (which serve both entropy codings).
    ``ValueError`` if they are missing or unusable."""
    if header.coding == "packed":
        return None
    if tables is None:
        raise ValueError(f"coding={header.coding!r} needs the model's probability tables")
    K, N = header.num_codebooks, header.codebook_size
    if header.coding == "range":
        return entropy.make_models(entropy.coding_table(_unigram(tables), K, N))
    if not isinstance(tables, ContextTables):
        raise ValueError("coding='context' needs the model's context tables (a model with context_levels > 0)")  # noqa: TRY004 - callers expect ValueError
    entropy.coding_table(tables.unigram, K, N)  # shape checks: enough levels, the right codebook size
    return tables


def encode_chunk(index: int, codes: np.ndarray, header: TokenFileHeader, models) -> bytes:
    """Chunk ``index`` of a file: codes ``[C, K, F]`` (already checked) -> header, payload and CRC."""
    C, K, F = codes.shape
    block = codes.transpose(1, 0, 2)  # [K, C, F], codebook-major
    if header.coding in RANGE_CODINGS:
        if header.coding == "range":
            payload = entropy.encode_symbols(block.reshape(K, -1), models)
        else:
            payload = context_coding.encode_block(block, models)
        if C * K * F > entropy.max_symbols(len(payload)):  # cannot happen with coding_table's cap
            raise RuntimeError(f"range coder produced too few bytes for chunk {index}; please report this")
    else:
        payload = _pack_bits(block.reshape(-1), header.bits_per_code)
    chunk = _CHUNK.pack(index, F, len(payload)) + payload
    return chunk + _CRC.pack(zlib.crc32(chunk))


def _check_codes(codes, C: int, K: int, T: int | None, N: int) -> np.ndarray:
    if hasattr(codes, "detach"):  # torch.Tensor, without importing torch
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim != 3 or codes.shape[:2] != (C, K) or (T is not None and codes.shape[2] != T):
        want = f"[{C}, {K}, {T}]" if T is not None else f"[{C}, {K}, t]"
        raise ValueError(f"codes have shape {tuple(codes.shape)}, the header says [C, K, T] = {want}")
    if codes.dtype.kind not in "iu":
        raise ValueError(f"codes must be integers, not {codes.dtype}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= N):
        raise ValueError(f"codes must lie in [0, {N}), got [{int(codes.min())}, {int(codes.max())}]")
    return codes


def pack(codes, header: TokenFileHeader, probabilities: np.ndarray | ContextTables | None = None) -> bytes:
    """Codes ``[C, K, T]`` (numpy or torch ints) -> token file bytes, coded as ``header.coding``.

    ``coding="range"`` needs the model's probability table ``[K_max, codebook_size]`` (or its
    :class:`ContextTables`), ``coding="context"`` its ContextTables.
    Raises :class:`TokenFileError` for an invalid header and ``ValueError`` for codes that do
    not match it or a missing/unusable table."""
    start = preamble(header)
    C, K, T, N = header.channels, header.num_codebooks, header.num_frames, header.codebook_size
    codes = _check_codes(codes, C, K, T, N)
    models = coding_models(header, probabilities)
    parts = [start]
    for i in range(header.num_chunks):
        t0 = i * header.chunk_frames
        parts.append(encode_chunk(i, codes[:, :, t0 : t0 + header.chunk_frames], header, models))
    return b"".join(parts)


class StreamPacker:
    """Token files written with bounded memory: codes ``[C, K, t]`` pushed in pieces of any size.

    A header needs the total frame count and length, which a stream only knows at its end, so
    complete chunks are coded at once and spooled to anonymous temporary files (one per coding
    tried: "auto" compression codes both and keeps the smaller); :meth:`write_to` then writes
    the header followed by the chosen coding's chunks. The bytes equal :func:`pack` of all the
    codes at once. ``header`` gives every field but ``num_frames``, ``length`` and ``coding``.
    """

    def __init__(self, header: TokenFileHeader, probabilities=None, codings=("range", "packed")):
        self.header = replace(header, num_frames=0, length=0)
        self.header.validate()
        self.models = {c: coding_models(replace(self.header, coding=c), probabilities) for c in codings}
        # Anonymous (unlinked at once): nothing is left behind if the process is killed.
        self.spools = {c: tempfile.TemporaryFile() for c in codings}  # noqa: SIM115 - closed by close()
        self.pending: list[np.ndarray] = []  # codes of the chunk being filled
        self.pending_frames = 0
        self.num_frames = 0
        self.num_chunks = 0

    def push(self, codes) -> None:
        """Append codes ``[C, K, t]``; every chunk they complete is coded and spooled."""
        h = self.header
        codes = _check_codes(codes, h.channels, h.num_codebooks, None, h.codebook_size)
        if codes.shape[2]:
            self.pending.append(codes)
            self.pending_frames += codes.shape[2]
            self.num_frames += codes.shape[2]
        while self.pending_frames >= h.chunk_frames:
            self._spool(h.chunk_frames)

    def _spool(self, frames: int) -> None:
        codes = np.concatenate(self.pending, axis=2)
        for coding, spool in self.spools.items():
            spool.write(encode_chunk(self.num_chunks, codes[:, :, :frames], replace(self.header, coding=coding),
                                     self.models[coding]))
        self.num_chunks += 1
        rest = codes[:, :, frames:]
        self.pending, self.pending_frames = ([rest] if rest.shape[2] else []), rest.shape[2]

    def finish(self, length: int) -> None:
        """End of the codes: spool the last, shorter chunk; ``length`` is the signal's length in samples."""
        if self.pending_frames:
            self._spool(self.pending_frames)
        self.header = replace(self.header, num_frames=self.num_frames, length=length)
        self.header.validate()

    def size(self, coding: str) -> int:
        """Bytes the file would take with ``coding`` (after :meth:`finish`)."""
        return len(preamble(replace(self.header, coding=coding))) + self.spools[coding].tell()

    def write_to(self, out, coding: str) -> int:
        """Write the whole file with ``coding`` to the binary file ``out``; returns its size in bytes."""
        out.write(preamble(replace(self.header, coding=coding)))
        spool = self.spools[coding]
        spool.seek(0)
        shutil.copyfileobj(spool, out, 1 << 20)
        return self.size(coding)

    def close(self) -> None:
        for spool in self.spools.values():
            spool.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_chunks(data: bytes, probabilities=None) -> tuple[TokenFileHeader, Iterator[tuple[int, np.ndarray]]]:
    """Validate a whole token file (structure, sizes, every checksum), then decode it chunk by
    chunk: -> (header, iterator of (first frame, codes ``[C, K, F]`` int64)).

    Memory stays at one chunk's codes. Problems found while decoding a chunk (an invalid range
    coded stream, codes outside the codebook) raise :class:`TokenFileError` from the iterator."""
    data = _as_bytes(data)
    header, offset = _parse_header(data)
    listed = _scan(data, header, offset, verify_crc=True)  # sizes checked against the bytes present
    models = _models_for(header, probabilities)

    def decoded():
        for chunk in listed:
            yield chunk.frame_offset, _decode_chunk(data, header, chunk, models, verify_crc=False)

    return header, decoded()


def unpack(data: bytes, probabilities: np.ndarray | ContextTables | None = None) -> tuple[TokenFileHeader, np.ndarray]:
    """Token file bytes -> (header, codes ``[C, K, T]`` int64). Range coded files need the
    model's probability table (or ContextTables), context coded ones its ContextTables. Every
    problem with the file raises :class:`TokenFileError`."""
    header, decoded = decode_chunks(data, probabilities)
    codes = np.empty((header.channels, header.num_codebooks, header.num_frames), dtype=np.int64)
    for frame, chunk_codes in decoded:
        codes[:, :, frame : frame + chunk_codes.shape[2]] = chunk_codes
    return header, codes


def unpack_chunk(data: bytes, index: int, probabilities: np.ndarray | ContextTables | None = None) -> tuple[int, np.ndarray]:
    """Decode chunk ``index`` alone -> (its first frame, codes ``[C, K, F]`` int64).

    Only that chunk's payload and checksum are read; the others need only intact chunk headers."""
    data = _as_bytes(data)
    header, offset = _parse_header(data)
    listed = _scan(data, header, offset, verify_crc=False)
    if not 0 <= index < len(listed):
        raise IndexError(f"chunk {index} out of range: the token file has {len(listed)} chunks")
    chunk = listed[index]
    codes = _decode_chunk(data, header, chunk, _models_for(header, probabilities), verify_crc=True)
    return chunk.frame_offset, np.ascontiguousarray(codes)


# --------------------------------------------------------------------------------------------
# Files


def write_token_file(path, data: bytes, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_output`).

    Refuses to replace an existing file unless ``overwrite``; raises :class:`TokenFileError`."""
    data = _as_bytes(data)
    with atomic_output(path, overwrite, "token file", TokenFileError) as f:
        f.write(data)


def read_token_file(path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a token file, refusing files over ``max_bytes``; raises :class:`TokenFileError`."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise TokenFileError(f"{path} is {size} bytes, over the {max_bytes}-byte limit for token files")
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise TokenFileError(f"cannot read token file {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise TokenFileError(f"{path} is over the {max_bytes}-byte limit for token files")
    return data
