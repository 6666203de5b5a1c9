"""Long-audio benchmark: ``tokenwave bench-long [--minutes 60]``.

Writes an hour (``--minutes``) of speech-like audio chunk by chunk into a temporary folder, then
runs ``tokenwave compress`` and ``tokenwave decompress`` on it as separate processes, exactly as
a user would, and reports for each the wall time, real-time factor and peak resident memory
(that process's own ``VmHWM``, read as it exits), and checks that the decoded length equals
the input's length at the codec's rate and that peak memory stays under ``--limit-mb``
(1 GiB by default): both commands stream, so memory must not grow with the length of the audio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from codec.errors import TokenwaveError

SEGMENT_SECONDS = 30
DISTINCT_SEGMENTS = 8


def write_long_signal(path: Path, minutes: float, sample_rate: int, channels: int = 1, seed: int = 0) -> int:
    """Write ``minutes`` of speech-like audio (16-bit WAV) in 30 s segments; returns its length in samples.

    Eight distinct 30 s segments of :func:`codec.benchmark.speech_like_signal` are cycled, each
    with its own gain and fresh background noise, so memory stays at one segment."""
    from codec.benchmark import speech_like_signal

    rng = np.random.default_rng(seed)
    total = round(minutes * 60 * sample_rate)
    segments = {}
    written = 0
    with sf.SoundFile(path, "w", sample_rate, channels, "PCM_16", format="WAV") as f:
        while written < total:
            i = (written // (SEGMENT_SECONDS * sample_rate)) % DISTINCT_SEGMENTS
            if i not in segments:
                segments[i] = speech_like_signal(SEGMENT_SECONDS, sample_rate, seed=seed + i).numpy().reshape(-1)
            n = min(SEGMENT_SECONDS * sample_rate, total - written)
            x = segments[i][:n] * rng.uniform(0.3, 1.6) + 0.003 * rng.standard_normal(n).astype(np.float32)
            block = np.stack([np.roll(x, 37 * c) for c in range(channels)], axis=1)
            f.write(np.clip(block, -1.0, 1.0))
            written += n
    return total


# Runs ``tokenwave ARGS`` and, at exit, writes its own peak RSS (VmHWM, kB) to the file named first.
# VmHWM belongs to the process's memory map, which exec replaces, so unlike ru_maxrss it does not
# count the pages of the (larger) parent that forked it.
_REPORT_PEAK = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def report():
    with open("/proc/self/status") as f:
        peak = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    with open(out, "w") as f:
        f.write(peak)
atexit.register(report)
sys.argv[0] = "tokenwave"
runpy.run_module("codec.cli", run_name="__main__", alter_sys=True)
"""


def run_measured(args: list[str], threads: int, folder: Path) -> tuple[float, float, int]:
    """Run ``tokenwave args``; returns (wall seconds, peak RSS MiB of that process, exit code)."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    peak_file = folder / "peak-rss-kb"
    peak_file.unlink(missing_ok=True)
    on_linux = Path("/proc/self/status").is_file()
    argv = [sys.executable, "-c", _REPORT_PEAK, str(peak_file), *args] if on_linux else \
        [sys.executable, "-m", "codec.cli", *args]
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if peak_file.is_file():
        return wall, int(peak_file.read_text()) / 1024, process.returncode
    return wall, usage.ru_maxrss / 1024 / (1024 if sys.platform == "darwin" else 1), process.returncode


def bench_long(minutes: float = 60.0, model: str | None = None, sample_rate: int = 16_000, channels: int = 1,
               threads: int = 2, limit_mb: float = 1024.0, workdir: str | None = None) -> tuple[list[str], bool]:
    """Run the benchmark; returns (report lines, whether every check passed)."""
    from codec.cli import _resolve_model_name

    name = _resolve_model_name(model)
    with tempfile.TemporaryDirectory(prefix="tokenwave-bench-long-", dir=workdir) as tmp:
        folder = Path(tmp)
        source, tokens, decoded = folder / "long.wav", folder / "long.tok", folder / "long.decoded.wav"
        start = time.perf_counter()
        n = write_long_signal(source, minutes, sample_rate, channels)
        made = time.perf_counter() - start
        seconds = n / sample_rate
        lines = [(f"bench-long: {minutes:g} min of speech-like audio, {sample_rate} Hz, {channels} channel(s), "
                  f"{source.stat().st_size / 2**20:.0f} MiB WAV (written in {made:.1f} s); model {name}; "
                  f"{threads} thread(s)"),
                 f"{'step':<12}{'wall s':>9}{'RTF':>9}{'peak RSS MiB':>15}"]
        passed = True
        results = {}
        for step, args in [
            ("compress", ["compress", str(source), "-o", str(tokens), "--model", name]),
            ("decompress", ["decompress", str(tokens), "-o", str(decoded), "--model", name]),
        ]:
            wall, rss, code = run_measured(args, threads, folder)
            results[step] = (wall, rss)
            lines.append(f"{step:<12}{wall:>9.1f}{wall / seconds:>9.4f}{rss:>15.0f}")
            if code != 0:
                return lines + [f"FAIL: {step} exited with {code}"], False
        import codec

        rate = codec.load(name).sample_rate
        expected = round(n * rate / sample_rate)
        info = sf.info(str(decoded))
        lines.append(f"token file: {tokens.stat().st_size} bytes ({tokens.stat().st_size * 8 / seconds / 1000:.2f} kbps); "
                     f"decoded: {info.frames} samples at {info.samplerate} Hz, {info.channels} channel(s)")
        if info.frames != expected:
            lines.append(f"FAIL: decoded length {info.frames} != input length {expected} at {rate} Hz")
            passed = False
        else:
            lines.append(f"OK: decoded length equals the input length ({expected} samples at {rate} Hz)")
        worst = max(rss for _, rss in results.values())
        if worst >= limit_mb:
            lines.append(f"FAIL: peak RSS {worst:.0f} MiB is over the {limit_mb:g} MiB bound")
            passed = False
        else:
            lines.append(f"OK: peak RSS {worst:.0f} MiB is under the {limit_mb:g} MiB bound")
    return lines, passed


def add_arguments(parser) -> None:
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the test audio (default 60)")
    parser.add_argument("--model", help="codec (default: speech-16k when installed)")
    parser.add_argument("--sample-rate", type=int, default=16_000,
                        help="rate of the test file (default 16000; other rates exercise streaming resampling)")
    parser.add_argument("--channels", type=int, default=1, help="channels of the test file (mixed down to mono)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-mb", type=float, default=1024.0, help="peak RSS bound per command (default 1024)")
    parser.add_argument("--workdir", help="folder for the temporary files (default: the system's temp folder)")


def main(args) -> int:
    if args.minutes <= 0 or args.sample_rate <= 0 or not 1 <= args.channels <= 64 or args.threads < 1:
        raise TokenwaveError("--minutes and --sample-rate must be positive, --channels 1..64, --threads >= 1")
    lines, passed = bench_long(args.minutes, args.model, args.sample_rate, args.channels, args.threads,
                               args.limit_mb, args.workdir)
    print("\n".join(lines))
    return 0 if passed else 1
