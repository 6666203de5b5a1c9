"""Fuzzing the token-file reader and decoder: ``tokenwave fuzz-tokens``.

Token files are untrusted input, so every byte string must either decode or raise the project's
own error (:class:`codec.errors.TokenwaveError`) with a one-line message: never another
exception, a crash, a hang, or a large allocation. This module checks that at scale, with no
dependency beyond numpy (atheris is not needed):

* **Cases.** Case ``i`` of seed ``s`` is a deterministic function of ``(s, i)``: random bytes;
  byte-level mutations of valid files (bit flips, overwrites, insertions, deletions, duplicated
  ranges, truncation, splices of two files), which the CRCs mostly catch; structural mutations
  whose CRCs are recomputed (hostile header values, raw JSON edits, chunk indices, frame counts,
  sizes and payloads changed, chunks dropped, repeated or swapped), which reach the decoders;
  and valid files, which must decode to exactly the codes they were made from.
* **Checks** (:func:`check_case`): ``tokenfile.read_header``, ``chunks``, ``unpack``,
  ``decode_chunks``, ``unpack_chunk`` and the decompressor's streaming decoder
  (:func:`codec.files.decode_stream`) through a tiny random codec with context coding, whose
  probability and context tables are skewed like a trained model's so range and context coding
  are exercised. Whatever succeeds must be
  consistent (same codes every way, ``header.length`` samples of finite audio).
* **Harness** (:func:`run_fuzz`): the cases run in a worker process; the parent waits at most
  ``timeout`` seconds for each, kills a worker that hangs or notices one that crashes, records
  the case and starts a new worker after it. The worker's address space is capped
  (``RLIMIT_AS``) and its peak resident memory is checked after every case against
  ``max_mb`` above its level after warm-up.

A failing case is reproduced with ``tokenwave fuzz-tokens --seed S --start I --count 1``, and
``--save-failures DIR`` writes the failing files.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import resource
import struct
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from codec import context_coding, entropy
from codec import tokenfile as tf
from codec.context_coding import ContextTables
from codec.errors import TokenwaveError

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_MB = 256
BATCH = 200  # cases per request to the worker

# --------------------------------------------------------------------------------------------
# The codec and the valid files the mutations start from


@dataclass
class Context:
    """What every case is checked against: a tiny codec, its table and the valid seed files."""

    model: object
    table: ContextTables  # the model's tables (serve range and context coding)
    other_table: ContextTables  # different tables of the same shapes: valid streams that decode to garbage
    corpus: list[tuple[bytes, np.ndarray]] = field(default_factory=list)  # (file, codes [C, K, T])


def zipf_counts(rng: np.random.Generator, K: int, N: int, a: float = 1.2) -> np.ndarray:
    """Per-codebook code counts ``[K, N]`` shaped like a trained codec's (Zipf, shuffled ranks)."""
    return np.stack([rng.permutation(1e6 / np.arange(1, N + 1) ** a) for _ in range(K)])


def skewed_counts(rng: np.random.Generator, K: int, N: int, levels: int, a: float = 1.2):
    """Zipf-shaped ``(code_counts [K, N], transition_counts [N + 1, N], pair_counts [L - 1, N, N])``."""
    return (zipf_counts(rng, K, N, a), zipf_counts(rng, N + 1, N, a),
            zipf_counts(rng, (levels - 1) * N, N, a).reshape(levels - 1, N, N))


def make_context() -> Context:
    """The tiny 16 kHz test codec with context coding of two levels and skewed entropy tables,
    and a corpus of valid files."""
    import torch

    from codec.config import tiny
    from codec.model import CodecModel, token_fingerprint

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = CodecModel(replace(tiny(16_000), context_levels=2)).prepare_for_inference()
    rng = np.random.default_rng(20240501)
    K, N = model.max_codebooks, model.codebook_size
    counts = skewed_counts(rng, K, N, 2)
    for buffer, value in zip((model.code_counts, model.transition_counts, model.pair_counts), counts, strict=True):
        buffer.copy_(torch.from_numpy(value))
    model._fingerprint = token_fingerprint(model.state_dict())
    other = ContextTables.from_counts(*skewed_counts(rng, K, N, 2, 1.5))
    ctx = Context(model, model.context_tables(), other)
    shapes = [  # (C, K, T, chunk_frames)
        (1, 1, 2, 1), (1, 3, 7, 3), (2, 12, 5, 2), (1, 12, 60, 16), (2, 4, 41, 250), (1, 2, 300, 64),
        (1, 6, 0, 5), (1, 12, 2, 250), (2, 1, 9, 4),
    ]
    for C, K, T, chunk_frames in shapes:
        for coding in tf.CODINGS:
            ctx.corpus.append(valid_file(ctx, rng, C, K, T, chunk_frames, coding))
    return ctx


def valid_file(ctx: Context, rng, C: int, K: int, T: int, chunk_frames: int, coding: str) -> tuple[bytes, np.ndarray]:
    """A token file the context's codec decodes, with codes drawn from its table."""
    model = ctx.model
    codes = np.empty((C, K, T), dtype=np.int64)
    for k in range(K):
        codes[:, k] = rng.choice(model.codebook_size, size=(C, T), p=ctx.table.unigram[k])
    most = max(0, T - model.overlap + 1) * model.hop
    header = tf.TokenFileHeader(
        model=model.name, model_hash=model.fingerprint, sample_rate=model.sample_rate,
        frame_rate=float(model.frame_rate), num_codebooks=K, codebook_size=model.codebook_size,
        num_frames=T, length=int(rng.integers(max(1, most - model.hop), most + 1)) if most else 0,
        channels=C, coding=coding, chunk_frames=chunk_frames,
    )
    return tf.pack(codes, header, ctx.table), codes


# --------------------------------------------------------------------------------------------
# Cases


def split(data: bytes) -> tuple[dict, list[list]]:
    """A valid file -> (header dict, [[index, frames, payload], ...])."""
    header = json.loads(tf.read_header(data).to_json())
    return header, [
        [c.index, c.num_frames, data[c.offset + 12 : c.offset + 12 + c.payload_bytes]] for c in tf.chunks(data)
    ]


def assemble(header, chunk_list, version: int = tf.VERSION, magic: bytes = tf.MAGIC) -> bytes:
    """A token file with valid CRCs from a header (dict, str or bytes) and ``[index, frames, payload]``
    chunks, whatever their values (indices and frame counts are taken modulo 2**32)."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8", "surrogatepass")
    start = magic + struct.pack("<HI", version % 2**16, len(header) % 2**32) + header
    parts = [start, struct.pack("<I", zlib.crc32(start))]
    for index, frames, payload in chunk_list:
        chunk = struct.pack("<III", index % 2**32, frames % 2**32, len(payload)) + payload
        parts += [chunk, struct.pack("<I", zlib.crc32(chunk))]
    return b"".join(parts)


INTERESTING_INTS = [-(2**63), -(2**31), -1, 0, 1, 2, 3, 7, 16, 17, 64, 65, 255, 256, 320, 1023, 1024, 1025,
                    16_000, 65_535, 65_536, 65_537, 768_000, 768_001, 2**20, 2**20 + 1, 2**27, 2**27 + 1,
                    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63, 2**64, 10**30]
INTERESTING_VALUES = [None, True, False, 0.0, -0.0, 0.5, 49.999, 50.0, 1e-300, 1e308, -1e308, "", "x" * 300,
                      "\x00", "\u202e", "range", "packed", "context", "RANGE", "tiny-16k", "0" * 129, "g", [], [1], {}, {"a": 1}]


def hostile_value(rng):
    """A value to put in a header field: an edge-case integer, a near miss, or the wrong type."""
    pick = rng.random()
    if pick < 0.5:
        return int(rng.choice(INTERESTING_INTS)) + int(rng.integers(-1, 2)) * (rng.random() < 0.3)
    if pick < 0.8:
        return INTERESTING_VALUES[rng.integers(len(INTERESTING_VALUES))]
    return int(rng.integers(-(2**40), 2**40))


def mutate_header(rng, header: dict, model) -> dict | str:
    """Change one to three header fields (values, removal, unknown keys, consistent size edits), or
    return raw JSON text with a hostile edit."""
    header = dict(header)
    for _ in range(int(rng.integers(1, 4))):
        op = rng.random()
        names = sorted(header)
        if op < 0.45 and names:
            header[names[rng.integers(len(names))]] = hostile_value(rng)
        elif op < 0.55 and names:
            header.pop(names[rng.integers(len(names))])
        elif op < 0.6:
            header["extra" if rng.random() < 0.5 else ""] = 1
        elif op < 0.8:  # a plausible but inconsistent size: frames, length, chunking, codebooks
            name = ["num_frames", "length", "chunk_frames", "num_codebooks", "channels"][rng.integers(5)]
            if isinstance(header.get(name), int):
                header[name] = max(0, header[name] + int(rng.choice([-2, -1, 1, 2, 100, 10_000])))
        else:
            header["coding"] = str(rng.choice([c for c in tf.CODINGS if c != header.get("coding")]))
    if rng.random() < 0.15:
        text = json.dumps(header)
        edits = [
            lambda t: t.replace("}", ', "model": "x"}'),  # repeated key
            lambda t: t.replace("50.0", "NaN" if rng.random() < 0.5 else "1e999"),
            lambda t: t.replace("{", "{" + '"a": ' + "[" * 5000 + "]" * 5000 + ",", 1),
            lambda t: t[: rng.integers(len(t) + 1)],
            lambda t: t.replace('"', "'", 1),
            lambda t: t + "\x00",
            lambda t: "\ud800" + t,
        ]
        return edits[rng.integers(len(edits))](text)
    return header


def mutate_chunks(rng, chunk_list: list[list], ctx: Context, header: dict) -> list[list]:
    """Change one to three chunks: indices, frame counts, payload bytes or lengths, valid streams
    of random codes (range coded with another table, or packed codes beyond the codebook), or
    drop, repeat, swap and append whole chunks."""
    chunks = [list(c) for c in chunk_list]
    for _ in range(int(rng.integers(1, 4))):
        op = rng.random()
        if not chunks or op < 0.08:
            chunks.append([len(chunks), int(rng.integers(0, 300)), rng.bytes(int(rng.integers(0, 64)))])
            continue
        i = int(rng.integers(len(chunks)))
        index, frames, payload = chunks[i]
        if op < 0.2:
            chunks[i][0] = int(rng.choice([index + 1, index - 1, 2**32 - 1, rng.integers(0, 2**32)]))
        elif op < 0.35:
            chunks[i][1] = int(rng.choice([frames + 1, max(frames - 1, 0), 0, 2**32 - 1, 2**20, rng.integers(0, 2**32)]))
        elif op < 0.55 and payload:
            buf = bytearray(payload)
            for _ in range(int(rng.integers(1, 5))):
                buf[rng.integers(len(buf))] = int(rng.integers(256))
            chunks[i][2] = bytes(buf)
        elif op < 0.65:
            cut = int(rng.integers(0, len(payload) + 1))
            chunks[i][2] = payload[:cut] + rng.bytes(int(rng.choice([0, 0, 1, 4, 8, rng.integers(0, 100)])))
        elif op < 0.75:
            chunks[i][2] = rng.bytes(len(payload))
        elif op < 0.85:
            C, K = header.get("channels", 1), header.get("num_codebooks", 1)
            if isinstance(C, int) and isinstance(K, int) and 0 < C * K <= 1024 and 0 < frames <= 512:
                N = ctx.model.codebook_size
                if header.get("coding") == "packed":
                    bits = entropy.bits_per_code(N)
                    codes = rng.integers(0, 2**bits if rng.random() < 0.5 else N, C * K * frames)
                    chunks[i][2] = tf._pack_bits(codes, bits)
                elif K <= ctx.other_table.unigram.shape[0]:
                    codes = rng.integers(0, N, (K, C, frames))
                    if header.get("coding") == "context":
                        chunks[i][2] = context_coding.encode_block(codes, ctx.other_table)
                    else:
                        models = entropy.make_models(entropy.coding_table(ctx.other_table.unigram, K, N))
                        chunks[i][2] = entropy.encode_symbols(codes.reshape(K, -1), models)
        elif op < 0.9:
            chunks.pop(i)
        elif op < 0.95:
            chunks.insert(i, list(chunks[i]))
        else:
            j = int(rng.integers(len(chunks)))
            chunks[i], chunks[j] = chunks[j], chunks[i]
    return chunks


def mutate_bytes(rng, data: bytes, other: bytes) -> bytes:
    """One to four byte-level edits, CRCs left as they fall."""
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        op = rng.random()
        n = len(buf)
        if op < 0.3 and n:
            buf[rng.integers(n)] ^= 1 << int(rng.integers(8))
        elif op < 0.45 and n:
            buf[rng.integers(n)] = int(rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.integers(256)]))
        elif op < 0.55:
            buf[rng.integers(n + 1) :] = b""
        elif op < 0.62:
            buf += rng.bytes(int(rng.integers(1, 16)))
        elif op < 0.7:
            at = int(rng.integers(n + 1))
            buf[at:at] = rng.bytes(int(rng.integers(1, 16)))
        elif op < 0.78 and n:
            at = int(rng.integers(n))
            del buf[at : at + int(rng.integers(1, 32))]
        elif op < 0.86 and n:
            at, to = int(rng.integers(n)), int(rng.integers(n + 1))
            buf[to:to] = buf[at : at + int(rng.integers(1, 64))]
        else:
            buf = buf[: rng.integers(n + 1)] + other[rng.integers(len(other) + 1) :]
    return bytes(buf)


def make_case(ctx: Context, seed: int, index: int) -> tuple[str, bytes, np.ndarray | None]:
    """Case ``index`` of ``seed``: (kind, file bytes, expected codes for a valid file or None)."""
    rng = np.random.default_rng([seed, index])
    pick = rng.random()
    data, codes = ctx.corpus[rng.integers(len(ctx.corpus))]
    if pick < 0.08:
        return "random", rng.bytes(int(rng.integers(0, 400))), None
    if pick < 0.12:
        prefix = [tf.MAGIC, tf.MAGIC + b"\x01\x00", data[: rng.integers(len(data) + 1)]][rng.integers(3)]
        return "random-after-prefix", prefix + rng.bytes(int(rng.integers(0, 200))), None
    if pick < 0.42:
        other = ctx.corpus[rng.integers(len(ctx.corpus))][0]
        return "bytes", mutate_bytes(rng, data, other), None
    if pick < 0.9:
        header, chunk_list = split(data)
        kind = rng.random()
        if kind < 0.35:
            return "header", assemble(mutate_header(rng, header, ctx.model), chunk_list), None
        if kind < 0.85:
            return "chunks", assemble(header, mutate_chunks(rng, chunk_list, ctx, header)), None
        if kind < 0.9:
            version = int(rng.choice([0, 2, 2**16 - 1]))
            return "version", assemble(header, chunk_list, version=version), None
        new_header = mutate_header(rng, header, ctx.model)
        return "both", assemble(new_header, mutate_chunks(rng, chunk_list, ctx, header)), None
    if pick < 0.95:
        return "valid", data, codes
    C, K = int(rng.integers(1, 3)), int(rng.integers(1, ctx.model.max_codebooks + 1))
    T, chunk_frames = int(rng.integers(0, 400)), int(rng.integers(1, 300))
    data, codes = valid_file(ctx, rng, C, K, T, chunk_frames, tf.CODINGS[rng.integers(len(tf.CODINGS))])
    return "valid", data, codes


# --------------------------------------------------------------------------------------------
# Checks


class FuzzFailure(Exception):
    """A case broke a rule: an exception that is not ours, a bad message, or inconsistent results."""


def _ours(error: BaseException, step: str) -> None:
    """Raise :class:`FuzzFailure` unless ``error`` is a project error with a one-line message."""
    if not isinstance(error, TokenwaveError):
        raise FuzzFailure(f"{step}: {type(error).__name__}: {str(error)[:200]!r}") from error
    message = str(error)
    if not message or "\n" in message or "\r" in message:
        raise FuzzFailure(f"{step}: {type(error).__name__} without a one-line message: {message[:200]!r}")


def check_case(ctx: Context, data: bytes, expected: np.ndarray | None) -> str:
    """Run ``data`` through the reader and the decoder; returns the outcome ("rejected": the reader
    refused it, "codes": read but not decoded by the codec, "decoded"). Raises :class:`FuzzFailure`."""
    from codec.files import decode_stream

    table = ctx.table
    results = {}
    steps = {
        "read_header": lambda: tf.read_header(data),
        "chunks": lambda: tf.chunks(data),
        "unpack": lambda: tf.unpack(data, table),
        "decode_chunks": lambda: [c for _, c in tf.decode_chunks(data, table)[1]],
    }
    for step, run in steps.items():
        try:
            results[step] = run()
        except Exception as error:  # noqa: BLE001 - judged by _ours
            _ours(error, step)
    if results.get("chunks"):
        for i in sorted({0, len(results["chunks"]) - 1}):
            try:
                tf.unpack_chunk(data, i, table)
            except Exception as error:  # noqa: BLE001
                _ours(error, "unpack_chunk")
    if "unpack" in results:
        header, codes = results["unpack"]
        if codes.shape != (header.channels, header.num_codebooks, header.num_frames):
            raise FuzzFailure(f"unpack: codes {codes.shape} do not match the header")
        if codes.size and not (0 <= codes.min() and codes.max() < header.codebook_size):
            raise FuzzFailure("unpack: codes outside the codebook")
        pieces = results.get("decode_chunks")
        whole = np.concatenate(pieces, axis=2) if pieces else np.zeros_like(codes)
        if pieces is None or not np.array_equal(whole, codes):
            raise FuzzFailure("decode_chunks disagrees with unpack")
    if expected is not None and ("unpack" not in results or not np.array_equal(results["unpack"][1], expected)):
        raise FuzzFailure("a valid file did not give back its codes")

    try:
        header, blocks = decode_stream(ctx.model, data)
        samples = 0
        for block in blocks:
            if block.ndim != 2 or block.shape[0] != header.channels or not np.isfinite(block).all():
                raise FuzzFailure(f"decoder gave a bad block {block.shape}")
            samples += block.shape[1]
    except FuzzFailure:
        raise
    except Exception as error:  # noqa: BLE001
        _ours(error, "decode_stream")
        if expected is not None:
            raise FuzzFailure(f"a valid file did not decode: {error}") from None
        return "codes" if "unpack" in results else "rejected"
    if samples != header.length:
        raise FuzzFailure(f"decoder gave {samples} samples, the header says {header.length}")
    if "unpack" not in results:
        raise FuzzFailure("the decoder accepted a file the reader refused")
    return "decoded"


# --------------------------------------------------------------------------------------------
# Harness


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _vm_size() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _resolve(check: str):
    module, _, name = check.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker(conn, seed: int, check: str, max_mb: float, environ: dict) -> None:
    """Worker process: build the context, then run the case ranges the parent sends."""
    import torch

    os.environ.clear()  # the caller's environment now, not the fork server's from its start
    os.environ.update(environ)
    torch.set_num_threads(1)
    run_check = _resolve(check)
    ctx = make_context()
    for data, codes in ctx.corpus[:2]:
        run_check(ctx, data, codes)  # warm-up: lazy initialisation is not charged to case 0
    baseline = _peak_rss_mb()
    vm = _vm_size()
    if vm is not None and hasattr(resource, "RLIMIT_AS"):  # a runaway allocation fails instead of swapping
        limit = vm + int(4 * max_mb * 2**20) + 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    conn.send(("ready", baseline))
    while True:
        request = conn.recv()
        if request is None:
            return
        for index in range(*request):
            kind, data, expected = make_case(ctx, seed, index)
            start = time.perf_counter()
            try:
                outcome, problem = run_check(ctx, data, expected), None
            except FuzzFailure as failure:
                outcome, problem = "failed", str(failure)
            except MemoryError:
                outcome, problem = "failed", "MemoryError: allocation beyond the address-space limit"
            except Exception as error:  # noqa: BLE001 - a broken check function is a failure too
                outcome, problem = "failed", f"{type(error).__name__}: {str(error)[:200]!r}"
            seconds = time.perf_counter() - start
            growth = _peak_rss_mb() - baseline
            if problem is None and growth > max_mb:
                outcome, problem = "failed", f"peak memory grew by {growth:.0f} MiB (bound {max_mb:g} MiB)"
            conn.send((index, kind, outcome, problem, seconds, growth))
            if outcome == "failed" and growth > max_mb:
                return  # the high-water mark stays up: let a fresh worker take over


@dataclass
class FuzzFailureRecord:
    index: int
    kind: str
    problem: str


@dataclass
class FuzzReport:
    """What :func:`run_fuzz` found."""

    seed: int
    start: int
    count: int
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    failures: list[FuzzFailureRecord] = field(default_factory=list)
    slowest: tuple[float, int] = (0.0, -1)
    peak_growth_mb: float = 0.0
    workers_started: int = 0

    @property
    def cases_per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        out = [
            (f"{self.count} cases (seed {self.seed}, cases {self.start}..{self.start + self.count - 1}) in "
             f"{self.seconds:.1f} s: {self.cases_per_second:.0f} cases/s"),
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            "kinds:    " + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items())),
            (f"slowest case: {self.slowest[0] * 1000:.1f} ms (case {self.slowest[1]}); "
             f"peak memory growth {self.peak_growth_mb:.1f} MiB; workers started {self.workers_started}"),
            f"failures: {len(self.failures)}",
        ]
        for f in self.failures[:20]:
            out.append(f"  case {f.index} ({f.kind}): {f.problem}")
            out.append(f"    reproduce: tokenwave fuzz-tokens --seed {self.seed} --start {f.index} --count 1")
        if len(self.failures) > 20:
            out.append(f"  ... and {len(self.failures) - 20} more")
        return out


class _Worker:
    def __init__(self, seed: int, check: str, max_mb: float):
        # A fork server (itself without torch threads) forks each worker with torch already imported:
        # replacing a worker after a hang or a crash takes a fraction of a second.
        context = mp.get_context("forkserver")
        context.set_forkserver_preload(["torch", "codec.fuzz", "codec.files"])
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, seed, check, max_mb, dict(os.environ)),
                                       daemon=True)
        self.process.start()
        child.close()
        try:
            if not self.conn.poll(300):
                raise TokenwaveError("the fuzzing worker did not start within 300 s")
            self.conn.recv()  # ("ready", baseline)
        except (EOFError, OSError):
            self.process.join(10)
            raise TokenwaveError(f"the fuzzing worker died while starting (exit code {self.process.exitcode})") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()


def run_fuzz(count: int, seed: int = 0, start: int = 0, timeout: float = DEFAULT_TIMEOUT,
             max_mb: float = DEFAULT_MAX_MB, check: str = "codec.fuzz:check_case",
             save_failures: Path | None = None, progress: bool = False) -> FuzzReport:
    """Run cases ``start .. start + count - 1`` of ``seed`` through ``check`` (``"module:function"``,
    called as ``check(ctx, data, expected)`` in the worker) and report."""
    from tqdm import tqdm

    report = FuzzReport(seed, start, count)
    began = time.perf_counter()
    worker = None
    index, stop = start, start + count
    bar = tqdm(total=count, unit="case", desc="fuzz-tokens", disable=not progress, file=sys.stderr, smoothing=0.05)

    def fail(i: int, kind: str, problem: str) -> None:
        report.failures.append(FuzzFailureRecord(i, kind, problem))
        report.outcomes["failed"] += 1
        if save_failures is not None:
            ctx = _local_context()
            save_failures.mkdir(parents=True, exist_ok=True)
            (save_failures / f"seed{seed}-case{i}.tok").write_bytes(make_case(ctx, seed, i)[1])

    try:
        while index < stop:
            if worker is None:
                worker = _Worker(seed, check, max_mb)
                report.workers_started += 1
            end = min(index + BATCH, stop)
            worker.conn.send((index, end))
            while index < end:
                if not worker.conn.poll(timeout):
                    fail(index, "?", f"hang: no result within {timeout:g} s")
                    worker.stop()
                    worker, index = None, index + 1
                    bar.update(1)
                    break
                try:
                    i, kind, outcome, problem, seconds, growth = worker.conn.recv()
                except (EOFError, OSError):
                    worker.process.join(10)
                    code = worker.process.exitcode
                    how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                    fail(index, "?", f"crash: the worker died ({how})")
                    worker.stop()
                    worker, index = None, index + 1
                    bar.update(1)
                    break
                report.kinds[kind] += 1
                report.slowest = max(report.slowest, (seconds, i))
                report.peak_growth_mb = max(report.peak_growth_mb, growth)
                if outcome == "failed":
                    fail(i, kind, problem)
                    if growth > max_mb:
                        worker.stop()
                        worker, index = None, i + 1
                        bar.update(1)
                        break
                else:
                    report.outcomes[outcome] += 1
                index = i + 1
                bar.update(1)
                if progress and index % 1000 == 0:
                    bar.set_postfix(failures=len(report.failures))
    finally:
        if worker is not None:
            try:
                worker.conn.send(None)
            except OSError:
                pass
            worker.stop()
        bar.close()
    report.seconds = time.perf_counter() - began
    return report


_LOCAL: list[Context] = []


def _local_context() -> Context:
    """The context in this process (only needed to write failing cases out)."""
    if not _LOCAL:
        _LOCAL.append(make_context())
    return _LOCAL[0]


# --------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser) -> None:
    parser.add_argument("--count", type=int, default=10_000, help="cases to run (default 10000)")
    parser.add_argument("--seed", type=int, default=0, help="case i of a seed is always the same file")
    parser.add_argument("--start", type=int, default=0, help="first case (to reproduce a failure)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds a case may take (default 5)")
    parser.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB,
                        help=f"peak memory growth allowed per case, MiB (default {DEFAULT_MAX_MB})")
    parser.add_argument("--save-failures", metavar="DIR", help="write each failing case's file into DIR")


def main(args) -> int:
    if args.count < 1 or args.start < 0 or args.timeout <= 0 or args.max_mb <= 0:
        raise TokenwaveError("--count must be >= 1, --start >= 0, --timeout and --max-mb > 0")
    save = Path(args.save_failures) if args.save_failures else None
    report = run_fuzz(args.count, args.seed, args.start, args.timeout, args.max_mb, save_failures=save,
                      progress=True)
    print("\n".join(report.lines()))
    return 1 if report.failures else 0
