"""``tokenwave synth-speech``: extra training speech rendered with Debian's free TTS engines.

English sentences (one per line, e.g. ``../shared/data/text/arctic_prompts.txt`` and
``ljspeech_sentences.txt``) are spoken by several voices of three engines:

- ``espeak-ng``: formant synthesis; a curated set of English accents x voice variants
  (``en-us+f3``, ``en-gb-x-rp+m3``, ``en-us+klatt``, ...), each utterance with its own speed
  (135-185 words/min) and pitch (30-70), drawn from the seed;
- ``flite``: the voices built into Debian's flite (``kal16`` diphone; ``awb``, ``rms``, ``slt``
  clustergen), each utterance with a duration stretch of 0.9-1.15;
- ``festival``: ``cmu_us_slt_arctic_hts`` (HTS), ``kal_diphone`` and ``ked_diphone``
  (the diphone voices also get a 0.9-1.15 duration stretch).

Debian packages (bookworm, ``main``; ``festvox-rablpc16k``, ``festvox-don``, the other CMU ARCTIC
HTS voices and MBROLA are not in Debian main)::

    apt-get install -y espeak-ng festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k flite

An engine that is not installed is skipped with a note on stderr; voices are listed by
:func:`list_voices` (``tokenwave synth-speech --list-voices``).

Sentences of 3 to 25 words are shuffled with the seed and the first ``max_sentences`` are dealt
round-robin to the voices, so every voice speaks different sentences and a larger
``max_sentences`` extends a smaller run (same seed and voices) instead of replacing it; the TTS
evaluation's sentences (:data:`EVAL_SENTENCES`, and any ``--exclude`` file) are never spoken. Each
render is resampled to 16 kHz with soxr, its leading and trailing silence trimmed (keeping
:data:`TRIM_PAD_S` around the speech), scaled down if resampling pushed its peak above
:data:`MAX_PEAK`, and written as FLAC to ``OUT/<speaker>/<hash>.flac``; the
file name hashes speaker, text and settings, so a re-run reuses every file already there and
renders only the missing ones. Renders that fail, time out or come out silent are counted and
left out. ``OUT/manifest.jsonl`` is written atomically at the end in the format of
``../shared/data/manifest.jsonl`` (``audio`` relative to the manifest, ``text``, ``speaker``,
``duration``, ``sample_rate``, ``source``, ``license``), one row per sentence of this run.

Licences (``license`` field, from the packages' copyright files): espeak-ng and its voice data
are GPL-3.0-or-later; flite's voices are under CMU's BSD-like flite licence; the festival voices
under the BSD-like CMU/Edinburgh (EST) licences; ``cmu_us_slt_arctic_hts`` is the CMU ARCTIC
"slt" speaker (free, BSD-like). The speech these programs produce is not itself covered by the
programs' licences; the field records the engine and voice terms for reference. Note that
``flite_slt`` / ``festival_us_slt_hts`` and ``flite_kal16`` / ``festival_kal_diphone`` are the
same recorded speakers rendered by different engines.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from codec.atomic import atomic_write_text
from codec.audio import load_audio, write_audio
from codec.errors import AudioError, TokenwaveError

APT_INSTALL = ("apt-get install -y espeak-ng festival festvox-us-slt-hts festvox-kallpc16k "
               "festvox-kdlpc16k flite")
"""The Debian/Ubuntu packages of every engine and voice used here."""

ENGINES = ("espeak-ng", "festival", "flite")
MIN_WORDS, MAX_WORDS = 3, 25
EVAL_SENTENCES = Path(__file__).resolve().parent.parent / "tts" / "eval_sentences.txt"
"""The TTS evaluation's sentences (``tokenwave eval-tts``): ``synth-speech`` never speaks them, so
they stay unseen in LM training."""
TIMEOUT_S = 60
"""Seconds one render may take before it counts as failed."""
TRIM_TOP_DB = 40.0
"""Frames quieter than the loudest frame by more than this are silence (at the ends only)."""
TRIM_PAD_S = 0.1
MIN_SECONDS = 0.3
MIN_PEAK = 1e-3
MAX_PEAK = 0.99

ESPEAK_VOICES = (
    "en-us", "en-us+f3", "en-us+m7", "en-us+klatt", "en-us-nyc+m2", "en-gb", "en-gb+f4",
    "en-gb-x-rp+m3", "en-gb-scotland+f2", "en-gb-x-gbclan+f5", "en-gb-x-gbcwmd+m5", "en-029+m1",
)
FLITE_VOICES = ("kal16", "awb", "rms", "slt")  # not kal (8 kHz) nor awb_time (a talking clock)
FESTIVAL_VOICES = {  # voice -> (short name, stretchable, licence, Debian package)
    "cmu_us_slt_arctic_hts": ("us_slt_hts", False,
                              "CMU ARCTIC slt (EST-2003 BSD-like, festvox-us-slt-hts)", "festvox-us-slt-hts"),
    "kal_diphone": ("kal_diphone", True, "CMU/Edinburgh BSD-like (festvox-kallpc16k)", "festvox-kallpc16k"),
    "ked_diphone": ("ked_diphone", True, "Edinburgh CSTR BSD-like (festvox-kdlpc16k)", "festvox-kdlpc16k"),
}
FESTIVAL_VOICE_DIRS = (Path("/usr/share/festival/voices"), Path("/usr/lib/festival/voices"))
LICENCES = {
    "espeak-ng": "GPL-3.0-or-later (espeak-ng voice data)",
    "flite": "CMU flite licence (BSD-like, libflite1)",
}
PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival"}


@dataclass(frozen=True)
class Voice:
    """One voice of one engine; ``speaker`` is its name in manifests (``flite_slt``)."""

    engine: str
    name: str
    speaker: str
    license: str


@dataclass
class RenderSummary:
    """What :func:`render_corpus` did."""

    manifest: Path
    rows: int = 0
    rendered: int = 0
    reused: int = 0
    failed: int = 0
    seconds: float = 0.0
    voices: list[str] = field(default_factory=list)
    skipped_engines: list[str] = field(default_factory=list)
    per_speaker: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [(f"{self.manifest}: {self.rows} files, {self.seconds / 60:.1f} min of speech, "
                f"{len(self.voices)} voices ({self.rendered} rendered, {self.reused} reused, {self.failed} failed)")]
        out += [f"  {speaker}: {count}" for speaker, count in sorted(self.per_speaker.items())]
        if self.skipped_engines:
            out.append(f"  engines not installed: {', '.join(self.skipped_engines)}")
        return out


def _note(message: str) -> None:
    tqdm.write(f"note: {message}", file=sys.stderr)


def _run(command: list[str], timeout: float = TIMEOUT_S) -> str:
    """Run a command, return its stdout; '' when it is missing or fails."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _engine_missing(engine: str) -> str | None:
    """Why ``engine`` cannot run here, or None when it can."""
    binaries = {"espeak-ng": ["espeak-ng"], "flite": ["flite"], "festival": ["festival", "text2wave"]}[engine]
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        return f"{engine}: {', '.join(missing)} not found (Debian/Ubuntu: apt-get install -y {PACKAGES[engine]})"
    return None


def engine_version(engine: str) -> str:
    """``engine`` and its version, e.g. ``espeak-ng 1.51+dfsg-10+deb12u2`` (the Debian package's when known)."""
    package = _run(["dpkg-query", "-W", "-f=${Version}", PACKAGES[engine]], timeout=10).strip()
    if package:
        return f"{engine} {package}"
    if engine == "festival":
        match = re.search(r"System:\s*([\w.]+)", _run(["festival", "--version"], timeout=10))
    elif engine == "flite":
        match = re.search(r"version[:\s]+\S*?(\d[\w.]*)", _run(["flite", "--version"], timeout=10))
    else:
        match = re.search(r"speech:\s*([\w.]+)", _run(["espeak-ng", "--version"], timeout=10))
    return f"{engine} {match.group(1)}" if match else engine


def _espeak_voices() -> list[Voice]:
    languages = {line.split()[1] for line in _run(["espeak-ng", "--voices"], 20).splitlines()[1:] if line.split()}
    variants = set()
    for line in _run(["espeak-ng", "--voices=variant"], 20).splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 5:
            variants.add(parts[4].rsplit("/", 1)[-1])
    voices = []
    for name in ESPEAK_VOICES:
        language, _, variant = name.partition("+")
        if language in languages and (not variant or variant in variants):
            voices.append(Voice("espeak-ng", name, f"espeak_{name}", LICENCES["espeak-ng"]))
    return voices


def _flite_voices() -> list[Voice]:
    # flite -lv prints "Voices available: kal awb_time kal16 awb rms slt".
    listed = set(_run(["flite", "-lv"], 20).replace("Voices available:", "").split())
    return [Voice("flite", name, f"flite_{name}", LICENCES["flite"]) for name in FLITE_VOICES if name in listed]


def _festival_voices() -> list[Voice]:
    installed = {p.name for root in FESTIVAL_VOICE_DIRS if root.is_dir() for p in root.glob("*/*") if p.is_dir()}
    return [Voice("festival", name, f"festival_{short}", licence)
            for name, (short, _, licence, _) in FESTIVAL_VOICES.items() if name in installed]


def list_voices(engines=ENGINES, notes: bool = False) -> list[Voice]:
    """The voices of ``engines`` installed on this machine (engines not installed give none).

    With ``notes``, each engine that is missing, or has none of our voices, is reported on stderr.
    """
    engines = _check_engines(engines)
    voices = []
    for engine in engines:
        why = _engine_missing(engine)
        if why:
            if notes:
                _note(f"skipping {why}")
            continue
        found = {"espeak-ng": _espeak_voices, "flite": _flite_voices, "festival": _festival_voices}[engine]()
        if not found and notes:
            packages = " ".join(p for _, _, _, p in FESTIVAL_VOICES.values()) if engine == "festival" else engine
            _note(f"skipping {engine}: none of its voices is installed (apt-get install -y {packages})")
        voices += found
    return voices


def _check_engines(engines) -> list[str]:
    if isinstance(engines, str):
        engines = [e for e in engines.split(",") if e.strip()]
    engines = [e.strip() for e in engines]
    unknown = [e for e in engines if e not in ENGINES]
    if unknown:
        raise TokenwaveError(f"unknown engine {unknown[0]!r}; choose from {', '.join(ENGINES)}")
    if not engines:
        raise TokenwaveError(f"no engines given; choose from {', '.join(ENGINES)}")
    return list(dict.fromkeys(engines))


def read_sentences(text_files) -> list[str]:
    """Non-empty lines of the files, whitespace collapsed, duplicates dropped, in file order."""
    sentences = []
    for path in text_files:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise TokenwaveError(f"{path}: cannot read ({error.strerror or error})") from None
        except UnicodeDecodeError:
            raise TokenwaveError(f"{path}: not UTF-8 text") from None
        sentences += [" ".join(line.split()) for line in text.splitlines()]
    return list(dict.fromkeys(s for s in sentences if s))


def sentence_key(text: str) -> tuple[str, ...]:
    """The words of ``text`` in lower case without punctuation: sentences that only differ in
    case, punctuation or spacing have the same key."""
    return tuple(re.findall(r"[a-z0-9]+", unicodedata.normalize("NFKD", text).lower()))


def pick_sentences(sentences: list[str], max_sentences: int | None, seed: int = 0, exclude=()) -> list[str]:
    """Sentences of :data:`MIN_WORDS`-:data:`MAX_WORDS` words, shuffled by ``seed``, without those
    in ``exclude`` (compared by :func:`sentence_key`), the first ``max_sentences``.

    The order depends only on the seed and the sentences, so a larger ``max_sentences`` extends
    a smaller one; excluded sentences are dropped after the shuffle, so the others keep it.
    """
    usable = [s for s in sentences if MIN_WORDS <= len(s.split()) <= MAX_WORDS and re.search(r"[A-Za-z]", s)]
    order = np.random.default_rng(seed).permutation(len(usable))
    banned = {sentence_key(text) for text in exclude}
    picked = [usable[i] for i in order if sentence_key(usable[i]) not in banned]
    return picked if max_sentences is None else picked[:max_sentences]


def _settings(voice: Voice, seed: int, text: str) -> dict:
    """Per-utterance prosody, drawn from (seed, speaker, text): reproducible across runs."""
    key = int.from_bytes(hashlib.sha256(f"{seed}|{voice.speaker}|{text}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(key)
    if voice.engine == "espeak-ng":
        return {"speed": int(rng.integers(135, 186)), "pitch": int(rng.integers(30, 71))}
    if voice.engine == "flite" or (voice.engine == "festival" and FESTIVAL_VOICES[voice.name][1]):
        return {"stretch": round(float(rng.uniform(0.9, 1.15)), 3)}
    return {}


def _ascii(text: str) -> str:
    """``text`` for engines that only read ASCII: accents dropped, other non-ASCII removed."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return " ".join(folded.split())


def _synth_command(voice: Voice, settings: dict, text_file: Path, wav: Path) -> list[str]:
    if voice.engine == "espeak-ng":
        return ["espeak-ng", "-v", voice.name, "-s", str(settings["speed"]), "-p", str(settings["pitch"]),
                "-f", str(text_file), "-w", str(wav)]
    if voice.engine == "flite":
        command = ["flite", "-voice", voice.name]
        if "stretch" in settings:
            command += ["--setf", f"duration_stretch={settings['stretch']}"]
        return command + ["-f", str(text_file), "-o", str(wav)]
    command = ["text2wave", "-eval", f"(voice_{voice.name})"]
    if "stretch" in settings:
        command += ["-eval", f"(Parameter.set 'Duration_Stretch {settings['stretch']})"]
    return command + ["-o", str(wav), str(text_file)]


def trim_silence(wav: np.ndarray, sample_rate: int, top_db: float = TRIM_TOP_DB, pad_s: float = TRIM_PAD_S) -> np.ndarray:
    """``wav`` ``[C, N]`` without the silence at its ends, keeping ``pad_s`` around the speech.

    A 10 ms frame is silent when its RMS is more than ``top_db`` below the loudest frame's.
    Returns an empty array when there is no sound at all.
    """
    hop = max(1, sample_rate // 100)
    mono = wav.mean(axis=0) if wav.ndim == 2 else wav
    frames = len(mono) // hop
    if frames == 0:
        return wav[..., :0] if not np.any(mono) else wav
    rms = np.sqrt(np.mean(mono[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2, axis=1))
    if rms.max() <= 0:
        return wav[..., :0]
    loud = np.flatnonzero(20 * np.log10(np.maximum(rms, 1e-12) / rms.max()) > -top_db)
    pad = round(pad_s * sample_rate)
    start = max(0, loud[0] * hop - pad)
    end = min(len(mono), (loud[-1] + 1) * hop + pad)
    return wav[..., start:end]


def _render_one(voice: Voice, settings: dict, text: str, target: Path, target_rate: int) -> float:
    """Synthesise ``text`` into ``target`` (FLAC at ``target_rate``); returns its duration in seconds."""
    spoken = text if voice.engine == "espeak-ng" else _ascii(text)
    with tempfile.TemporaryDirectory(prefix="tokenwave-synth-") as tmp:
        text_file, wav_file = Path(tmp) / "text.txt", Path(tmp) / "out.wav"
        text_file.write_text(spoken + "\n", encoding="utf-8")
        command = _synth_command(voice, settings, text_file, wav_file)
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise TokenwaveError(f"{voice.speaker}: {command[0]} took more than {TIMEOUT_S} s") from None
        except OSError as error:
            raise TokenwaveError(f"{voice.speaker}: cannot run {command[0]} ({error.strerror or error})") from None
        if done.returncode != 0 or not wav_file.exists() or wav_file.stat().st_size <= 44:
            detail = (done.stderr or done.stdout).strip().splitlines()
            raise TokenwaveError(f"{voice.speaker}: {command[0]} failed (exit {done.returncode}"
                                 f"{': ' + detail[-1] if detail else ''})")
        wav, _ = load_audio(wav_file, target_rate)
    wav = trim_silence(wav, target_rate)
    peak = float(np.abs(wav).max()) if wav.size else 0.0
    if wav.shape[-1] < MIN_SECONDS * target_rate or peak < MIN_PEAK:
        raise TokenwaveError(f"{voice.speaker}: silent or too short render of {text[:40]!r}")
    if peak > MAX_PEAK:  # resampling can overshoot a full-scale render: scale down rather than clip
        wav = wav * (MAX_PEAK / peak)
    write_audio(target, wav, target_rate)
    return wav.shape[-1] / target_rate


def _file_name(voice: Voice, settings: dict, text: str, target_rate: int) -> str:
    key = json.dumps([voice.engine, voice.name, text, settings, target_rate], sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16] + ".flac"


def _existing_duration(path: Path, target_rate: int) -> float | None:
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError):
        return None
    return info.frames / info.samplerate if info.samplerate == target_rate and info.frames > 0 else None


def _write_manifest(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "manifest")


def _select_voices(available: list[Voice], voices) -> list[Voice]:
    if voices is None:
        return available
    if isinstance(voices, str):
        voices = voices.split(",")
    chosen = []
    for wanted in (v.strip() for v in voices if v.strip()):
        match = [v for v in available if wanted in (v.speaker, v.name, f"{v.engine}:{v.name}")]
        if not match:
            names = ", ".join(v.speaker for v in available) or "none"
            raise TokenwaveError(f"voice {wanted!r} is not available; installed voices: {names}")
        chosen += [v for v in match if v not in chosen]
    return chosen


def render_corpus(text_files, out_dir, engines=ENGINES, voices=None, max_sentences: int | None = 600,
                  seed: int = 0, workers: int = 2, target_rate: int = 16_000, progress: bool = True,
                  exclude_files=()) -> RenderSummary:
    """Speak sentences from ``text_files`` with the installed voices into ``out_dir``; see the module docstring.

    Args:
        text_files: UTF-8 files, one sentence per line.
        out_dir: created if needed; gets ``<speaker>/<hash>.flac`` and ``manifest.jsonl``.
        engines: a subset of :data:`ENGINES` (a sequence or a comma-separated string);
            engines that are not installed are skipped with a note on stderr.
        voices: None for every installed voice of ``engines``, or speaker names
            (``flite_slt``) / engine voice names (``en-us+f3``) to use only those.
        max_sentences: how many sentences in all (None: every usable one), dealt round-robin
            to the voices.
        seed: picks the sentences, their order, and the per-utterance speed/pitch.
        workers: renders in parallel (engine processes).
        target_rate: sample rate of the written FLAC files.
        exclude_files: UTF-8 files of sentences never to speak (e.g. :data:`EVAL_SENTENCES`,
            the TTS evaluation's held-out sentences).

    Returns:
        a :class:`RenderSummary`.

    Raises:
        TokenwaveError: unreadable text files, unknown engine or voice, no voice installed,
            no usable sentence, or nothing rendered.
    """
    engines = _check_engines(engines)
    if max_sentences is not None and max_sentences < 1:
        raise TokenwaveError(f"the number of sentences must be at least 1, got {max_sentences}")
    if workers < 1:
        raise TokenwaveError(f"workers must be at least 1, got {workers}")
    sentences = pick_sentences(read_sentences(text_files), max_sentences, seed, read_sentences(exclude_files))
    if not sentences:
        raise TokenwaveError(f"no sentence of {MIN_WORDS}-{MAX_WORDS} words in {', '.join(map(str, text_files))}")
    chosen = _select_voices(list_voices(engines, notes=True), voices)
    if not chosen:
        raise TokenwaveError(f"no TTS voice installed for {', '.join(engines)}; Debian/Ubuntu: {APT_INSTALL}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = RenderSummary(out / "manifest.jsonl", voices=[v.speaker for v in chosen],
                            skipped_engines=[e for e in engines if _engine_missing(e)])
    sources = {engine: engine_version(engine) for engine in {v.engine for v in chosen}}

    jobs = []  # (index, voice, settings, text, path)
    for index, text in enumerate(sentences):
        voice = chosen[index % len(chosen)]
        settings = _settings(voice, seed, text)
        (out / voice.speaker).mkdir(exist_ok=True)
        jobs.append((index, voice, settings, text, out / voice.speaker / _file_name(voice, settings, text, target_rate)))

    durations: dict[int, float] = {}
    todo = []
    for job in jobs:
        seconds = _existing_duration(job[4], target_rate) if job[4].exists() else None
        if seconds is None:
            todo.append(job)
        else:
            durations[job[0]] = seconds
            summary.reused += 1

    def work(job):
        index, voice, settings, text, path = job
        return index, _render_one(voice, settings, text, path, target_rate)

    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(todo), desc="synth-speech", unit="file", disable=not progress or not todo,
                 file=sys.stderr) as bar:
        futures = [pool.submit(work, job) for job in todo]
        for future in as_completed(futures):
            try:
                index, seconds = future.result()
                durations[index] = seconds
                summary.rendered += 1
            except (TokenwaveError, AudioError) as error:
                summary.failed += 1
                tqdm.write(f"skipped: {error}", file=sys.stderr)
            bar.update(1)

    rows = []
    for index, voice, _, text, path in jobs:
        if index not in durations:
            continue
        rows.append({"audio": path.relative_to(out).as_posix(), "text": text, "speaker": voice.speaker,
                     "duration": round(durations[index], 3), "sample_rate": target_rate,
                     "source": f"{sources[voice.engine]} ({voice.name})", "license": voice.license})
        summary.per_speaker[voice.speaker] = summary.per_speaker.get(voice.speaker, 0) + 1
        summary.seconds += durations[index]
    if not rows:
        raise TokenwaveError(f"no sentence could be rendered ({summary.failed} failed)")
    _write_manifest(summary.manifest, rows)
    summary.rows = len(rows)
    if summary.failed:
        tqdm.write(f"{summary.failed} of {len(jobs)} render(s) failed and are not in the manifest", file=sys.stderr)
    return summary


def add_arguments(parser) -> None:
    """The ``synth-speech`` options (called from :func:`codec.cli.build_parser`)."""
    parser.add_argument("--text", action="append", help="UTF-8 file with one sentence per line (repeatable)")
    parser.add_argument("--out", help="output folder: <speaker>/*.flac and manifest.jsonl (re-runs reuse files)")
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated (default {','.join(ENGINES)})")
    parser.add_argument("--voices", default=None, help="comma-separated speaker names, e.g. flite_slt,espeak_en-us+f3 "
                                                       "(default: every installed voice; see --list-voices)")
    parser.add_argument("--sentences", type=int, default=600, help="sentences in all, shared by the voices (default 600)")
    parser.add_argument("--exclude", action="append", default=[str(EVAL_SENTENCES)], metavar="FILE",
                        help="sentences never to speak, one per line (repeatable; tts/eval_sentences.txt, the TTS "
                             "evaluation's held-out sentences, is always excluded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="engine processes in parallel (default 2)")
    parser.add_argument("--sample-rate", type=int, default=16_000, help="of the FLAC files (default 16000)")
    parser.add_argument("--list-voices", action="store_true", help="list the installed voices and exit")


def main_synth(args) -> int:
    """Run ``tokenwave synth-speech``; returns the exit code (1 when some renders failed)."""
    if args.list_voices:
        voices = list_voices(args.engines, notes=True)
        for voice in voices:
            print(f"{voice.speaker:28s} {voice.engine:10s} {voice.name:24s} {voice.license}")
        if not voices:
            print(f"no voices installed; Debian/Ubuntu: {APT_INSTALL}", file=sys.stderr)
        return 0
    if not args.text or not args.out:
        raise TokenwaveError("synth-speech needs --text FILE and --out DIR (or --list-voices)")
    summary = render_corpus(args.text, args.out, engines=args.engines, voices=args.voices,
                            max_sentences=args.sentences, seed=args.seed, workers=args.workers,
                            target_rate=args.sample_rate, exclude_files=args.exclude)
    print("\n".join(summary.lines()))
    return 1 if summary.failed else 0
