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
  the utterances (corpus WER; the per-utterance mean is in the JSON); the **CER** is the same
  over the characters of the normalised words (joined by single spaces): it still moves where
  the WER is near 100%, when the recogniser hears some of the sounds but not the words;
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
through the codec at the NAR's number of codebooks, the same recordings' first layer with
layers 2..K filled by the NAR from the voice's prompt and decoded as in synthesis
(``--nar-decoding``; what the TTS would give with a perfect AR: it separates the NAR's share of
the errors from the AR's), and the similarity of each real
recording to the prompt (real-real similarity). Targets (reported, not asserted): WER <= 1.3 x real WER,
no failure, similarity >= 0.8 x real-real, RTF <= 0.5.

Zero-shot prompts (no target yet; their numbers are reported, not compared with targets):

- ``--prompt WAV [--prompt-text TEXT] [--prompt-name NAME] [--reference-speaker SPEAKER]``: any
  recording as the voice (without ``--prompt-text`` the synthesizer transcribes it with
  pocketsphinx), scored exactly like a built-in voice; with ``--reference-speaker``, the
  reference rows use up to ``--references`` recordings of that manifest speaker from any split
  (the prompt's own file left out).
- ``--unseen-speaker``: the speaker of the codec's ``unseen`` split (:data:`codec.data.UNSEEN_SPEAKERS`,
  ``fsdd_yweweler``: never trained on by the codec or the LMs). Their FSDD recordings are single
  spoken digits of about 0.4 s at 8 kHz, so the prompt is built (:func:`build_unseen_prompt`):
  digit recordings in a fixed order, each resampled to 16 kHz, its silent ends trimmed and its
  level set to -24 dBFS, joined with 0.15 s gaps until 3.5-5 s, transcript the digit words
  ("seven three nine ..."); it is saved as ``prompts/unseen-<speaker>.flac`` (+ ``.json``) in
  ``--out``. Single digits are too short for a speaker embedding, so the reference rows use up
  to ``--references`` sequences of that speaker's other digit recordings joined the same way
  (``prompts/unseen-<speaker>-ref-NN.flac``; digit sequences: their WER is not comparable with
  the sentences').

Built-in voices default to ``kathleen`` only when neither ``--prompt`` nor ``--unseen-speaker``
is given. ``results.md`` has a "Rows" section saying what every row is.

Outputs in ``--out``: ``results.md`` (tables), ``results.jsonl`` (one row per utterance, then
the summaries; NaN written as null) and, unless ``--no-audio``, ``audio/<voice>/NNN.flac``
(``audio/prompt-<name>/``, ``audio/unseen-<speaker>/`` for the zero-shot prompts).
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

from codec.atomic import atomic_write_text
from codec.evaluate import json_safe
from tts.errors import TTSError

SENTENCES_FILE = Path(__file__).resolve().parent / "eval_sentences.txt"
DEV_SENTENCES_FILE = Path(__file__).resolve().parent / "dev_sentences.txt"  # for trying changes first
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


def char_edits(reference: list[str], hypothesis: list[str]) -> tuple[int, int]:
    """``(edits, reference characters)`` between normalised word lists, as characters of the words
    joined by single spaces (the numerator and denominator of the CER)."""
    ref, hyp = " ".join(reference), " ".join(hypothesis)
    return sum(edit_ops(list(ref), list(hyp))), len(ref)


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


def reference_recordings(manifest: Path, speaker: str, limit: int, exclude: str | set[str] = "",
                         split: str | None = "dev") -> list:
    """Up to ``limit`` recordings (with transcripts) of ``speaker`` in ``split`` (None: any),
    spread evenly, leaving out any whose file name is (in) ``exclude``."""
    from codec.data import read_manifest, select_split
    from codec.evaluate import spread

    excluded = {exclude} if isinstance(exclude, str) else set(exclude)
    recordings = read_manifest(manifest)
    if split is not None:
        recordings = select_split(recordings, split)
    recordings = [r for r in recordings if r.speaker == speaker and r.text.strip() and r.path.name not in excluded]
    return spread(recordings, limit)


DIGIT_ORDER = ("seven", "three", "nine", "one", "five", "zero", "eight", "two", "six", "four")
PROMPT_GAP = 0.15  # seconds of silence between the joined digit recordings of the unseen speaker
PROMPT_SECONDS = (3.5, 5.0)  # digits are added until a sequence is at least 3.5 s, never past 5 s


def unseen_speaker() -> str:
    """The speaker of the ``unseen`` split (:data:`codec.data.UNSEEN_SPEAKERS`)."""
    from codec.data import UNSEEN_SPEAKERS

    return min(UNSEEN_SPEAKERS)


def join_digits(recordings: list, sample_rate: int = EVAL_RATE) -> tuple[np.ndarray, list[str], list[Path]]:
    """``recordings`` (one spoken word each) joined in order into ``[N]`` at ``sample_rate``:
    each resampled, silent ends trimmed (20 ms kept), level set to -24 dBFS, :data:`PROMPT_GAP` s
    apart; recordings are added until :data:`PROMPT_SECONDS` (3.5 s, never past 5 s). Returns the
    audio, its words and the files used (unreadable files are skipped)."""
    from codec.audio import load_audio
    from codec.errors import AudioError
    from tts.synthesizer import set_level, trim_silence

    gap = np.zeros(round(PROMPT_GAP * sample_rate), np.float32)
    pieces, words, files, total = [], [], [], 0.0
    for recording in recordings:
        try:
            wav, _ = load_audio(recording.path, sample_rate)
        except AudioError:
            continue
        piece = trim_silence(wav[0], sample_rate, 0.02, 0.02)
        seconds = (len(piece) + (len(gap) if pieces else 0)) / sample_rate
        if not len(piece) or total + seconds > PROMPT_SECONDS[1]:
            continue
        pieces += ([gap] if pieces else []) + [set_level(piece, sample_rate, -24.0)]
        words.append(recording.text.strip().lower())
        files.append(recording.path)
        total += seconds
        if total >= PROMPT_SECONDS[0]:
            break
    return (np.concatenate(pieces) if pieces else np.zeros(0, np.float32)), words, files


@dataclass
class UnseenPrompt:
    """:func:`build_unseen_prompt`'s result: the prompt file, its transcript and source files,
    and the reference recordings (joined digit sequences, written beside it)."""

    path: Path
    transcript: str
    files: list[Path]
    references: list  # codec.data.Recording of each written reference sequence


def build_unseen_prompt(manifest: Path, folder: Path, speaker: str | None = None, references: int = 0,
                        sample_rate: int = EVAL_RATE) -> UnseenPrompt:
    """A 3.5-5 s prompt of the unseen speaker, and up to ``references`` reference sequences.

    The speaker's (default :func:`unseen_speaker`) recordings in the manifest's ``unseen`` split
    are single spoken digits (FSDD, about 0.4 s at 8 kHz): too short for Resemblyzer, so the
    prompt and the references are sequences of them (:func:`join_digits`). Take ``j`` is the
    ``j``-th recording (sorted by path) of every digit, in :data:`DIGIT_ORDER` rotated by
    ``3 j``; the prompt is take 0, the references are takes spread evenly over the others (no
    recording in two sequences). Written to ``folder``: ``unseen-<speaker>.flac`` (prompt),
    ``unseen-<speaker>-ref-NN.flac`` (references) and ``unseen-<speaker>.json`` (transcripts and
    source files)."""
    from codec.audio import write_audio
    from codec.data import Recording, read_manifest, select_split
    from codec.errors import TokenwaveError
    from codec.evaluate import spread

    speaker = speaker or unseen_speaker()
    try:
        recordings = [r for r in select_split(read_manifest(manifest), "unseen") if r.speaker == speaker]
    except TokenwaveError as error:  # unreadable manifest
        raise TTSError(f"--unseen-speaker: {error}") from None
    by_digit: dict[str, list] = {}
    for r in sorted(recordings, key=lambda r: str(r.path)):
        by_digit.setdefault(r.text.strip().lower(), []).append(r)
    count = max((len(by_digit.get(d, [])) for d in DIGIT_ORDER), default=0)
    takes = [[by_digit[d][j] for d in DIGIT_ORDER[3 * j % 10:] + DIGIT_ORDER[: 3 * j % 10]
              if j < len(by_digit.get(d, []))] for j in range(count)]
    if not takes:
        raise TTSError(f"no digit recordings of the unseen speaker {speaker!r} in {manifest}")
    wav, words, files = join_digits(takes[0], sample_rate)
    if len(wav) < 3.0 * sample_rate:
        raise TTSError(f"only {len(wav) / sample_rate:.1f} s of readable digit recordings of {speaker!r} in "
                       f"{manifest}; a prompt needs 3 s")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"unseen-{speaker}.flac"
    write_audio(path, wav[None], sample_rate)
    info = {"speaker": speaker, "split": "unseen", "transcript": " ".join(words),
            "seconds": round(len(wav) / sample_rate, 3), "gap_seconds": PROMPT_GAP,
            "files": [str(f) for f in files], "references": []}
    refs = []
    for j in spread(list(range(1, len(takes))), references):
        ref, ref_words, ref_files = join_digits(takes[j], sample_rate)
        if not len(ref):
            continue
        ref_path = folder / f"unseen-{speaker}-ref-{j:02d}.flac"
        write_audio(ref_path, ref[None], sample_rate)
        refs.append(Recording(ref_path, speaker, " ".join(ref_words)))
        info["references"].append({"file": ref_path.name, "transcript": " ".join(ref_words),
                                   "seconds": round(len(ref) / sample_rate, 3),
                                   "files": [str(f) for f in ref_files]})
    atomic_write_text(path.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return UnseenPrompt(path, " ".join(words), files, refs)


@dataclass
class Entry:
    """One voice under evaluation: a built-in voice, or a prompt recording (zero-shot)."""

    name: str  # the ``voice`` of its rows and its label in the tables
    folder: str  # audio/<folder>/
    voice: str | None = None  # built-in voice name
    prompt: Path | None = None  # or a prompt recording ...
    prompt_text: str = ""  # ... and its transcript (empty: transcribed by the synthesizer)
    speaker: str = ""  # manifest speaker of the reference rows ("" : none)
    exclude: frozenset = frozenset()  # file names never used as references (the prompt's own)
    split: str | None = "dev"  # split of the reference recordings (None: any)
    kind: str = "voice"  # "voice" (built-in), "prompt" (--prompt) or "unseen" (--unseen-speaker)
    sources: tuple = ()  # --unseen-speaker: the recordings the prompt is made of ...
    references: tuple = ()  # ... and its reference recordings (used instead of the manifest's)
    prompt_seconds: float = 0.0  # of the prepared prompt, once known

    @property
    def zero_shot(self) -> bool:
        return self.kind != "voice"


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
        char_errors, chars = char_edits(ref, hyp)
        return {"text": text, "hypothesis": hypothesis, "words": len(ref), "substitutions": subs, "deletions": dels,
                "insertions": ins, "wer": (subs + dels + ins) / max(1, len(ref)),
                "chars": chars, "char_errors": char_errors, "cer": char_errors / max(1, chars),
                "similarity": cosine(embedding, prompt_embedding), "seconds": len(audio) / EVAL_RATE}


def summarise(rows: list[dict]) -> dict:
    words = sum(r["words"] for r in rows)
    errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rows)
    sims = [r["similarity"] for r in rows if r["similarity"] is not None and math.isfinite(r["similarity"])]
    summary = {"type": "summary", "voice": rows[0]["voice"], "system": rows[0]["system"], "utterances": len(rows),
               "words": words, "wer": errors / max(1, words), "mean_utterance_wer": float(np.mean([r["wer"] for r in rows])),
               "cer": sum(r.get("char_errors", 0) for r in rows) / max(1, sum(r.get("chars", 0) for r in rows)),
               "similarity": float(np.mean(sims)) if sims else math.nan, "similarity_n": len(sims),
               "seconds": sum(r["seconds"] for r in rows)}
    if rows[0]["system"] == "tts":
        taken = sum(r["synth_seconds"] for r in rows)
        summary |= {"failed": sum(r["failure"] is not None for r in rows),
                    "failed_first_attempt": sum(r["first_failure"] is not None for r in rows),
                    "synth_seconds": taken, "rtf": taken / max(summary["seconds"], 1e-9)}
    return summary


def _fmt(value, digits: int, percent: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def targets_rows(summaries: list[dict]) -> list[dict]:
    """Per voice: the four targets, measured value and whether it is met (None: no reference).
    Zero-shot prompts have no target yet."""
    out = []
    for voice in dict.fromkeys(s["voice"] for s in summaries if not s.get("zero_shot")):
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


def results_markdown(summaries: list[dict], targets: list[dict], header: list[str],
                     described: list[tuple[str, str]] = ()) -> str:
    """The tables; ``described``: ``(voice, what its rows are)`` for the "Rows" section."""
    lines = ["# TTS evaluation", ""] + [f"- {line}" for line in header] + [""]
    lines += ["| voice | system | utterances | WER % | mean utt. WER % | CER % | similarity to prompt | failed (1st try) "
              + "| RTF | audio s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        failed = f"{s['failed']} ({s['failed_first_attempt']})" if "failed" in s else "-"
        rtf = _fmt(s.get("rtf"), 3) if "rtf" in s else "-"
        lines.append(f"| {s['voice']} | {s['label']} | {s['utterances']} | {_fmt(s['wer'], 1, True)} | "
                     f"{_fmt(s['mean_utterance_wer'], 1, True)} | {_fmt(s['cer'], 1, True)} | "
                     f"{_fmt(s['similarity'], 3)} | {failed} | {rtf} | "
                     f"{s['seconds']:.1f} |")
    if targets:
        lines += ["", "## Targets (reported, not asserted)", "", "| voice | target | value | goal | met |",
                  "|---|---|---|---|---|"]
        for t in targets:
            digits = 0 if t["target"] == "failed generations" else 3
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            lines.append(f"| {t['voice']} | {t['target']} | {_fmt(t['value'], digits)} | {t['goal']} | {met} |")
    if any(s.get("zero_shot") for s in summaries):
        lines += ["", "Zero-shot prompts have no target yet: their rows are reported only."]
    if described:
        lines += ["", "## Rows", ""] + [f"- **{voice}**: {what}" for voice, what in described]
    lines += ["", "## Definitions", "",
              "WER: pocketsphinx 5 (US English model) on 16 kHz int16 audio; words normalised (front-end number and",
              "abbreviation expansion, lower case, punctuation removed); corpus WER = all edits / all reference words.",
              "CER: the same over the characters of the normalised words joined by single spaces.",
              "Similarity: cosine of Resemblyzer embeddings, output vs the voice prompt (real: a real recording of the",
              "speaker vs the prompt). Failed: a chunk hit the AR length limit, had < 0.3 s (or < 25 ms per phoneme) of",
              "sound, or sound in < 30% of its frames, after the synthesizer's retries (first attempt in brackets).",
              "RTF: synthesis time / audio duration. Real and round-trip rows of built-in voices: dev-split",
              "recordings never trained on; of zero-shot prompts: the recordings named in the Rows section.",
              ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser) -> None:
    from tts.speak import add_candidate_arguments

    parser.add_argument("--voice", action="append",
                        help="built-in voice to evaluate (repeatable; default kathleen unless --prompt or "
                             "--unseen-speaker is given)")
    parser.add_argument("--prompt", metavar="WAV",
                        help="evaluate this recording (any format) as a zero-shot voice prompt")
    parser.add_argument("--prompt-text", help="with --prompt: its transcript (default: transcribed by pocketsphinx)")
    parser.add_argument("--prompt-name",
                        help="with --prompt: its name in the tables (default: the file's stem)")
    parser.add_argument("--reference-speaker", metavar="SPEAKER",
                        help="with --prompt: manifest speaker whose real recordings (any split) give the reference rows")
    parser.add_argument("--unseen-speaker", action="store_true",
                        help="evaluate a zero-shot prompt of the unseen speaker (fsdd_yweweler, never "
                             "trained on): 3.5-5 s of their digit recordings from --manifest; sequences of "
                             "their other digit recordings are the references")
    parser.add_argument("--sentences", type=int, default=100, help="how many test sentences (default 100)")
    parser.add_argument("--sentence-file", default=str(SENTENCES_FILE),
                        help="one sentence per line, '#' comments (default: tts/eval_sentences.txt)")
    parser.add_argument("--references", type=int, default=20,
                        help="real recordings per voice for the reference rows (default 20; 0: none)")
    parser.add_argument("--manifest", default=str(DEFAULT_MANIFEST), help="manifest with the real recordings")
    parser.add_argument("--out", required=True, help="folder for results.md, results.jsonl, audio/")
    parser.add_argument("--ar", help="AR model folder (default weights/lm-ar; 'tiny': untrained test model)")
    parser.add_argument("--nar", help="NAR model folder (default weights/lm-nar; 'tiny': untrained test model)")
    parser.add_argument("--codec", help="codec name or folder (default: the one the models were trained with)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--text-guidance", type=float, default=None, help="classifier-free guidance on the text (1: off)")
    parser.add_argument("--max-frames-per-phoneme", type=float, default=None, help="AR length guard (default 12)")
    parser.add_argument("--nar-decoding", choices=["expected", "argmax"], default="expected",
                        help="decoder input of layers 2..K: expected code vectors (default) or the argmax codes")
    parser.add_argument("--nar-temperature", type=float, default=0.5,
                        help="softmax temperature of --nar-decoding expected (default 0.5)")
    add_candidate_arguments(parser)
    parser.add_argument("--layer-rows", metavar="K,K,...",
                        help="extra reference rows: the real recordings decoded from their first K codebooks only "
                             "(e.g. 1,2,4), the WER floor of a TTS whose NAR gets layers K+1.. wrong")
    parser.add_argument("--retries", type=int, default=2, help="regenerations of a failed chunk (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--no-audio", action="store_true", help="do not keep the synthesised audio")
    parser.add_argument("--force", action="store_true", help="overwrite results already in --out")


def _synthesizer(args):
    from tts.synthesizer import SynthesisConfig, load

    overrides = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p),
                                   ("text_guidance", args.text_guidance),
                                   ("max_frames_per_phoneme", args.max_frames_per_phoneme)) if v is not None}
    config = SynthesisConfig(sampling=overrides, retries=args.retries, nar_decoding=args.nar_decoding,
                             nar_temperature=args.nar_temperature, candidates=args.candidates,
                             candidate_score=args.candidate_score)
    device = args.device
    if device == "auto":
        from codec.distributed import resolve_device

        device = resolve_device("auto")
    return load(args.ar, args.nar, args.codec, device=device, config=config)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "prompt"


def _entries(args, manifest: Path, out: Path) -> list[Entry]:
    """The voices to evaluate: built-in voices, then ``--prompt``, then ``--unseen-speaker``
    (whose prompt is written to ``out/prompts/``)."""
    from codec.data import read_manifest
    from tts.voices import get_voice

    if not args.prompt and (args.prompt_text or args.prompt_name or args.reference_speaker):
        raise TTSError("--prompt-text, --prompt-name and --reference-speaker go with --prompt WAV")
    names = args.voice or ([] if args.prompt or args.unseen_speaker else ["kathleen"])
    entries = []
    for voice in (get_voice(name) for name in dict.fromkeys(names)):
        exclude = frozenset({Path(voice.source_file).name}) if voice.source_file else frozenset()
        entries.append(Entry(voice.name, voice.name, voice=voice.name, speaker=voice.speaker, exclude=exclude))
    if args.prompt:
        path = Path(args.prompt)
        if not path.is_file():
            raise TTSError(f"prompt recording {path} not found")
        name = args.prompt_name or path.stem
        speaker = args.reference_speaker or ""
        if (speaker and args.references and manifest.is_file()
                and speaker not in {r.speaker for r in read_manifest(manifest)}):
            raise TTSError(f"--reference-speaker {speaker!r}: no such speaker in {manifest}")
        entries.append(Entry(f"prompt: {name} (zero-shot)", f"prompt-{_slug(name)}", prompt=path,
                             prompt_text=(args.prompt_text or "").strip(), speaker=speaker,
                             exclude=frozenset({path.name}), split=None, kind="prompt"))
    if args.unseen_speaker:
        if not manifest.is_file():
            raise TTSError(f"--unseen-speaker needs the manifest {manifest} (not found; see --manifest)")
        speaker = unseen_speaker()
        built = build_unseen_prompt(manifest, out / "prompts", speaker, args.references)
        entries.append(Entry(f"unseen: {speaker} (zero-shot)", f"unseen-{speaker}", prompt=built.path,
                             prompt_text=built.transcript, speaker=speaker, split="unseen", kind="unseen",
                             sources=tuple(built.files), references=tuple(built.references)))
    return entries


def _describe(entry: Entry, prompt, references: int, sentences: int, n_codebooks: int, out: Path) -> str:
    """What the rows of ``entry`` are, for the "Rows" section of results.md."""
    said = {"given": "transcript", "asr": "transcript by pocketsphinx", "none": "no transcript"}[
        prompt.transcript_source]
    text = f'{said}: "{prompt.transcript}"' if prompt.transcript else said
    if entry.kind == "voice":
        head = f"built-in voice `{entry.voice}` ({prompt.seconds:.1f} s prompt, {text})."
        where = (f"{references} dev-split recording(s) of speaker `{entry.speaker}` (never trained on; the "
                 "prompt's own recording left out)")
    elif entry.kind == "prompt":
        head = f"zero-shot prompt recording `{entry.prompt}` ({prompt.seconds:.1f} s used, {text}); no target yet."
        where = (f"{references} recording(s) of manifest speaker `{entry.speaker}` (any split; the prompt's file "
                 "left out)")
    else:
        head = (f"zero-shot prompt of speaker `{entry.speaker}`, the codec's unseen split (never trained on by the "
                f"codec or the LMs): {len(entry.sources)} of their FSDD digit recordings (8 kHz, resampled to "
                f"16 kHz) joined with {PROMPT_GAP:g} s gaps into `{entry.prompt.relative_to(out)}` "
                f"({prompt.seconds:.1f} s, {text}); no target yet.")
        where = (f"{references} sequence(s) of 3.5-5 s of `{entry.speaker}`'s other digit recordings joined "
                 f"the same way (`prompts/unseen-{entry.speaker}-ref-NN.flac`; digit sequences: their WER is "
                 "not comparable with the sentences')")
    rows = f"TTS row: the {sentences} sentence(s) above synthesised with this prompt."
    if references:
        rows += (f" Real recordings: {where}, similarity of each to the prompt (real-real). Codec round trip: "
                 f"the same recordings encoded and decoded at {n_codebooks} codebooks. Layer 1 + NAR: their first "
                 "codebook layer with layers 2..K filled by the NAR from this prompt (a perfect AR).")
    elif entry.kind == "prompt" and not entry.speaker:
        rows += " No reference rows (no --reference-speaker)."
    else:
        rows += " No reference rows."
    return f"{head} {rows}"


def main(args) -> int:
    """Run ``tokenwave eval-tts``; returns the exit code."""
    import torch

    from codec.evaluate import spread
    from tts.asr import Recognizer

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
    manifest = Path(args.manifest)
    sentences = spread(read_sentences(args.sentence_file), args.sentences)
    entries = _entries(args, manifest, out)
    layer_rows = parse_layer_rows(args.layer_rows)
    if args.threads:
        torch.set_num_threads(args.threads)

    began = time.perf_counter()
    scorer = Scorer(Recognizer(), SpeakerEncoder())
    scorer_load = time.perf_counter() - began
    synth = _synthesizer(args)
    if args.references and not manifest.is_file():
        log(f"note: {manifest} not found; no reference rows")

    rows: list[dict] = []
    described: list[tuple[str, str]] = []
    bar = tqdm(total=len(entries) * len(sentences), desc="eval-tts", unit="sentence", file=sys.stderr)
    for entry in entries:
        prompt_text = entry.prompt_text or None
        prompt = synth.prepare_prompt(entry.voice, entry.prompt, prompt_text)
        prompt_embedding = scorer.speaker_encoder.embed(_at_rate(prompt.wav, synth.sample_rate))
        folder = out / "audio" / entry.folder
        if not args.no_audio:
            folder.mkdir(parents=True, exist_ok=True)
        for i, sentence in enumerate(sentences):
            result = synth.run(sentence, voice=entry.voice, prompt=entry.prompt, prompt_text=prompt_text,
                               seed=args.seed + i)
            failures = [c.failure for c in result.chunks if c.failure]
            first = [c.first_failure for c in result.chunks if c.first_failure]
            row = {"type": "utterance", "voice": entry.name, "system": "tts", "index": i,
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
        recordings = list(entry.references)
        if args.references and manifest.is_file() and entry.speaker and not recordings:
            recordings = reference_recordings(manifest, entry.speaker, args.references, entry.exclude, entry.split)
            if not recordings:
                log(f"note: no {entry.split or 'any'}-split recordings of speaker {entry.speaker!r} in {manifest}; "
                    "no reference rows")
        rows += _reference_rows(synth, scorer, entry.name, recordings, prompt, prompt_embedding, log, layer_rows)
        references = len([r for r in rows if r["voice"] == entry.name and r["system"] == "real"])
        described.append((entry.name, _describe(entry, prompt, references, len(sentences), synth.n_codebooks, out)))
        entry.prompt_seconds = prompt.seconds
    bar.close()

    summaries = []
    for entry in entries:
        systems = [("tts", f"TTS ({synth.codec.name})"), ("real", "real recordings"),
                   ("roundtrip", f"real, codec round trip ({synth.n_codebooks} codebooks)")]
        systems += [(f"layers_{k}", f"real, round trip with the first {k} codebook(s) only") for k in layer_rows]
        systems += [("nar_fill", "real layer 1 + NAR layers 2..K (a perfect AR)")]
        for system, label in systems:
            mine = [r for r in rows if r["voice"] == entry.name and r["system"] == system]
            if mine:
                summaries.append(summarise(mine) | {"label": label, "zero_shot": entry.zero_shot})
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
              + ", ".join(f"{e.name} ({e.prompt_seconds:.1f} s prompt)" for e in entries))
    scorers = (f"scorers: pocketsphinx {speed['asr_seconds_per_utterance']:.2f} s per utterance (RTF "
               f"{speed['asr_rtf']:.2f}), Resemblyzer {speed['embed_seconds_per_utterance']:.3f} s per utterance")
    used = synth.sampling
    sampling = (f"AR sampling: temperature {used.temperature:g}, top-k {used.top_k}, top-p {used.top_p:g}, "
                f"text guidance {used.text_guidance:g}, repetition-aware (window {used.repetition_window}, "
                f"threshold {used.repetition_threshold}); NAR decoding: {synth.nar_decoding}"
                + (f" (temperature {synth.config.nar_temperature:g})" if synth.nar_decoding == "expected" else "")
                + (f"; best of {synth.config.candidates} AR candidates by {synth.config.candidate_score}"
                   if synth.config.candidates > 1 else ""))
    header = [models, sampling, inputs, scorers]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.jsonl", "".join(json.dumps({k: json_safe(v) for k, v in row.items()}) + "\n"
                                               for row in rows + summaries + targets + [speed]))
    markdown = results_markdown(summaries, targets, header, described)
    atomic_write_text(out / "results.md", markdown)
    print(markdown.split("\n## Rows")[0].split("\n## Definitions")[0].rstrip())
    print(f"\nwritten: {', '.join(str(out / name) for name in RESULT_FILES)}")
    return 0


def _at_rate(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    from codec.audio import resample

    return resample(np.asarray(wav, dtype=np.float32), sample_rate, EVAL_RATE)


def parse_layer_rows(text: str | None) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (sorted, unique, each >= 1); None or ``""`` -> ``[]``."""
    if not text:
        return []
    try:
        layers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise TTSError(f"--layer-rows takes comma-separated codebook counts such as 1,2,4, got {text!r}") from None
    if not layers or layers[0] < 1:
        raise TTSError(f"--layer-rows: codebook counts must be >= 1, got {text!r}")
    return layers


def _reference_rows(synth, scorer: Scorer, name: str, recordings: list, prompt, prompt_embedding, log,
                    layer_rows: list[int] = ()) -> list[dict]:
    """Real ``recordings`` of a voice's speaker, their codec round trips (also with only the first
    k codebooks, for k in ``layer_rows`` below the NAR's K: how much each layer carries), and their
    first codebook layer with layers 2..K filled by the NAR (conditioned on the voice's ``prompt``
    as in synthesis: what the TTS would give with a perfect AR), scored like the TTS (rows of
    voice ``name``)."""
    import torch

    from codec.audio import load_audio
    from codec.errors import AudioError
    from tokenlm.errors import LMError

    rows = []
    codec, rate = synth.codec, synth.sample_rate
    bitrate = codec.codebooks_to_bitrate(synth.n_codebooks)
    for recording in tqdm(recordings, desc=f"references {name}", unit="file", file=sys.stderr, leave=False):
        try:
            wav, _ = load_audio(recording.path, rate)
        except AudioError as error:
            log(f"error: {error}")
            continue
        codes = codec.encode(torch.from_numpy(wav), rate, bitrate=bitrate)
        decoded = codec.decode(codes, length=wav.shape[-1]).detach().cpu().numpy().reshape(-1)
        systems = [("real", wav[0]), ("roundtrip", decoded)]
        for k in (k for k in layer_rows if k < codes.shape[1]):
            truncated = codec.decode(codes[:, :k], length=wav.shape[-1]).detach().cpu().numpy().reshape(-1)
            systems.append((f"layers_{k}", truncated))
        try:
            target = synth._ids(recording.text) if recording.text.strip() else None
            if target is not None and len(target):
                filled, vectors = synth.fill(prompt, [torch.cat([prompt.text_prefix, target])], [codes[0, 0].cpu()])[0]
                systems.append(("nar_fill", synth.render(filled, vectors, length=wav.shape[-1])))
        except LMError as error:  # e.g. a recording longer than the NAR's context
            log(f"note: no NAR-fill row for {recording.path}: {error}")
        for system, audio in systems:
            rows.append({"type": "utterance", "voice": name, "system": system, "file": str(recording.path),
                         **scorer.score(audio, rate, recording.text, prompt_embedding)})
    return rows
