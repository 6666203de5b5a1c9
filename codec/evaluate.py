"""``tokenwave eval-codec``: objective quality of a codec, and of Opus and Codec2, vs bitrate.

For each recording of a manifest split and each system x bitrate:

1. the recording is coded and decoded: our codecs exactly as ``tokenwave compress`` /
   ``decompress`` do (:func:`codec.files.encode_audio` -> token-file bytes ->
   :func:`codec.files.decode_bytes`); Opus with ``opusenc --hard-cbr`` / ``opusdec``; Codec2 with
   ``c2enc`` / ``c2dec`` on 8 kHz 16-bit raw audio;
2. reference and decoded audio are resampled to 16 kHz with soxr and cut to the same length
   (Codec2's decoded output lags its input by a fixed delay, which is removed first, see
   :data:`CODEC2_DELAY`; Opus and our codecs are time-aligned already);
3. :func:`codec.metrics.score` gives PESQ (wideband), STOI, SI-SDR, log-mel distance and MCD;
4. the real bitrate is the coded file's size in bits over the recording's duration (the whole
   file, headers included; ``payload kbps`` leaves out per-file headers and container
   framing: token-file chunk payloads, Opus packets without the Ogg pages, Codec2 frames).

Our codecs also get per-level codebook usage and perplexity over all files
(:func:`codec.quantizer.codebook_stats`).

Outputs in ``--out``: ``results.md`` (tables), ``results.jsonl`` (one row per file x system x
bitrate, then summary and codebook rows; NaN is written as null) and
``quality_vs_bitrate.png`` (PESQ and STOI vs real kbps, one line per system).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codec.atomic import atomic_write_text
from codec.audio import load_audio, resample
from codec.errors import AudioError, ModelError, TokenwaveError

SCORE_RATE = 16_000
DEFAULT_BITRATES = "1.5,3,6"
OPUS_KBPS = (6, 8, 12)
CODEC2_MODES = ("3200", "1600", "700C")
CODEC2_RATE = 8_000
CODEC2_NOMINAL_KBPS = {"3200": 3.2, "1600": 1.6, "700C": 0.7}
CODEC2_DELAY = {"3200": 140, "1600": 140, "700C": 240}
"""Samples (at 8 kHz) by which ``c2dec``'s output lags ``c2enc``'s input: measured with codec2
1.0.5 as the lag maximising the correlation of 1 ms-hop log spectra between input and output on
ten manifest recordings (3200: 112-152, 1600: 112-168, 700C: 168-288 samples). They are removed
before scoring so STOI, SI-SDR, log-mel and MCD compare the same instants (PESQ aligns itself)."""
TOOL_TIMEOUT_S = 120
RESULT_FILES = ("results.md", "results.jsonl", "quality_vs_bitrate.png")
SPLITS = ("dev", "unseen", "train", "all")
METRIC_NAMES = {"pesq": "PESQ", "stoi": "STOI", "si_sdr": "SI-SDR", "log_mel": "log-mel", "mcd": "MCD"}


class EvalError(TokenwaveError):
    """An evaluation step failed (a codec tool, a file); reported on one line."""


def _which(name: str) -> str | None:
    return shutil.which(name)


# ---------------------------------------------------------------------------------------------
# Recordings


@dataclass
class Clip:
    """One recording: the audio as read (mono, its own rate) and the 16 kHz scoring reference."""

    path: Path
    speaker: str
    wav: np.ndarray  # [1, N] float32 at sample_rate
    sample_rate: int
    reference: np.ndarray  # [M] float32 at 16 kHz

    @property
    def seconds(self) -> float:
        return self.wav.shape[-1] / self.sample_rate


def spread(items: list, limit: int | None, key=None) -> list:
    """At most ``limit`` of ``items``, their order kept, spread evenly so that a limited
    evaluation stays representative.

    With ``key`` (e.g. the speaker), the groups of equal key share the limit as evenly as their
    sizes allow, and each group's share is spread evenly over that group.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        return []
    groups: dict = {}
    for index, item in enumerate(items):
        groups.setdefault(key(item) if key else None, []).append(index)
    quota = dict.fromkeys(groups, 0)
    left = limit
    while left:  # one more item to each group that still has some, in turn
        for name, members in groups.items():
            if left and quota[name] < len(members):
                quota[name] += 1
                left -= 1
    chosen = sorted(members[(i * len(members)) // quota[name]] for name, members in groups.items()
                    for i in range(quota[name]))
    return [items[i] for i in chosen]


def select_recordings(manifest: str | Path, split: str, limit: int | None):
    from codec.data import read_manifest, select_split

    recordings = read_manifest(manifest)
    if split != "all":
        recordings = select_split(recordings, split)
    if not recordings:
        raise EvalError(f"{manifest}: no recordings in split {split!r}")
    return spread(recordings, limit, key=lambda r: r.speaker)


def load_clip(recording) -> Clip:
    wav, sample_rate = load_audio(recording.path)
    return Clip(recording.path, recording.speaker, wav, sample_rate, resample(wav[0], sample_rate, SCORE_RATE))


# ---------------------------------------------------------------------------------------------
# Systems: each codes a clip and returns the decoded audio at 16 kHz and the coded sizes


@dataclass
class Coded:
    audio: np.ndarray  # [N] float at 16 kHz, aligned with the clip's reference
    file_bytes: int
    payload_bytes: int


@dataclass
class System:
    name: str  # "tiny-16k", "opus", "codec2"
    label: str  # nominal bitrate as shown: "6", "700C"
    nominal_kbps: float

    def code(self, clip: Clip, workdir: Path) -> Coded:
        raise NotImplementedError


@dataclass
class CodecSystem(System):
    model: object = None
    bitrate: float = 0.0
    coding: str = "auto"  # token-file coding, as tokenwave compress --coding
    rate_weight: float = 0.0  # as tokenwave compress --rate-weight (codec.rdo)
    codes: list = field(default_factory=list)  # [1, K, T] int64 per file, for codebook_stats

    def code(self, clip: Clip, workdir: Path) -> Coded:
        import torch

        from codec import tokenfile
        from codec.files import coding_tables, decode_bytes, encode_audio

        data = encode_audio(self.model, clip.wav, clip.sample_rate, self.bitrate, self.coding, self.rate_weight)
        decoded, rate = decode_bytes(self.model, data)
        _, codes = tokenfile.unpack(data, coding_tables(self.model))
        self.codes.append(torch.from_numpy(np.ascontiguousarray(codes)))
        payload = sum(tokenfile.chunk_sizes(data))
        return Coded(resample(decoded[0], rate, SCORE_RATE), len(data), payload)


def _run_tool(command: list[str], what: str) -> None:
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=TOOL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EvalError(f"{what}: {command[0]} took more than {TOOL_TIMEOUT_S} s") from None
    except subprocess.CalledProcessError as error:
        lines = (error.stderr or b"").decode(errors="replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {error.returncode}"
        raise EvalError(f"{what}: {command[0]} failed ({detail})") from None
    except OSError as error:
        raise EvalError(f"{what}: cannot run {command[0]} ({error.strerror or error})") from None


def _int16(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")


def ogg_packet_bytes(data: bytes, skip_packets: int = 2) -> int:
    """Bytes of the packets in an Ogg stream, less its first ``skip_packets`` (for Opus, the
    OpusHead and OpusTags headers): the codec payload without Ogg page framing."""
    total, packets, position, current = 0, 0, 0, 0
    while position + 27 <= len(data):
        if data[position : position + 4] != b"OggS":
            raise EvalError("not an Ogg stream")
        segments = data[position + 26]
        lacing = data[position + 27 : position + 27 + segments]
        position += 27 + segments
        for size in lacing:
            current += size
            if size < 255:  # a packet ends
                if packets >= skip_packets:
                    total += current
                packets += 1
                current = 0
        position += sum(lacing)
    return total


@dataclass
class OpusSystem(System):
    kbps: int = 6

    def code(self, clip: Clip, workdir: Path) -> Coded:
        import soundfile as sf

        source, coded, decoded = workdir / "in.wav", workdir / "coded.opus", workdir / "out.wav"
        sf.write(source, _int16(clip.reference), SCORE_RATE, subtype="PCM_16")
        what = f"{clip.path}: opus {self.kbps} kbps"
        _run_tool(["opusenc", "--quiet", "--hard-cbr", "--bitrate", str(self.kbps), "--padding", "0",
                   str(source), str(coded)], what)
        _run_tool(["opusdec", "--quiet", "--rate", str(SCORE_RATE), str(coded), str(decoded)], what)
        data = coded.read_bytes()
        audio, rate = sf.read(decoded, dtype="float32", always_2d=True)
        return Coded(resample(audio.mean(axis=1), rate, SCORE_RATE), len(data), ogg_packet_bytes(data))


@dataclass
class Codec2System(System):
    mode: str = "3200"

    def code(self, clip: Clip, workdir: Path) -> Coded:
        source, coded, decoded = workdir / "in.raw", workdir / "coded.bit", workdir / "out.raw"
        _int16(resample(clip.reference, SCORE_RATE, CODEC2_RATE)).tofile(source)
        what = f"{clip.path}: codec2 {self.mode}"
        # A .bit name: headerless output, so the file holds nothing but codec frames.
        _run_tool(["c2enc", self.mode, str(source), str(coded)], what)
        _run_tool(["c2dec", self.mode, str(coded), str(decoded)], what)
        size = coded.stat().st_size
        audio = np.fromfile(decoded, dtype="<i2").astype(np.float32) / 32768.0
        audio = audio[CODEC2_DELAY[self.mode] :]
        return Coded(resample(audio, CODEC2_RATE, SCORE_RATE), size, size)


def baseline_systems(log) -> list[System]:
    systems: list[System] = []
    if _which("opusenc") and _which("opusdec"):
        systems += [OpusSystem("opus", str(k), float(k), kbps=k) for k in OPUS_KBPS]
    else:
        log("note: opusenc/opusdec not found (Debian/Ubuntu: apt-get install opus-tools); skipping the Opus baseline")
    if _which("c2enc") and _which("c2dec"):
        systems += [Codec2System("codec2", m, CODEC2_NOMINAL_KBPS[m], mode=m) for m in CODEC2_MODES]
    else:
        log("note: c2enc/c2dec not found (Debian/Ubuntu: apt-get install codec2); skipping the Codec2 baseline")
    return systems


# ---------------------------------------------------------------------------------------------
# Scoring and summaries


def json_safe(value):
    """JSON-safe: NaN/Inf -> None, numpy scalars -> Python numbers."""
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def score_clip(system: System, clip: Clip, workdir: Path) -> dict:
    from codec.metrics import score

    coded = system.code(clip, workdir)
    n = min(clip.reference.size, coded.audio.size)
    if n == 0:
        raise EvalError(f"{clip.path}: {system.name} {system.label} decoded no audio")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = score(clip.reference[:n], coded.audio[:n], SCORE_RATE)
    notes = sorted({str(w.message) for w in caught if w.category.__name__ == "MetricWarning"})
    row = {
        "type": "file", "system": system.name, "bitrate": system.label, "nominal_kbps": system.nominal_kbps,
        "file": str(clip.path), "speaker": clip.speaker, "seconds": clip.seconds,
        "bytes": coded.file_bytes, "payload_bytes": coded.payload_bytes,
        "kbps": coded.file_bytes * 8 / clip.seconds / 1000, "payload_kbps": coded.payload_bytes * 8 / clip.seconds / 1000,
        **metrics,
    }
    if notes:
        row["warnings"] = notes
    return row


def _defined(value) -> bool:
    return value is not None and math.isfinite(value)


def summarise(rows: list[dict], systems: list[System]) -> list[dict]:
    """One summary row per system x bitrate.

    Bitrates are totals over the files. The mean of each metric is taken over the files on which
    every system has a value for it (PESQ and STOI are undefined on very short recordings, and a
    file may fail for one system), so the rows of a table compare the same recordings; the count
    is in ``<metric>_files``, and ``<metric>_nan`` counts the system's own undefined values.
    """
    from codec.metrics import METRICS

    runs = [(system.name, system.label) for system in systems]
    by_run: dict[tuple, dict[str, dict]] = {run: {} for run in runs}
    for row in rows:
        by_run[(row["system"], row["bitrate"])][row["file"]] = row
    scored = [run for run in runs if by_run[run]]  # a system that failed on every file is left out
    files = set.intersection(*(set(by_run[run]) for run in scored)) if scored else set()
    common = {name: {f for f in files if all(_defined(by_run[run][f][name]) for run in scored)} for name in METRICS}
    summaries = []
    for system in systems:
        mine = list(by_run[(system.name, system.label)].values())
        if not mine:
            continue
        seconds = sum(r["seconds"] for r in mine)
        summary = {
            "type": "summary", "system": system.name, "bitrate": system.label, "nominal_kbps": system.nominal_kbps,
            "files": len(mine), "seconds": seconds,
            "kbps": sum(r["bytes"] for r in mine) * 8 / seconds / 1000,
            "payload_kbps": sum(r["payload_bytes"] for r in mine) * 8 / seconds / 1000,
        }
        for name in METRICS:
            values = [r[name] for r in mine if r["file"] in common[name]]
            summary[name] = float(np.mean(values)) if values else math.nan
            summary[f"{name}_files"] = len(values)
            summary[f"{name}_nan"] = sum(1 for r in mine if not _defined(r[name]))
        summaries.append(summary)
    return summaries


def codebook_rows(systems: list[System]) -> list[dict]:
    import torch

    from codec.quantizer import codebook_stats

    rows = []
    for system in systems:
        if isinstance(system, CodecSystem) and system.codes:
            # each file's codes [C, K, T] -> [K, C*T], all files side by side -> [1, K, all frames]
            codes = torch.cat([c.permute(1, 0, 2).reshape(c.shape[1], -1) for c in system.codes], dim=-1)[None]
            levels = codebook_stats(codes, system.model.codebook_size)
            rows.append({"type": "codebooks", "system": system.name, "bitrate": system.label,
                         "frames": int(codes.shape[-1]), "levels": levels})
    return rows


# ---------------------------------------------------------------------------------------------
# Outputs


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def results_markdown(summaries: list[dict], codebooks: list[dict], header: list[str]) -> str:
    lines = ["# Codec evaluation", ""] + [f"- {line}" for line in header] + [""]
    lines += [
        "| system | nominal | real kbps | payload kbps | PESQ-WB | STOI | SI-SDR (dB) | log-mel | MCD (dB) | files |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        unit = "" if s["system"] == "codec2" else " kbps"
        lines.append(
            f"| {s['system']} | {s['bitrate']}{unit} | {_fmt(s['kbps'], 2)} | {_fmt(s['payload_kbps'], 2)} | "
            f"{_fmt(s['pesq'], 3)} | {_fmt(s['stoi'], 3)} | {_fmt(s['si_sdr'], 2)} | {_fmt(s['log_mel'], 3)} | "
            f"{_fmt(s['mcd'], 2)} | {s['files']} |"
        )
    files = max(s["files"] for s in summaries)
    partial = {METRIC_NAMES[name]: summaries[0][f"{name}_files"] for name in METRIC_NAMES
               if summaries[0][f"{name}_files"] < files}
    if partial:
        counts = ", ".join(f"{name} {count}" for name, count in partial.items())
        lines += ["", (f"Means are over the files where every system has a value: {counts} of {files} files "
                       "(PESQ needs 1/4 s of audio, STOI about 0.4 s of non-silent speech); other metrics all files.")]
    for row in codebooks:
        lines += ["", f"## Codebook usage: {row['system']} at {row['bitrate']} kbps ({row['frames']} frames)", "",
                  "| level | usage | perplexity | entropy (bits/code) |", "|---|---|---|---|"]
        lines += [f"| {lv['level']} | {100 * lv['usage']:.1f}% | {lv['perplexity']:.1f} | {lv['entropy_bits']:.2f} |"
                  for lv in row["levels"]]
    lines += [
        "", "## Definitions", "",
        "All metrics at 16 kHz after soxr resampling; reference and decoded audio cut to the same length.",
        "Real kbps: coded file size (headers included) x 8 / duration, summed over files; payload kbps leaves out",
        "per-file headers and Ogg framing. PESQ: ITU-T P.862.2 wideband (`pesq`); STOI: `pystoi`;",
        "SI-SDR: zero-mean, scale-invariant; log-mel: mean |difference of ln mel magnitudes| (1024-point FFT,",
        "hop 256, 80 bands); MCD: mel-cepstra c1..c13 from 40 bands, 10 ms hop, frames within 40 dB of the",
        "loudest (`codec/metrics.py`). Codec2's decoder delay is removed before scoring (`codec/evaluate.py`).",
        "",
    ]
    return "\n".join(lines)


def plot_quality(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(s["system"] for s in summaries):
        points = sorted((s for s in summaries if s["system"] == name), key=lambda s: s["kbps"])
        for axis, metric, title in ((axes[0], "pesq", "PESQ (wideband)"), (axes[1], "stoi", "STOI")):
            axis.plot([p["kbps"] for p in points], [p[metric] for p in points], marker="o", label=name)
            for p in points:
                axis.annotate(p["bitrate"], (p["kbps"], p[metric]), textcoords="offset points", xytext=(3, 3),
                              fontsize=7)
            axis.set_xlabel("real bitrate (kbps)")
            axis.set_title(title)
            axis.grid(True, alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The command


def parse_bitrates(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise EvalError(f"--bitrates must be comma-separated numbers of kbps, got {text!r}") from None
    if not values:
        raise EvalError("--bitrates is empty")
    return list(dict.fromkeys(values))


def parse_rate_weights(text: str) -> list[float]:
    """``--rate-weights`` ("0,0.02") -> distinct weights, each finite and >= 0."""
    from codec.rdo import check_rate_weight

    try:
        values = [check_rate_weight(part) for part in text.split(",") if part.strip()]
    except ModelError as error:
        raise EvalError(f"--rate-weights: {error}") from None
    if not values:
        raise EvalError("--rate-weights is empty")
    return list(dict.fromkeys(values))


def system_name(model_name: str, rate_weight: float) -> str:
    """Our codec's name in the tables: the model's, with the rate weight when it is not 0."""
    return f"{model_name} w={rate_weight:g}" if rate_weight else model_name


def _check_extra() -> None:
    missing = []
    for module in ("pesq", "pystoi", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise EvalError(f"eval-codec needs {', '.join(missing)}: pip install 'tokenwave[eval]'")


def add_arguments(parser) -> None:
    """The ``eval-codec`` options (called from :func:`codec.cli.build_parser`)."""
    parser.add_argument("--model", help="codec name or folder (default: speech-16k, or tiny-16k when absent)")
    parser.add_argument("--manifest", required=True, help="manifest.jsonl or folder of audio files")
    parser.add_argument("--split", choices=SPLITS, default="dev",
                        help="dev (default), unseen, train, or all rows of the manifest (see codec/data.py)")
    parser.add_argument("--limit", type=int, default=None,
                        help="score at most N recordings, shared evenly by the speakers of the split")
    parser.add_argument("--bitrates", default=DEFAULT_BITRATES, help=f"kbps, comma-separated (default {DEFAULT_BITRATES})")
    parser.add_argument("--coding", choices=["auto", "context", "range", "packed"], default="auto",
                        help="token-file coding of our codec, as in tokenwave compress (default auto: the smallest)")
    parser.add_argument("--rate-weights", default="0", metavar="W,W,...",
                        help="rate weights of our codec's encoder, comma-separated, each a system of its own "
                             "(as tokenwave compress --rate-weight; default 0: nearest codes)")
    parser.add_argument("--baselines", action="store_true",
                        help="also Opus 6/8/12 kbps (opusenc) and Codec2 3200/1600/700C (c2enc), when installed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="folder for results.md, results.jsonl, quality_vs_bitrate.png")
    parser.add_argument("--force", action="store_true", help="overwrite results already in --out")


def main_eval(args) -> int:
    """Run ``tokenwave eval-codec``; returns the exit code (1 when some files failed)."""
    from codec.cli import _load_model

    def log(message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    _check_extra()
    if args.limit is not None and args.limit < 1:
        raise EvalError(f"--limit must be at least 1, got {args.limit}")
    out = Path(args.out)
    existing = [name for name in RESULT_FILES if (out / name).exists()]
    if existing and not args.force:
        raise EvalError(f"{out / existing[0]} exists; use --force to overwrite")
    if out.exists() and not out.is_dir():
        raise EvalError(f"{out} is not a folder")
    bitrates = parse_bitrates(args.bitrates)
    recordings = select_recordings(args.manifest, args.split, args.limit)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    model = _load_model(args.model)
    for bitrate in bitrates:
        model.bitrate_to_codebooks(bitrate)
    from codec.files import available_codings, check_rate_weight, coding_tables

    available_codings(model, args.coding, coding_tables(model))  # a coding the model cannot do fails here
    weights = parse_rate_weights(args.rate_weights)
    for weight in weights:
        check_rate_weight(model, weight)  # a codec that cannot weigh its codes fails here
    systems: list[System] = [CodecSystem(system_name(model.name, w), f"{b:g}", b, model=model, bitrate=b,
                                         coding=args.coding, rate_weight=w) for w in weights for b in bitrates]
    if args.baselines:
        systems += baseline_systems(log)

    rows, errors = [], []
    bar = tqdm(total=len(recordings) * len(systems), desc="eval-codec", unit="run", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="tokenwave-eval-") as tmp:
        for recording in recordings:
            try:
                clip = load_clip(recording)
            except AudioError as error:
                errors.append({"type": "error", "file": str(recording.path), "message": str(error)})
                log(f"error: {error}")
                bar.update(len(systems))
                continue
            for system in systems:
                bar.set_postfix_str(f"{system.name} {system.label}", refresh=False)
                try:
                    rows.append(score_clip(system, clip, Path(tmp)))
                except TokenwaveError as error:
                    errors.append({"type": "error", "file": str(recording.path), "system": system.name,
                                   "bitrate": system.label, "message": str(error)})
                    log(f"error: {error}")
                bar.update(1)
    bar.close()
    if not rows:
        raise EvalError("no recording could be scored")

    summaries = summarise(rows, systems)
    codebooks = codebook_rows(systems)
    seconds = sum(r["seconds"] for r in rows if r["system"] == systems[0].name and r["bitrate"] == systems[0].label)
    scored = len({r["file"] for r in rows})
    header = [f"model: `{model.name}`; manifest: `{args.manifest}`, split `{args.split}`"
              + (f", limit {args.limit}" if args.limit else "") + (f"; coding `{args.coding}`" if args.coding != "auto" else "")
              + ("; `w=W`: codes picked with rate weight W (`tokenwave compress --rate-weight W`)" if any(weights) else ""),
              f"{scored} recording(s) scored, {seconds:.1f} s of audio" + (f"; {len(errors)} failure(s)" if errors else "")]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.jsonl",
                "".join(json.dumps({k: json_safe(v) for k, v in row.items()}) + "\n" for row in rows + summaries + errors)
                + "".join(json.dumps(row) + "\n" for row in codebooks))
    atomic_write_text(out / "results.md", results_markdown(summaries, codebooks, header))
    plot_quality(summaries, out / "quality_vs_bitrate.png")

    print(results_markdown(summaries, [], header).split("\n## Definitions")[0].rstrip())
    print(f"\nwritten: {', '.join(str(out / name) for name in RESULT_FILES)}")
    if errors:
        log(f"{len(errors)} run(s) failed")
    return 1 if errors else 0
