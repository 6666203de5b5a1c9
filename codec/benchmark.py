"""Speed and memory benchmark of codecs: encode / decode real-time factor and peak memory.

What is measured, for one codec (:func:`benchmark_codec`):

* The signal: :func:`speech_like_signal`, a deterministic speech-like test signal (a gliding, vibrato-ed
  voice source with ~40 harmonics shaped by three moving formants, syllable-rate loudness changes,
  fricative noise bursts in the gaps and a low noise floor) made at the codec's own sample rate, so no
  resampling is timed; or any waveform passed as ``signal`` (resampled once, outside the timing, and
  looped or cut to ``seconds``).
* Real-time factor (RTF) = wall-clock seconds of one call / seconds of audio; below 1 is faster than
  real time. Each of ``encode`` and ``decode`` runs once as a warm-up, then ``repeats`` timed runs
  (``time.perf_counter``); the median is reported (the best as ``*_rtf_best``). Batch 1, with
  ``torch.set_num_threads(threads)`` during the measurement (restored afterwards).
* Peak memory: after the timed runs, one more untimed call of each, during which the peak resident set
  size (RSS) of the process is tracked; reported is the peak minus the RSS just before the call, i.e.
  the extra memory the call needed (weights and inputs already resident are not counted). On Linux the
  kernel's own high-water mark is used: ``gc.collect()`` and glibc ``malloc_trim(0)`` first (so memory
  freed by earlier runs but kept by the allocator is returned and does not hide the need), then the
  ``VmHWM`` counter is reset by writing ``5`` to ``/proc/self/clear_refs`` and read back from
  ``/proc/self/status`` after the call: exact, no sampling. Where that reset is not allowed, a thread
  samples ``/proc/self/statm`` every millisecond (can miss very short peaks); with no ``/proc`` at all,
  the growth of ``getrusage().ru_maxrss`` is used, which is only a lower bound (0 unless the call
  raises the process's lifetime peak). The method used is recorded in each row.

:func:`run_bench` compares a codec with the EnCodec 24 kHz architecture (random weights: the speed is
that of the real model) and returns the printed table; :func:`format_comparison` makes the table.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import math
import os
import re
import statistics
import sys
import threading
import time
from typing import Any

import numpy as np
import torch
from typing_extensions import Self  # a dependency of torch; typing.Self needs Python 3.11

from codec.interface import AudioCodec

__all__ = ["PeakMemory", "benchmark_codec", "format_comparison", "run_bench", "speech_like_signal"]


# --------------------------------------------------------------------------------------------- test signal


def speech_like_signal(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """A deterministic speech-like signal ``[1, 1, N]`` (float32, peak 0.5) of ``seconds`` at ``sample_rate``."""
    n = max(1, round(seconds * sample_rate))
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64) / sample_rate

    # Voice source: f0 gliding 100..200 Hz with 5.5 Hz vibrato, as a sum of harmonics.
    f0 = 150.0 + 45.0 * np.sin(2 * np.pi * 0.31 * t) + 4.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    formants = [  # (centre Hz, moving by, rate Hz, bandwidth Hz)
        (550.0, 200.0, 0.70, 90.0),
        (1500.0, 450.0, 0.45, 130.0),
        (2600.0, 300.0, 0.27, 220.0),
    ]
    centres = [c + d * np.sin(2 * np.pi * r * t + i) for i, (c, d, r, _) in enumerate(formants)]
    voiced = np.zeros(n)
    n_harmonics = int(min(40, (0.45 * sample_rate) // 200.0))
    for h in range(1, n_harmonics + 1):
        f = h * f0
        gain = sum(1.0 / (1.0 + ((f - c) / bw) ** 2) for c, (_, _, _, bw) in zip(centres, formants))
        voiced += (gain + 0.05) / h**0.5 * np.sin(h * phase + 0.3 * h)

    # Syllables at ~4 Hz: voiced where the envelope is up, fricative noise bursts in some gaps.
    syll = np.sin(2 * np.pi * 3.9 * t + 0.8 * np.sin(2 * np.pi * 0.53 * t))
    env = np.clip(syll, 0.0, None) ** 0.6
    noise = rng.standard_normal(n)
    fricative = np.diff(noise, prepend=0.0)  # first difference: a high-pass, hiss-like noise
    gate = np.clip(-syll - 0.4, 0.0, None) * (np.sin(2 * np.pi * 1.7 * t) > 0)
    x = env * voiced / max(1e-9, np.abs(voiced).max())
    x += 0.25 * gate * fricative / max(1e-9, np.abs(fricative).max())
    x += 10 ** (-50 / 20) * noise / 3.0
    x *= 0.5 / max(1e-9, np.abs(x).max())
    return torch.from_numpy(x.astype(np.float32)).reshape(1, 1, n)


# --------------------------------------------------------------------------------------------- peak memory


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            m = re.search(rf"^{field}:\s+(\d+)\s*kB", f.read(), re.MULTILINE)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _statm_rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _maxrss_bytes() -> int:
    try:
        import resource  # Unix only
    except ImportError:  # pragma: no cover - Windows
        return 0
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def _malloc_trim() -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _proc_status_kb("VmHWM") is not None
    except OSError:
        return False


class PeakMemory:
    """Context manager: ``peak_bytes`` = peak RSS during the block minus RSS at its start (see module doc).

    ``method`` says how it was measured: ``"VmHWM"`` (exact), ``"statm sampling 1 ms"`` or
    ``"ru_maxrss growth (lower bound)"``.
    """

    def __init__(self) -> None:
        self.peak_bytes = 0
        self.start_bytes = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _statm_rss_bytes() or 0
            self._sampled_peak = max(self._sampled_peak, rss)
            self._stop.wait(0.001)

    def __enter__(self) -> Self:
        gc.collect()
        _malloc_trim()
        rss = _statm_rss_bytes()
        if rss is not None and _reset_hwm():
            self.method = "VmHWM"
            self.start_bytes = _proc_status_kb("VmRSS") * 1024
        elif rss is not None:
            self.method = "statm sampling 1 ms"
            self.start_bytes = self._sampled_peak = rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            self.method = "ru_maxrss growth (lower bound)"
            self.start_bytes = _maxrss_bytes()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == "VmHWM":
            peak = (_proc_status_kb("VmHWM") or 0) * 1024
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            peak = max(self._sampled_peak, _statm_rss_bytes() or 0)
        else:
            peak = _maxrss_bytes()
        self.peak_bytes = max(0, peak - self.start_bytes)


# --------------------------------------------------------------------------------------------- benchmark


def _num_parameters(codec: AudioCodec) -> int | None:
    n = getattr(codec, "num_parameters", None)
    if isinstance(n, int):
        return n
    if isinstance(codec, torch.nn.Module):
        return sum(p.numel() for p in codec.parameters())
    modules = [v for v in vars(codec).values() if isinstance(v, torch.nn.Module)]
    if not modules:
        return None
    seen: dict[int, int] = {}
    for m in modules:
        for p in m.parameters():
            seen[id(p)] = p.numel()
    return sum(seen.values())


def _timed(fn, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def benchmark_codec(
    codec: AudioCodec,
    seconds: float,
    threads: int,
    bitrate: float | None = None,
    repeats: int = 3,
    *,
    signal: torch.Tensor | None = None,
    signal_rate: int | None = None,
) -> dict[str, Any]:
    """Encode / decode real-time factors and peak memory of ``codec`` on ``seconds`` of audio.

    ``signal`` (``[N]``, ``[1, N]`` or ``[1, 1, N]`` at ``signal_rate``) replaces the synthetic signal.
    Returns a dict (one row for :func:`format_comparison`); times in seconds, memory in MiB.
    """
    if seconds <= 0 or not math.isfinite(seconds):
        raise ValueError(f"seconds must be positive, got {seconds}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    sr = int(codec.sample_rate)
    n = max(1, round(seconds * sr))
    if signal is None:
        wav = speech_like_signal(seconds, sr)
        signal_name = "synthetic speech-like"
    else:
        if signal_rate is None:
            raise ValueError("signal_rate is needed with signal")
        wav = signal.detach().float().reshape(1, 1, -1)
        if int(signal_rate) != sr:
            from codec.hf_codecs import resample

            wav = resample(wav, int(signal_rate), sr)
        wav = wav.repeat(1, 1, math.ceil(n / wav.shape[-1]))[..., :n].contiguous()
        signal_name = "given signal"
    duration = n / sr
    k = codec.bitrate_to_codebooks(bitrate)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        codes = codec.encode(wav, sr, bitrate)  # warm-up
        codec.decode(codes, length=n)
        enc_times, dec_times = [], []
        for _ in range(repeats):
            dt, codes = _timed(codec.encode, wav, sr, bitrate)
            enc_times.append(dt)
            dt, _ = _timed(codec.decode, codes, length=n)
            dec_times.append(dt)
        with PeakMemory() as enc_mem:
            codes = codec.encode(wav, sr, bitrate)
        with PeakMemory() as dec_mem:
            out = codec.decode(codes, length=n)
        del out
    finally:
        torch.set_num_threads(previous_threads)

    enc_rtf = statistics.median(enc_times) / duration
    dec_rtf = statistics.median(dec_times) / duration
    return {
        "name": codec.name,
        "sample_rate": sr,
        "frame_rate": float(codec.frame_rate),
        "bitrate_kbps": float(codec.codebooks_to_bitrate(k)),
        "codebooks": int(codes.shape[1]),
        "frames": int(codes.shape[-1]),
        "parameters": _num_parameters(codec),
        "seconds": duration,
        "signal": signal_name,
        "threads": int(threads),
        "repeats": int(repeats),
        "encode_s": enc_times,
        "decode_s": dec_times,
        "encode_rtf": enc_rtf,
        "decode_rtf": dec_rtf,
        "total_rtf": enc_rtf + dec_rtf,
        "encode_rtf_best": min(enc_times) / duration,
        "decode_rtf_best": min(dec_times) / duration,
        "encode_peak_mib": enc_mem.peak_bytes / 2**20,
        "decode_peak_mib": dec_mem.peak_bytes / 2**20,
        "memory_method": enc_mem.method,
    }


def _find_row(rows: list[dict], which: int | str) -> int:
    if isinstance(which, int):
        return which % len(rows)
    for i, row in enumerate(rows):
        if row["name"] == which:
            return i
    raise ValueError(f"no row named {which!r}")


def format_comparison(rows: list[dict[str, Any]], baseline: int | str = -1) -> str:
    """A side-by-side table of :func:`benchmark_codec` rows, then every row's speed against ``baseline``.

    ``baseline`` is a row index or name (default: the last row, EnCodec in :func:`run_bench`). The speed
    ratio is the baseline's encode+decode RTF divided by the row's: above 1, the row is that many times
    faster.
    """
    if not rows:
        return "(no results)"
    headers = [
        "model", "rate Hz", "kbps", "K", "params M", "enc RTF", "dec RTF", "enc+dec RTF",
        "x real time", "enc peak MiB", "dec peak MiB",
    ]  # fmt: skip
    table = []
    for r in rows:
        params = r.get("parameters")
        table.append([
            str(r["name"]),
            f"{r['sample_rate']}",
            f"{r['bitrate_kbps']:.3g}",
            f"{r['codebooks']}",
            "?" if params is None else f"{params / 1e6:.2f}",
            f"{r['encode_rtf']:.4f}",
            f"{r['decode_rtf']:.4f}",
            f"{r['total_rtf']:.4f}",
            f"{1.0 / r['total_rtf']:.1f}" if r["total_rtf"] > 0 else "inf",
            f"{r['encode_peak_mib']:.1f}",
            f"{r['decode_peak_mib']:.1f}",
        ])  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in table]

    b = _find_row(rows, baseline)
    base = rows[b]
    out.append("")
    for i, r in enumerate(rows):
        if i == b:
            continue
        ratio = base["total_rtf"] / r["total_rtf"] if r["total_rtf"] > 0 else float("inf")
        enc = base["encode_rtf"] / r["encode_rtf"] if r["encode_rtf"] > 0 else float("inf")
        dec = base["decode_rtf"] / r["decode_rtf"] if r["decode_rtf"] > 0 else float("inf")
        verdict = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
        out.append(
            f"speed ratio {r['name']} vs {base['name']} (enc+dec RTF {base['total_rtf']:.4f} / "
            f"{r['total_rtf']:.4f}): {ratio:.2f} -> {verdict} (encode {enc:.2f}, decode {dec:.2f})"
        )
    first = rows[0]
    out.append(
        f"{first['seconds']:g} s of {first['signal']} audio at each model's rate, batch 1, "
        f"{first['threads']} thread(s); RTF = wall time / audio time, median of {first['repeats']} runs "
        "after 1 warm-up (< 1: faster than real time)"
    )
    out.append(f"peak MiB = peak RSS during one call minus RSS before it (method: {first['memory_method']})")
    return "\n".join(out)


def run_bench(
    ours: AudioCodec,
    seconds: float = 10.0,
    threads: int = 2,
    *,
    bitrate: float | None = None,
    encodec_bitrate: float | None = 6.0,
    repeats: int = 3,
) -> str:
    """Benchmark ``ours`` and the EnCodec 24 kHz architecture (random weights) and return the table.

    ``bitrate``: ours' bitrate (None: all its codebooks); ``encodec_bitrate``: EnCodec's (default 6 kbps,
    None for 24 kbps). Uses ``torch.set_num_threads(threads)``, restored afterwards.
    """
    from codec.hf_codecs import encodec_24khz_architecture

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        rows = [benchmark_codec(ours, seconds, threads, bitrate=bitrate, repeats=repeats)]
        encodec = encodec_24khz_architecture()
        rows.append(benchmark_codec(encodec, seconds, threads, bitrate=encodec_bitrate, repeats=repeats))
    finally:
        torch.set_num_threads(previous_threads)
    return format_comparison(rows, baseline=-1)
