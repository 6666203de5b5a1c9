"""``tokenwave eval-tts``: intelligibility, speaker similarity, failures and speed of the TTS.

For each ``--voice`` and each of ``--sentences`` sentences never seen in training
(:data:`SENTENCES_FILE`, 100 LJ Speech transcript sentences outside both training manifests;
its header says how they were picked), the sentence is synthesised alone (seed ``--seed + i``)
and scored:

- **WER**: an independent offline recogniser (pocketsphinx 5, its US English model; 16 kHz
  int16) transcribes the output; reference and hypothesis are normalised the same way
  (:func:`normalize_words`: the front-end's :func:`tokenlm.text.normalize_text` spells out
  numbers and abbreviations, then lower case, hyphens to spaces, punctuation removed) and the
  word error rate is (substitutions + deletions + insertions) / reference words, summed over
  the utterances (corpus WER; the per-utterance mean is in the JSON);
- **similarity**: cosine between Resemblyzer speaker embeddings (``VoiceEncoder`` on the CPU,
  its own shipped weights) of the output and of the voice prompt;
- **failures**: chunks that hit the AR's maximum length, came out (nearly) empty or mostly
  silence (:func:`tts.synthesizer.check_chunk`), counted after the synthesizer's retries and on
  the first attempt;
- **RTF**: synthesis wall time (prompt ready, models loaded) / output duration, ``--threads``
  torch threads (default 2).

Reference points in the same run, for each voice whose speaker is in ``--manifest``: up to
``--references`` real dev-split recordings of that speaker (never trained on; the prompt's own
recording left out) through the same recogniser, the same recordings after a round trip
through the codec at the NAR's number of codebooks, and the similarity of each real recording
to the prompt (real-real similarity). Targets (reported, not asserted): WER <= 1.3 x real WER,
no failure, similarity >= 0.8 x real-real, RTF <= 0.5.

Outputs in ``--out``: ``results.md`` (tables), ``results.jsonl`` (one row per utterance, then
the summaries; NaN written as null) and, unless ``--no-audio``, ``audio/<voice>/NNN.flac``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
import sys
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tts.errors import TTSError

SENTENCES_FILE = Path(__file__).resolve().parent / "eval_sentences.txt"
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "manifest.jsonl"
RESULT_FILES = ("results.md", "results.jsonl")
EVAL_RATE = 16_000
TARGETS = {"wer_ratio": 1.3, "failures": 0, "similarity_ratio": 0.8, "rtf": 0.5}


# ---------------------------------------------------------------------------------------------
# Word error rate


def normalize_words(text: str) -> list[str]:
    """Words for WER: front-end normalisation (numbers, abbreviations), lower case, hyphens and
    dashes to spaces, punctuation removed (apostrophes inside words kept)."""
    from tokenlm.text import normalize_text

    text = normalize_text(text).lower()
    text = re.sub(r"[-–—_/]", " ", text)
    text = re.sub(r"[^a-z0-9' ]", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]


def edit_ops(reference: list[str], hypothesis: list[str]) -> tuple[int, int, int]:
    """``(substitutions, deletions, insertions)`` of a minimum word alignment (Levenshtein)."""
    n, m = len(reference), len(hypothesis)
    # cost[i][j] = (edits, subs, dels, ins) for reference[:i] vs hypothesis[:j]; ties keep fewer edits overall
    previous = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        current = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            same = reference[i - 1] == hypothesis[j - 1]
            diag = previous[j - 1]
            options = [
                (diag[0] + (not same), diag[1] + (not same), diag[2], diag[3]),
                (previous[j][0] + 1, previous[j][1], previous[j][2] + 1, previous[j][3]),
                (current[j - 1][0] + 1, current[j - 1][1], current[j - 1][2], current[j - 1][3] + 1),
            ]
            current.append(min(options))
        previous = current
    _, subs, dels, ins = previous[m]
    return subs, dels, ins


def wer(reference: str | list[str], hypothesis: str | list[str]) -> float:
    """Word error rate of ``hypothesis`` against ``reference`` (strings are normalised with
    :func:`normalize_words`; lists are taken as given). An empty reference gives 0.0 for an
    empty hypothesis, else inf."""
    ref = normalize_words(reference) if isinstance(reference, str) else list(reference)
    hyp = normalize_words(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
    if not ref:
        return 0.0 if not hyp else math.inf
    return sum(edit_ops(ref, hyp)) / len(ref)


# ---------------------------------------------------------------------------------------------
# Speaker similarity (Resemblyzer)


def _import_resemblyzer():
    """``resemblyzer`` imports ``webrtcvad``, which imports ``pkg_resources`` only for its own
    version string; setuptools >= 81 no longer ships ``pkg_resources``, so a two-line stand-in
    is registered when it is missing."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            shim = types.ModuleType("pkg_resources")
            shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))
            sys.modules["pkg_resources"] = shim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # its scipy.ndimage.morphology import
        import resemblyzer
    return resemblyzer


def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-style mel filterbank ``[n_mels, n_fft // 2 + 1]`` (librosa's default
    ``filters.mel``: Slaney mel scale, area-normalised triangles)."""
    step = np.log(6.4) / 27.0

    def to_mel(f):
        f = np.asarray(f, dtype=np.float64)
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / step, f * 3.0 / 200.0)

    def to_hz(m):
        return np.where(m >= 15.0, 1000.0 * np.exp(step * (m - 15.0)), m * 200.0 / 3.0)

    edges = to_hz(np.linspace(to_mel(0.0), to_mel(sample_rate / 2), n_mels + 2))
    ramps = edges[:, None] - np.linspace(0, sample_rate / 2, 1 + n_fft // 2)[None, :]
    widths = np.diff(edges)
    weights = np.maximum(0, np.minimum(-ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


def mel_power(wav: np.ndarray, sample_rate: int = EVAL_RATE, n_fft: int = 400, hop: int = 160,
              n_mels: int = 40) -> np.ndarray:
    """Mel power spectrogram ``[frames, n_mels]`` as Resemblyzer computes it (librosa's
    ``melspectrogram``: centred zero-padded frames, periodic Hann window), in numpy: librosa's
    own first call costs seconds of imports and JIT compilation."""
    padded = np.pad(np.asarray(wav, dtype=np.float32), n_fft // 2)
    frames = 1 + (len(padded) - n_fft) // hop
    index = np.arange(n_fft)[None, :] + hop * np.arange(frames)[:, None]
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    power = np.abs(np.fft.rfft(padded[index] * window, axis=1)) ** 2
    return (power @ mel_filters(sample_rate, n_fft, n_mels).T).astype(np.float32)


class SpeakerEncoder:
    """``embed(wav [N] at 16 kHz) -> unit vector [256]`` (None when there is too little speech).

    Resemblyzer's ``VoiceEncoder`` (its shipped weights, on the CPU) and its
    ``preprocess_wav`` (volume normalisation, long silences removed by webrtcvad); the
    utterance embedding is ``VoiceEncoder.embed_utterance``'s (mean of the L2-normalised
    embeddings of 1.6 s partials, normalised), with the mel spectrogram from :func:`mel_power`.
    """

    def __init__(self):
        try:
            resemblyzer = _import_resemblyzer()
        except ImportError as error:
            raise TTSError(f"eval-tts needs resemblyzer ({error}): pip install 'tokenwave[eval]'") from None
        self._preprocess = resemblyzer.preprocess_wav
        self.encoder = resemblyzer.VoiceEncoder("cpu", verbose=False)

    def embed(self, wav: np.ndarray) -> np.ndarray | None:
        import torch

        # source_sr=None: the audio is already at Resemblyzer's 16 kHz
        wav = self._preprocess(np.asarray(wav, dtype=np.float32), source_sr=None)
        if len(wav) < 0.3 * EVAL_RATE:
            return None
        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), rate=1.3, min_coverage=0.75)
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
        mel = mel_power(wav)
        with torch.no_grad():
            partials = self.encoder(torch.from_numpy(np.stack([mel[s] for s in mel_slices]))).numpy()
        mean = partials.mean(axis=0)
        return mean / np.linalg.norm(mean)


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None:
        return math.nan
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


# ---------------------------------------------------------------------------------------------
# Inputs


def read_sentences(path: str | Path = SENTENCES_FILE) -> list[str]:
    """Non-empty lines of ``path`` that are not ``#`` comments."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise TTSError(f"cannot read sentences from {path}: {error}") from None
    sentences = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not sentences:
        raise TTSError(f"{path} holds no sentences")
    return sentences


def reference_recordings(manifest: Path, speaker: str, limit: int, exclude: str = "") -> list:
    """Up to ``limit`` dev-split recordings (with transcripts) of ``speaker``, spread evenly,
    leaving out any whose file name is ``exclude``."""
    from codec.data import read_manifest, select_split
    from codec.evaluate import spread

    recordings = [r for r in select_split(read_manifest(manifest), "dev")
                  if r.speaker == speaker and r.text.strip() and (not exclude or r.path.name != exclude)]
    return spread(recordings, limit)


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Scorer:
    recognizer: object
    speaker_encoder: SpeakerEncoder
    asr_seconds: float = 0.0
    embed_seconds: float = 0.0
    audio_seconds: float = 0.0
    count: int = 0

    def score(self, audio: np.ndarray, sample_rate: int, text: str, prompt_embedding) -> dict:
        from codec.audio import resample

        audio = resample(np.asarray(audio, dtype=np.float32), sample_rate, EVAL_RATE)
        began = time.perf_counter()
        hypothesis = self.recognizer.transcribe(audio, EVAL_RATE) if len(audio) else ""
        middle = time.perf_counter()
        embedding = self.speaker_encoder.embed(audio) if len(audio) else None
        self.asr_seconds += middle - began
        self.embed_seconds += time.perf_counter() - middle
        self.audio_seconds += len(audio) / EVAL_RATE
        self.count += 1
        ref, hyp = normalize_words(text), normalize_words(hypothesis)
        subs, dels, ins = edit_ops(ref, hyp)
        return {"text": text, "hypothesis": hypothesis, "words": len(ref), "substitutions": subs, "deletions": dels,
                "insertions": ins, "wer": (subs + dels + ins) / max(1, len(ref)),
                "similarity": cosine(embedding, prompt_embedding), "seconds": len(audio) / EVAL_RATE}


def summarise(rows: list[dict]) -> dict:
    words = sum(r["words"] for r in rows)
    errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    sims = [r["similarity"] for r in rows if r["similarity"] is not None and math.isfinite(r["similarity"])]
    summary = {"type": "summary", "voice": rows[0]["voice"], "system": rows[0]["system"], "utterances": len(rows),
               "words": words, "wer": errors / max(1, words), "mean_utterance_wer": float(np.mean([r["wer"] for r in rows])),
               "similarity": float(np.mean(sims)) if sims else math.nan, "similarity_n": len(sims),
               "seconds": sum(r["seconds"] for r in rows)}
    if rows[0]["system"] == "tts":
        taken = sum(r["synth_seconds"] for r in rows)
        summary |= {"failed": sum(r["failure"] is not None for r in rows),
                    "failed_first_attempt": sum(r["first_failure"] is not None for r in rows),
                    "synth_seconds": taken, "rtf": taken / max(summary["seconds"], 1e-9)}
    return summary


def _clean(value):
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(value, digits: int, percent: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def targets_rows(summaries: list[dict]) -> list[dict]:
    """Per voice: the four targets, measured value and whether it is met (None: no reference)."""
    out = []
    for voice in dict.fromkeys(s["voice"] for s in summaries):
        mine = {s["system"]: s for s in summaries if s["voice"] == voice}
        tts, real = mine["tts"], mine.get("real")
        wer_ratio = tts["wer"] / real["wer"] if real and real["wer"] > 0 else math.nan
        sim_ratio = tts["similarity"] / real["similarity"] if real and real["similarity"] > 0 else math.nan
        checks = [("WER / real WER", wer_ratio, f"<= {TARGETS['wer_ratio']}", wer_ratio <= TARGETS["wer_ratio"]),
                  ("failed generations", tts["failed"], f"{TARGETS['failures']} of {tts['utterances']}",
                   tts["failed"] <= TARGETS["failures"]),
                  ("similarity / real-real", sim_ratio, f">= {TARGETS['similarity_ratio']}",
                   sim_ratio >= TARGETS["similarity_ratio"]),
                  ("RTF", tts["rtf"], f"<= {TARGETS['rtf']}", tts["rtf"] <= TARGETS["rtf"])]
        for name, value, target, met in checks:
            known = value is not None and math.isfinite(value)
            out.append({"type": "target", "voice": voice, "target": name, "value": value, "goal": target,
                        "met": bool(met) if known else None})
    return out


def results_markdown(summaries: list[dict], targets: list[dict], header: list[str]) -> str:
    lines = ["# TTS evaluation", ""] + [f"- {line}" for line in header] + [""]
    lines += ["| voice | system | utterances | WER % | mean utt. WER % | similarity to prompt | failed (1st try) | RTF "
              + "| audio s |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        failed = f"{s['failed']} ({s['failed_first_attempt']})" if "failed" in s else "-"
        rtf = _fmt(s.get("rtf"), 3) if "rtf" in s else "-"
        lines.append(f"| {s['voice']} | {s['label']} | {s['utterances']} | {_fmt(s['wer'], 1, True)} | "
                     f"{_fmt(s['mean_utterance_wer'], 1, True)} | {_fmt(s['similarity'], 3)} | {failed} | {rtf} | "
                     f"{s['seconds']:.1f} |")
    if targets:
        lines += ["", "## Targets (reported, not asserted)", "", "| voice | target | value | goal | met |",
                  "|---|---|---|---|---|"]
        for t in targets:
            digits = 0 if t["target"] == "failed generations" else 3
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            lines.append(f"| {t['voice']} | {t['target']} | {_fmt(t['value'], digits)} | {t['goal']} | {met} |")
    lines += ["", "## Definitions", "",
              "WER: pocketsphinx 5 (US English model) on 16 kHz int16 audio; words normalised (front-end number and",
              "abbreviation expansion, lower case, punctuation removed); corpus WER = all edits / all reference words.",
              "Similarity: cosine of Resemblyzer embeddings, output vs the voice prompt (real: a real recording of the",
              "speaker vs the prompt). Failed: a chunk hit the AR length limit, had < 0.3 s (or < 25 ms per phoneme) of",
              "sound, or sound in < 30% of its frames, after the synthesizer's retries (first attempt in brackets).",
              "RTF: synthesis time / audio duration. Real and round-trip rows: dev-split recordings never trained on.",
              ""]
    return "\n".join(lines)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser) -> None:
    parser.add_argument("--voice", action="append", help="built-in voice to evaluate (repeatable; default kathleen)")
    parser.add_argument("--sentences", type=int, default=100, help="how many test sentences (default 100)")
    parser.add_argument("--sentence-file", default=str(SENTENCES_FILE),
                        help="one sentence per line, '#' comments (default: tts/eval_sentences.txt)")
    parser.add_argument("--references", type=int, default=20,
                        help="real dev-split recordings per voice for the reference rows (default 20; 0: none)")
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="manifest with the real recordings")
    parser.add_argument("--out", required=True, help="folder for results.md, results.jsonl, audio/")
    parser.add_argument("--ar", help="AR model folder (default weights/lm-ar; 'tiny': untrained test model)")
    parser.add_argument("--nar", help="NAR model folder (default weights/lm-nar; 'tiny': untrained test model)")
    parser.add_argument("--codec", help="codec name or folder (default: the one the models were trained with)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--max-frames-per-phoneme", type=float, default=None, help="AR length guard (default 12)")
    parser.add_argument("--retries", type=int, default=2, help="regenerations of a failed chunk (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--no-audio", action="store_true", help="do not keep the synthesised audio")
    parser.add_argument("--force", action="store_true", help="overwrite results already in --out")


def _synthesizer(args):
    from tokenlm.sampling import SamplingConfig
    from tts.synthesizer import SynthesisConfig, load

    overrides = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p),
                                   ("max_frames_per_phoneme", args.max_frames_per_phoneme)) if v is not None}
    config = SynthesisConfig(sampling=SamplingConfig(**overrides), retries=args.retries)
    device = args.device
    if device == "auto":
        from codec.distributed import resolve_device

        device = resolve_device("auto")
    return load(args.ar, args.nar, args.codec, device=device, config=config)


def main(args) -> int:
    """Run ``tokenwave eval-tts``; returns the exit code."""
    import torch

    from codec.evaluate import spread
    from tts.asr import Recognizer
    from tts.voices import get_voice

    def log(message: str) -> None:
        tqdm.write(message, file=sys.stderr)

    if args.sentences < 1 or args.references < 0:
        raise TTSError("--sentences must be >= 1 and --references >= 0")
    out = Path(args.out)
    existing = [name for name in RESULT_FILES if (out / name).exists()]
    if existing and not args.force:
        raise TTSError(f"{out / existing[0]} exists; use --force to overwrite")
    if out.exists() and not out.is_dir():
        raise TTSError(f"{out} is not a folder")
    voices = [get_voice(name) for name in dict.fromkeys(args.voice or ["kathleen"])]
    sentences = spread(read_sentences(args.sentence_file), args.sentences)
    if args.threads:
        torch.set_num_threads(args.threads)

    began = time.perf_counter()
    scorer = Scorer(Recognizer(), SpeakerEncoder())
    scorer_load = time.perf_counter() - began
    synth = _synthesizer(args)
    manifest = Path(args.manifest)
    if args.references and not manifest.is_file():
        log(f"note: {manifest} not found; no reference rows")

    rows: list[dict] = []
    total = len(voices) * len(sentences)
    bar = tqdm(total=total, desc="eval-tts", unit="sentence", file=sys.stderr)
    for voice in voices:
        prompt = synth.prepare_prompt(voice.name)
        prompt_embedding = scorer.speaker_encoder.embed(_at_rate(prompt.wav, synth.sample_rate))
        folder = out / "audio" / voice.name
        if not args.no_audio:
            folder.mkdir(parents=True, exist_ok=True)
        for i, sentence in enumerate(sentences):
            result = synth.run(sentence, voice=voice.name, seed=args.seed + i)
            failures = [c.failure for c in result.chunks if c.failure]
            first = [c.first_failure for c in result.chunks if c.first_failure]
            row = {"type": "utterance", "voice": voice.name, "system": "tts", "index": i,
                   **scorer.score(result.audio, result.sample_rate, sentence, prompt_embedding),
                   "synth_seconds": result.seconds_taken, "rtf": result.rtf,
                   "failure": failures[0] if failures else None, "first_failure": first[0] if first else None,
                   "attempts": max((c.attempts for c in result.chunks), default=0),
                   "frames": sum(c.frames for c in result.chunks)}
            if not args.no_audio and len(result.audio):
                from codec.audio import write_audio

                write_audio(folder / f"{i:03d}.flac", result.audio[None], result.sample_rate)
            rows.append(row)
            bar.update(1)
        if args.references and manifest.is_file() and voice.speaker:
            rows += _reference_rows(synth, scorer, voice, manifest, args.references, prompt_embedding, log)
    bar.close()

    summaries = []
    for voice in voices:
        for system, label in (("tts", f"TTS ({synth.codec.name})"), ("real", "real recordings"),
                              ("roundtrip", f"real, codec round trip ({synth.n_codebooks} codebooks)")):
            mine = [r for r in rows if r["voice"] == voice.name and r["system"] == system]
            if mine:
                summaries.append(summarise(mine) | {"label": label})
    targets = targets_rows(summaries)
    speed = {"type": "scorer_speed", "utterances": scorer.count, "audio_seconds": scorer.audio_seconds,
             "asr_seconds_per_utterance": scorer.asr_seconds / max(1, scorer.count),
             "asr_rtf": scorer.asr_seconds / max(scorer.audio_seconds, 1e-9),
             "embed_seconds_per_utterance": scorer.embed_seconds / max(1, scorer.count),
             "scorer_load_seconds": scorer_load}
    models = (f"models: AR `{args.ar or 'weights/lm-ar'}`, NAR `{args.nar or 'weights/lm-nar'}`, codec "
              f"`{synth.codec.name}` ({synth.n_codebooks} codebooks); seed {args.seed}; "
              f"{torch.get_num_threads()} torch thread(s)")
    inputs = (f"{len(sentences)} sentence(s) from `{Path(args.sentence_file).name}` per voice; voices: "
              + ", ".join(f"{v.name} ({v.seconds:.1f} s prompt)" for v in voices))
    scorers = (f"scorers: pocketsphinx {speed['asr_seconds_per_utterance']:.2f} s per utterance (RTF "
               f"{speed['asr_rtf']:.2f}), Resemblyzer {speed['embed_seconds_per_utterance']:.3f} s per utterance")
    header = [models, inputs, scorers]
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "results.jsonl", "".join(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n"
                                               for row in rows + summaries + targets + [speed]))
    _write_text(out / "results.md", results_markdown(summaries, targets, header))
    print(results_markdown(summaries, targets, header).split("\n## Definitions")[0].rstrip())
    print(f"\nwritten: {', '.join(str(out / name) for name in RESULT_FILES)}")
    return 0


def _at_rate(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    from codec.audio import resample

    return resample(np.asarray(wav, dtype=np.float32), sample_rate, EVAL_RATE)


def _reference_rows(synth, scorer: Scorer, voice, manifest: Path, limit: int, prompt_embedding, log) -> list[dict]:
    """Real recordings of the voice's speaker and their codec round trips, scored like the TTS."""
    import torch

    from codec.audio import load_audio
    from codec.errors import AudioError

    source = Path(voice.source_file).name if voice.source_file else ""
    recordings = reference_recordings(manifest, voice.speaker, limit, exclude=source)
    if not recordings:
        log(f"note: no dev-split recordings of speaker {voice.speaker!r} in {manifest}; no reference rows")
        return []
    rows = []
    codec, rate = synth.codec, synth.sample_rate
    bitrate = codec.codebooks_to_bitrate(synth.n_codebooks)
    for recording in tqdm(recordings, desc=f"references {voice.name}", unit="file", file=sys.stderr, leave=False):
        try:
            wav, _ = load_audio(recording.path, rate)
        except AudioError as error:
            log(f"error: {error}")
            continue
        codes = codec.encode(torch.from_numpy(wav), rate, bitrate=bitrate)
        decoded = codec.decode(codes, length=wav.shape[-1]).detach().cpu().numpy().reshape(-1)
        for system, audio in (("real", wav[0]), ("roundtrip", decoded)):
            rows.append({"type": "utterance", "voice": voice.name, "system": system, "file": str(recording.path),
                         **scorer.score(audio, rate, recording.text, prompt_embedding)})
    return rows
