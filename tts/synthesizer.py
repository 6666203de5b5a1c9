"""Text to speech with the token LMs: text -> chunks -> phonemes -> AR -> NAR -> codec -> audio.

Pipeline (VALL-E style, zero-shot voice from a prompt recording):

1. **Prompt.** A built-in voice (:mod:`tts.voices`) or any recording: downmixed to mono,
   resampled to the codec's rate (16 kHz), its silent ends trimmed to 0.1 s, cut to at most
   ``max_prompt_seconds`` (default 10 s), and brought to a normal level when far too quiet or
   loud. It is encoded with the codec at the NAR's K codebooks; only frames wholly inside the
   prompt are kept: codes ``[K, Tp]``.
2. **Text.** :func:`tts.sentences.split_text` cuts the text into sentences and clause chunks
   (at most ``max_words`` words) with the pause after each; each chunk goes through the
   front-end (:func:`tokenlm.text.text_to_ids`: normalisation, gruut phonemes).
3. **AR.** Per chunk the AR model continues ``[prompt phonemes + chunk phonemes] [bos, prompt
   layer-1 codes]`` with the chunk's layer-1 codes (temperature / top-k / top-p /
   repetition-aware sampling, length guards of :mod:`tokenlm.generate`). The length guards
   follow the prompt's pace (``pace``, default (0.7, 1.8)): with ``r`` the prompt's sounding
   20 ms frames per phoneme (its pauses left out; clamped to 2.5..8; 3.7, the median of the
   training speech, without a transcript),
   eos is masked before ``0.7 r`` frames per target phoneme and the output ends at ``1.8 r``
   (plus 25 frames). Without this the AR, trained on a corpus that is nearly 60% one-word digit
   recordings, tends to end sentences far too early. Chunks are generated
   in batches (``batch_size`` rows, sorted by length), so many sentences cost little more than
   one. With ``candidates`` N > 1 each chunk is sampled N times in the same batch and the sample
   the AR scores best is kept (``candidate_score``: ``"text"``, the mean pointwise mutual
   information with the text from the two branches of text guidance, or ``"likelihood"``, the
   mean log-probability; :class:`tokenlm.generate.ARScores`). Measured on the shipped LMs: no
   WER gain at N = 4 for 1.6-1.8x the time (the AR's card), so the default is 1.
4. **NAR.** Layers 2..K, one greedy pass per layer, conditioned on the phonemes and all K layers
   of the prompt. With ``nar_decoding="expected"`` (default) the decoder input of layers 2..K is
   the expected code vector under each pass's distribution (softmax of its logits /
   ``nar_temperature``, default 0.5; :func:`tokenlm.generate.nar_fill_expected`) instead of the
   argmax code's vector (``"argmax"``). ``tokenwave eval-tts`` with the shipped models (Kathleen):
   TTS WER 67.7% against 71.0% with argmax codes; real layer 1 + NAR 47.9% against 57.5% (layer
   1 alone 56.9%). The argmax codes still condition the later passes, as in training.
5. **Decode.** The codec decodes the last ``DECODE_CONTEXT`` frames of the prompt followed by the
   chunk's codes (the decoder runs warm into the chunk, as in ``tokenwave continue``); the
   context's samples are dropped. Silent ends are trimmed (50 ms kept at the start, 100 ms at the
   end), each chunk is brought to ``output_dbfs`` (RMS over its sounding 20 ms frames, default
   -20 dBFS, peaks kept below 0.95; the training speech, and so the raw output, ranges from about
   -35 to -20 dBFS), 5 ms fades are applied, and chunks are joined with the pauses of step 2.

**Failed generations** (:func:`check_chunk`): the AR hit its maximum length without ending
(``max_length``); less than 0.3 s or less than 25 ms per phoneme of sound (``empty``); sound in
less than 30% of the generated frames (``silence``). A failed chunk is generated again with
another seed up to ``retries`` times (default 2); the report keeps both counts.

**Prompts without a transcript** (``no_transcript``): ``"asr"`` transcribes the prompt with
pocketsphinx (:mod:`tts.asr`, about 0.4 s per second of prompt) and then proceeds as with a
transcript: the AR model was trained on whole utterances, so its prefix must be the prompt's
text followed by the target's. ``"acoustic"`` (used when pocketsphinx is not installed, with a
note): the AR runs on the target phonemes alone without the prompt's codes (an utterance from
the start, as in training; the speaker is then the model's choice), and only the NAR is
conditioned on the prompt's codes, so the voice is matched less well. Feeding the prompt's codes
without their text to the AR would make it treat them as the first words of the target and skip
them. ``"auto"`` (default): ``"asr"`` when pocketsphinx imports, else ``"acoustic"``.

Streaming (:meth:`Synthesizer.stream`): chunks are generated one at a time (the first one cut
to at most ``first_chunk_words`` words for a short time to first audio), each yielded in pieces
of ``stream_frames`` frames as soon as it is ready, followed by its pause. The granularity is
the chunk: the NAR is bidirectional, so a chunk's codes all exist at the same moment, after
its AR and NAR passes; decoding them (about 0.5% of real time) is not what the listener waits
for, so the codec's streaming decoder would not shorten the wait, and the whole-chunk decode
lets each chunk be checked (and regenerated when it failed) before any of it is played.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tokenlm.errors import LMError
from tokenlm.sampling import SamplingConfig, model_sampling
from tts.errors import TTSError
from tts.sentences import MAX_WORDS, PAUSES, Chunk, split_long, split_text

DECODE_CONTEXT = 10  # prompt frames decoded before each chunk (200 ms at 50 Hz)
FRAME_SECONDS = 0.02  # activity analysis
ACTIVE_DB = 40.0  # a frame is sound when within this many dB of the loudest frame ...
FLOOR_DBFS = -60.0  # ... and above this absolute level
MIN_SOUND_SECONDS = 0.3
MIN_SOUND_PER_PHONEME = 0.025
MIN_SOUND_FRACTION = 0.3
MIN_PROMPT_SECONDS = 1.0
PROMPT_LEVEL = (-40.0, -12.0)  # dBFS RMS over sound frames; outside, the prompt is scaled to -24
NO_TRANSCRIPT_MODES = ("auto", "asr", "acoustic")
NAR_DECODINGS = ("expected", "argmax")
CANDIDATE_SCORES = ("text", "likelihood")
TYPICAL_FRAMES_PER_PHONEME = 3.7  # median over the training speech (Kathleen 3.8, LJSpeech 3.9, synthetic 3.5)
PROMPT_RATE_RANGE = (2.5, 8.0)  # frames per phoneme a prompt's pace is clamped to
PAUSE_ALLOWANCE = 1.2  # a paced AR's prompt pace counts at most this x the prompt's sounding frames


@dataclass
class SynthesisConfig:
    """Options of :class:`Synthesizer` (see the module docstring)."""

    # tokenlm.sampling.SamplingConfig (used as is), or a dict of overrides of the AR's recommended
    # sampling (its config.json "sampling"; tokenlm.sampling.model_sampling), or None: that alone
    sampling: object = None
    max_words: int = MAX_WORDS
    batch_size: int = 8
    retries: int = 2
    pauses: dict = field(default_factory=dict)  # overrides of tts.sentences.PAUSES
    max_prompt_seconds: float = 10.0
    no_transcript: str = "auto"
    first_chunk_words: int = 8
    min_words: int = 3  # shorter sentences are joined to a neighbour (tts.sentences.join_short)
    stream_frames: int = 25
    output_dbfs: float | None = -20.0  # None: keep the generated level
    pace: tuple[float, float] | None = (0.7, 1.8)  # length guards x the prompt's frames/phoneme; None: off
    nar_decoding: str = "expected"  # decoder input of layers 2..K: "expected" code vectors or "argmax" codes
    nar_temperature: float = 0.5  # softmax temperature of "expected"
    candidates: int = 1  # AR samples per chunk; the one the AR scores best is kept (module docstring, step 3)
    candidate_score: str = "text"  # "text": text information per token, "likelihood": mean log-prob

    def __post_init__(self):
        if self.sampling is not None and not isinstance(self.sampling, (dict, SamplingConfig)):
            raise TTSError("sampling must be a SamplingConfig, a dict of overrides or None")
        if self.no_transcript not in NO_TRANSCRIPT_MODES:
            raise TTSError(f"no_transcript must be one of {', '.join(NO_TRANSCRIPT_MODES)}, got {self.no_transcript!r}")
        if min(self.batch_size, self.max_words, self.first_chunk_words, self.min_words) < 1 or self.retries < 0:
            raise TTSError("batch_size, max_words, first_chunk_words and min_words must be >= 1, retries >= 0")
        if self.pace is not None and not 0.0 < self.pace[0] < self.pace[1]:
            raise TTSError(f"pace must be (low, high) with 0 < low < high, got {self.pace}")
        if self.nar_decoding not in NAR_DECODINGS:
            raise TTSError(f"nar_decoding must be one of {', '.join(NAR_DECODINGS)}, got {self.nar_decoding!r}")
        if not (isinstance(self.nar_temperature, (int, float)) and 0.0 < self.nar_temperature < float("inf")):
            raise TTSError(f"nar_temperature must be a number > 0, got {self.nar_temperature!r}")
        if not (isinstance(self.candidates, int) and self.candidates >= 1):
            raise TTSError(f"candidates must be an integer >= 1, got {self.candidates!r}")
        if self.candidate_score not in CANDIDATE_SCORES:
            raise TTSError(f"candidate_score must be one of {', '.join(CANDIDATE_SCORES)}, got {self.candidate_score!r}")
        if self.stream_frames < 1 or not self.max_prompt_seconds >= MIN_PROMPT_SECONDS:
            raise TTSError(f"stream_frames must be >= 1 and max_prompt_seconds >= {MIN_PROMPT_SECONDS:g}")


@dataclass
class Prompt:
    """A prepared voice prompt: audio ``[N]`` at the codec rate, codes ``[K, Tp]``, text."""

    name: str
    wav: np.ndarray
    codes: torch.Tensor
    transcript: str
    transcript_source: str  # "given", "asr" or "none"
    phonemes: torch.Tensor  # [Pp] long; empty when there is no transcript
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return self.codes.shape[1] * 0.02

    @property
    def has_text(self) -> bool:
        """Whether each row's phonemes begin with this prompt's transcript (which the AR continues)."""
        return self.transcript_source != "none"

    @property
    def text_prefix(self) -> torch.Tensor:
        """``[Pp]`` long: the phonemes every row starts with (empty without a transcript)."""
        return self.phonemes if self.has_text else self.phonemes[:0]

    @property
    def text_start(self) -> int:
        """The frame of prompt + target where the rows' phonemes start: 0 with a transcript, ``Tp``
        without (a paced NAR's ``text_starts``)."""
        return 0 if self.has_text else int(self.codes.shape[1])


@dataclass
class ChunkResult:
    """One synthesised chunk: its audio ``[n]`` (trimmed), pause, and how generation went."""

    text: str
    pause: float
    audio: np.ndarray
    phonemes: int
    frames: int
    hit_max: bool
    failure: str | None  # None, "max_length", "empty", "silence"
    attempts: int
    first_failure: str | None = None


@dataclass
class Synthesis:
    """``audio`` float32 ``[N]`` at ``sample_rate``, the chunks, and the time it took
    (``seconds_taken``; texts synthesised together share their batch's time equally)."""

    audio: np.ndarray
    sample_rate: int
    chunks: list[ChunkResult]
    seconds_taken: float

    @property
    def seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        return self.seconds_taken / max(self.seconds, 1e-9)

    @property
    def failures(self) -> int:
        return sum(c.failure is not None for c in self.chunks)


# ---------------------------------------------------------------------------------------------
# Audio helpers


def frame_levels(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level in dBFS of each 20 ms frame of ``audio`` ``[N]`` -> ``[frames]``."""
    n = max(1, round(FRAME_SECONDS * sample_rate))
    frames = len(audio) // n
    if frames == 0:
        return np.zeros(0)
    power = (audio[: frames * n].astype(np.float64).reshape(frames, n) ** 2).mean(axis=1)
    return 10 * np.log10(power + 1e-12)


def sound_frames(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Boolean ``[frames]``: frames within ``ACTIVE_DB`` of the loudest and above ``FLOOR_DBFS``."""
    levels = frame_levels(audio, sample_rate)
    if levels.size == 0:
        return np.zeros(0, dtype=bool)
    return (levels > levels.max() - ACTIVE_DB) & (levels > FLOOR_DBFS)


def trim_silence(audio: np.ndarray, sample_rate: int, before: float = 0.05, after: float = 0.1) -> np.ndarray:
    """``audio`` without its silent ends, keeping ``before`` / ``after`` seconds of margin."""
    active = np.flatnonzero(sound_frames(audio, sample_rate))
    if active.size == 0:
        return audio[:0]
    n = round(FRAME_SECONDS * sample_rate)
    start = max(0, active[0] * n - round(before * sample_rate))
    end = min(len(audio), (active[-1] + 1) * n + round(after * sample_rate))
    return audio[start:end]


def fade(audio: np.ndarray, sample_rate: int, seconds: float = 0.005) -> np.ndarray:
    n = min(len(audio) // 2, round(seconds * sample_rate))
    if n > 0:
        audio = audio.copy()
        ramp = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
        audio[:n] *= ramp
        audio[-n:] *= ramp[::-1]
    return audio


def speech_level(audio: np.ndarray, sample_rate: int) -> float:
    """RMS level in dBFS over the sounding frames of ``audio`` (-120 when there are none)."""
    levels, active = frame_levels(audio, sample_rate), sound_frames(audio, sample_rate)
    return float(10 * np.log10(np.mean(10 ** (levels[active] / 10)) + 1e-12)) if active.any() else -120.0


def set_level(audio: np.ndarray, sample_rate: int, dbfs: float, peak: float = 0.95) -> np.ndarray:
    """``audio`` scaled so that :func:`speech_level` is ``dbfs``, unless that would push a
    sample above ``peak`` (then the peak sets the gain). Silence is returned unchanged."""
    level = speech_level(audio, sample_rate)
    if level <= -120.0 or not len(audio):
        return audio
    gain = min(10 ** ((dbfs - level) / 20), peak / max(float(np.abs(audio).max()), 1e-9))
    return (audio * gain).astype(np.float32)


def check_chunk(raw: np.ndarray, sample_rate: int, n_phonemes: int, hit_max: bool) -> str | None:
    """The failure of a generated chunk (raw decoded audio ``[n]``), or None (see module docstring)."""
    if hit_max:
        return "max_length"
    active = sound_frames(raw, sample_rate)
    sound = active.sum() * FRAME_SECONDS
    if sound < max(MIN_SOUND_SECONDS, MIN_SOUND_PER_PHONEME * n_phonemes):
        return "empty"
    if active.mean() < MIN_SOUND_FRACTION:
        return "silence"
    return None


# ---------------------------------------------------------------------------------------------


class Synthesizer:
    """Text to speech with an AR + NAR token LM pair and the codec they were trained on.

    ``synthesize(text, voice=..., prompt=..., prompt_text=..., seed=...) -> (audio float32 [N],
    sample_rate)``; :meth:`synthesize_batch` for many texts, :meth:`stream` for audio pieces as
    they are generated, :meth:`run` for the details (chunks, failures, timing).
    """

    def __init__(self, ar, nar, codec, vocab, config: SynthesisConfig | None = None):
        self.ar, self.nar, self.codec, self.vocab = ar, nar, codec, vocab
        self.config = config or SynthesisConfig()
        self.sampling = self.config.sampling
        if not isinstance(self.sampling, SamplingConfig):
            try:
                self.sampling = model_sampling(getattr(ar, "info", None), self.sampling)
            except LMError as error:
                raise TTSError(str(error)) from None
        self.sample_rate = codec.sample_rate
        self.hop = round(codec.sample_rate / codec.frame_rate)
        self.n_codebooks = nar.config.n_codebooks
        if self.n_codebooks > codec.max_codebooks:
            raise TTSError(f"the NAR model fills {self.n_codebooks} codebooks, codec {codec.name} has {codec.max_codebooks}")
        if len(vocab) > min(ar.config.n_phonemes, nar.config.n_phonemes):
            raise TTSError("the phoneme vocabulary is larger than the models' phoneme tables")
        self._prompts: dict = {}
        self._recognizer = None
        self.nar_decoding = self.config.nar_decoding
        if self.nar_decoding == "expected" and not hasattr(codec, "decode_vectors"):
            warnings.warn(f"codec {codec.name} cannot decode expected code vectors; NAR decoding is argmax",
                          TTSWarning, stacklevel=2)
            self.nar_decoding = "argmax"

    # -- prompts -----------------------------------------------------------------------------
    def default_voice(self) -> str:
        from tts.voices import list_voices

        names = [v.name for v in list_voices()]
        if not names:
            raise TTSError("no built-in voices installed (weights/voices/); pass a prompt recording")
        return "kathleen" if "kathleen" in names else names[0]

    def prepare_prompt(self, voice: str | None = None, prompt=None, prompt_text: str | None = None) -> Prompt:
        """The prompt of a built-in ``voice``, or of ``prompt`` (a path, or ``(wav, sample_rate)``
        with ``wav`` ``[N]`` or ``[C, N]``) with its transcript ``prompt_text`` when known.
        Prepared prompts are cached."""
        from codec.audio import load_audio, resample

        if voice is not None and prompt is not None:
            raise TTSError("give a voice or a prompt, not both")
        if prompt is None and prompt_text:
            raise TTSError("a prompt transcript goes with a prompt recording (built-in voices have their own)")
        if prompt is None:
            from tts.voices import get_voice

            v = get_voice(voice or self.default_voice())
            key = ("voice", v.name, str(v.audio), self.config.no_transcript)
            if key not in self._prompts:
                self._prompts[key] = self._make_prompt(v.name, v.load(self.sample_rate), v.transcript)
            return self._prompts[key]
        if isinstance(prompt, (str, Path)):
            key = ("file", str(Path(prompt).resolve()), Path(prompt).stat().st_mtime if Path(prompt).exists() else 0,
                   prompt_text, self.config.no_transcript)
            if key not in self._prompts:
                wav, _ = load_audio(prompt, self.sample_rate)  # mono, resampled; AudioError names the file
                self._prompts[key] = self._make_prompt(Path(prompt).name, wav[0], prompt_text or "")
            return self._prompts[key]
        try:
            wav, rate = prompt
            wav = np.asarray(wav, dtype=np.float32)
        except (TypeError, ValueError):
            raise TTSError("prompt must be a file path or a (wav, sample_rate) pair") from None
        if wav.ndim == 2:
            wav = wav.mean(axis=0)
        if wav.ndim != 1 or wav.size == 0 or not np.isfinite(wav).all():
            raise TTSError("prompt audio must be a non-empty finite array [N] or [C, N]")
        return self._make_prompt("prompt", resample(wav, int(rate), self.sample_rate), prompt_text or "")

    def _make_prompt(self, name: str, wav: np.ndarray, transcript: str) -> Prompt:
        from tokenlm.text import text_to_ids

        sr, notes = self.sample_rate, []
        wav = trim_silence(np.asarray(wav, dtype=np.float32), sr, 0.1, 0.1)
        if len(wav) < MIN_PROMPT_SECONDS * sr:
            raise TTSError(f"prompt {name}: only {len(wav) / sr:.2f} s of sound; a voice prompt needs 3-10 s of speech")
        limit = self.config.max_prompt_seconds
        if len(wav) > limit * sr:
            wav = _cut_at_quiet_frame(wav, sr, limit)
            notes.append(f"prompt {name} is longer than {limit:g} s: using its first {len(wav) / sr:.1f} s")
            if transcript:
                notes.append("its transcript no longer matches the cut audio and is not used")
                transcript = ""
        elif len(wav) < 3 * sr:
            notes.append(f"prompt {name} is short ({len(wav) / sr:.1f} s); 3-10 s give a better voice match")
        level = speech_level(wav, sr)
        if not PROMPT_LEVEL[0] <= level <= PROMPT_LEVEL[1]:
            wav = set_level(wav, sr, -24.0, peak=1.0)
            notes.append(f"prompt {name} level {level:.0f} dBFS brought to -24 dBFS")

        source = "given" if transcript.strip() else "none"
        if source == "none":
            mode = self.config.no_transcript
            if mode == "auto":
                from tts.asr import available

                mode = "asr" if available() else "acoustic"
                if mode == "acoustic":
                    notes.append("no prompt transcript and pocketsphinx is not installed: the prompt only "
                                 "conditions the NAR (voice matched less well); pass its transcript")
            if mode == "asr":
                transcript = self.recognizer().transcribe(wav, sr)
                source = "asr" if transcript else "none"
                notes.append(f"prompt {name} transcribed by pocketsphinx: {transcript!r}" if transcript
                             else f"pocketsphinx found no words in prompt {name}: the prompt only conditions the NAR")
        phonemes = torch.tensor(text_to_ids(transcript, self.vocab) if source != "none" else [], dtype=torch.long)
        if source != "none" and phonemes.numel() == 0:
            source = "none"
        bitrate = self.codec.codebooks_to_bitrate(self.n_codebooks)
        codes = self.codec.encode(torch.from_numpy(wav)[None], sr, bitrate=bitrate)[0]
        codes = codes[:, : len(wav) // self.hop].long().cpu()  # frames wholly inside the prompt
        for note in notes:
            warnings.warn(note, TTSWarning, stacklevel=3)
        return Prompt(name, wav, codes, transcript, source, phonemes, notes)

    def recognizer(self):
        if self._recognizer is None:
            from tts.asr import Recognizer

            self._recognizer = Recognizer()
        return self._recognizer

    # -- generation ----------------------------------------------------------------------------
    def _ids(self, text: str) -> torch.Tensor:
        from tokenlm.text import text_to_ids

        return torch.tensor(text_to_ids(text, self.vocab), dtype=torch.long)

    def speaking_frames(self, prompt: Prompt) -> int:
        """The prompt's sounding frames (all its frames when none sound): its pace without its
        pauses, which (for example single words joined with gaps) say nothing about how fast its
        speaker talks."""
        return int(sound_frames(prompt.wav, self.sample_rate).sum()) or prompt.codes.shape[1]

    def paced_sampling(self, prompt: Prompt):
        """The sampling config with its length guards set from the prompt's pace (module docstring)."""
        import dataclasses

        sampling = self.sampling
        if self.config.pace is None:
            return sampling
        rate = TYPICAL_FRAMES_PER_PHONEME
        if prompt.has_text and len(prompt.phonemes) and prompt.codes.shape[1]:
            rate = min(max(self.speaking_frames(prompt) / len(prompt.phonemes), PROMPT_RATE_RANGE[0]), PROMPT_RATE_RANGE[1])
        low = max(sampling.min_frames_per_phoneme, self.config.pace[0] * rate)
        high = max(min(sampling.max_frames_per_phoneme, self.config.pace[1] * rate), low)
        return dataclasses.replace(sampling, min_frames_per_phoneme=low, max_frames_per_phoneme=high)

    def text_pace(self, prompt: Prompt) -> float:
        """Frames per phoneme for a paced AR's text positions: the prompt's frames over its
        phonemes, pauses included as in training, but at most ``PAUSE_ALLOWANCE`` x its sounding
        frames, so that a prompt of words joined by long gaps does not stretch the text to speak."""
        from tokenlm.generate import prompt_pace

        frames = min(prompt.codes.shape[1], PAUSE_ALLOWANCE * self.speaking_frames(prompt))
        return prompt_pace(self.ar.config, len(prompt.phonemes), frames)

    def _generate(self, prompt: Prompt, targets: list[torch.Tensor], seed: int) -> list[tuple]:
        """For each row of ``targets``: layer-1..K codes ``[K, T]``, the decoder input ``[T, D]``
        (None with argmax NAR decoding, see :meth:`fill`) and "hit the length limit"."""
        from tokenlm.generate import length_limits

        sampling = self.paced_sampling(prompt)
        ar_prompt = prompt.codes[0] if prompt.has_text else torch.zeros(0, dtype=torch.long)
        limit = min(self.ar.config.max_frames, self.nar.config.max_frames)
        hard_cap = min(limit - len(ar_prompt) - 1, sampling.max_frames or limit)
        if hard_cap < 1:
            raise TTSError(f"the prompt ({prompt.seconds:.1f} s) leaves no room for speech in the models' "
                           f"{limit} frames")
        phonemes = [torch.cat([prompt.text_prefix, t]) for t in targets]
        pace = self.text_pace(prompt) if prompt.has_text and self.ar.config.paced else None
        first = self._sample_first_layer(phonemes, ar_prompt, [len(t) for t in targets], sampling, seed, hard_cap,
                                         pace)
        maxima = [length_limits(len(t), sampling, hard_cap)[1] for t in targets]
        filled = self.fill(prompt, phonemes, first)
        return [(c, v, f.numel() >= m) for (c, v), f, m in zip(filled, first, maxima)]

    def _sample_first_layer(self, phonemes: list[torch.Tensor], ar_prompt: torch.Tensor, target_phonemes: list[int],
                            sampling, seed: int, hard_cap: int, pace: float | None) -> list[torch.Tensor]:
        """The AR's first layer ``[T]`` per row: with ``candidates`` N > 1, N samples per row in
        one batch, of which the one with the best ``candidate_score`` is kept."""
        from tokenlm.generate import generate_ar

        n = self.config.candidates
        score = self.config.candidate_score
        if score == "text" and sampling.text_guidance == 1.0:
            score = "likelihood"  # no text-free branch to compare with
        rows = [p for p in phonemes for _ in range(n)]
        first, scores = generate_ar(self.ar, rows, [ar_prompt] * len(rows), sampling, seed=seed, max_frames=hard_cap,
                                    target_phonemes=[t for t in target_phonemes for _ in range(n)],
                                    pace=None if pace is None else [pace] * len(rows),
                                    return_scores=True)
        if n == 1:
            return first
        values = (scores.text_information() if score == "text" else scores.mean_log_prob()).view(-1, n)
        best = values.argmax(dim=1)
        return [first[i * n + int(j)] for i, j in enumerate(best)]

    def fill(self, prompt: Prompt, phonemes: list[torch.Tensor], first: list[torch.Tensor]) -> list[tuple]:
        """The NAR's layers 2..K under first layers ``[T]`` (rows of ``phonemes``: the prompt's then
        the target's, as the AR had them): per row the codes ``[K, T]`` and the decoder input
        ``[T, D]`` of ``nar_decoding="expected"`` (None with ``"argmax"``)."""
        from tokenlm.generate import nar_fill, nar_fill_expected

        prompts = [prompt.codes] * len(first)
        starts = [prompt.text_start] * len(first)
        if self.nar_decoding == "argmax":
            return [(c, None) for c in nar_fill(self.nar, phonemes, prompts, first, self.n_codebooks,
                                                text_starts=starts)]
        codes, vectors = nar_fill_expected(self.nar, phonemes, prompts, first, self.codec.codebook_tables(),
                                           self.config.nar_temperature, self.n_codebooks, text_starts=starts)
        return list(zip(codes, vectors))

    def render(self, codes: torch.Tensor, vectors: torch.Tensor | None = None, prompt: Prompt | None = None,
               length: int | None = None) -> np.ndarray:
        """Codes ``[K, T]``, or the decoder input ``[T, D]`` of :meth:`fill` when not None, -> raw
        audio ``[n]`` (``length`` samples, default all). With a ``prompt`` the decoder first runs
        over the prompt's last ``DECODE_CONTEXT`` frames (as in ``tokenwave continue``), whose
        samples are then dropped."""
        context = prompt.codes[:, -DECODE_CONTEXT:] if prompt is not None else codes[:, :0]
        skip = context.shape[1] * self.hop
        total = None if length is None else skip + length
        if vectors is None:
            audio = self.codec.decode(torch.cat([context, codes], dim=1)[None], length=total)
        else:
            vectors = vectors.to(torch.float32)
            if context.shape[1]:
                vectors = torch.cat([self.codec.code_vectors(context[None], min_frames=1)[0].float().cpu(),
                                     vectors.cpu()])
            audio = self.codec.decode_vectors(vectors[None], length=total)
        return audio.detach().to("cpu", torch.float32).numpy().reshape(-1)[skip:]

    def _finish(self, raw: np.ndarray) -> np.ndarray:
        audio = trim_silence(raw, self.sample_rate)
        if self.config.output_dbfs is not None:
            audio = set_level(audio, self.sample_rate, self.config.output_dbfs)
        return fade(audio, self.sample_rate)

    def _synthesize_chunks(self, prompt: Prompt, chunks: list[Chunk], seed: int, progress: bool) -> list[ChunkResult]:
        ids = [self._ids(c.text) for c in chunks]
        results: list[ChunkResult | None] = [None] * len(chunks)
        todo = [i for i in range(len(chunks)) if ids[i].numel()]
        for i in range(len(chunks)):
            if not ids[i].numel():  # nothing the front-end can speak: keep the pause only
                results[i] = ChunkResult(chunks[i].text, chunks[i].pause, np.zeros(0, np.float32), 0, 0, False,
                                         None, 0)
        todo.sort(key=lambda i: -len(ids[i]))
        size = self.config.batch_size
        bar = tqdm(total=len(todo), desc="speak", unit="chunk", disable=not progress or len(todo) < 2, file=sys.stderr)
        for b in range(0, len(todo), size):
            rows = todo[b : b + size]
            for attempt in range(self.config.retries + 1):
                generated = self._generate(prompt, [ids[i] for i in rows], seed + 1009 * b + 7919 * attempt)
                again = []
                for i, (codes, vectors, hit_max) in zip(rows, generated):
                    raw = self.render(codes, vectors, prompt)
                    failure = check_chunk(raw, self.sample_rate, _phones(ids[i], self.vocab), hit_max)
                    first = results[i].first_failure if results[i] is not None else failure
                    results[i] = ChunkResult(chunks[i].text, chunks[i].pause, self._finish(raw), len(ids[i]),
                                             codes.shape[1], hit_max, failure, attempt + 1, first)
                    if failure is not None:
                        again.append(i)
                rows = again
                if not rows:
                    break
            bar.update(len(todo[b : b + size]))
        bar.close()
        return results

    def _join(self, results: list[ChunkResult]) -> np.ndarray:
        pieces = []
        for r in results:
            pieces += [r.audio, np.zeros(round(r.pause * self.sample_rate), np.float32)]
        audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        return audio.astype(np.float32)

    # -- public API ----------------------------------------------------------------------------
    def run(self, text: str, voice: str | None = None, prompt=None, prompt_text: str | None = None, seed: int = 0,
            progress: bool = False) -> Synthesis:
        """Synthesise ``text`` and report the chunks, failures and time taken."""
        return self.run_batch([text], voice, prompt, prompt_text, seed, progress)[0]

    def run_batch(self, texts: Sequence[str], voice: str | None = None, prompt=None, prompt_text: str | None = None,
                  seed: int = 0, progress: bool = False) -> list[Synthesis]:
        """:meth:`run` for many texts at once: every chunk of every text shares the batches."""
        if isinstance(texts, str):
            raise TTSError("run_batch takes a list of texts")
        began = time.perf_counter()
        speaker = self.prepare_prompt(voice, prompt, prompt_text)
        per_text = [split_text(t, self.config.max_words, self.config.pauses, self.config.min_words) for t in texts]
        flat = [c for chunks in per_text for c in chunks]
        results = self._synthesize_chunks(speaker, flat, seed, progress)
        taken = (time.perf_counter() - began) / max(1, len(texts))
        out, start = [], 0
        for chunks in per_text:
            mine = results[start : start + len(chunks)]
            start += len(chunks)
            out.append(Synthesis(self._join(mine), self.sample_rate, mine, taken))
        return out

    def synthesize(self, text: str, voice: str | None = None, prompt=None, prompt_text: str | None = None,
                   seed: int = 0, progress: bool = False) -> tuple[np.ndarray, int]:
        """``text`` -> ``(audio float32 [N], sample_rate)`` in a built-in ``voice`` (default
        ``kathleen``) or the voice of ``prompt`` (path or ``(wav, sr)``, with ``prompt_text``)."""
        result = self.run(text, voice, prompt, prompt_text, seed, progress)
        return result.audio, result.sample_rate

    def synthesize_batch(self, texts: Sequence[str], voice: str | None = None, prompt=None,
                         prompt_text: str | None = None, seed: int = 0,
                         progress: bool = False) -> list[tuple[np.ndarray, int]]:
        """Many texts -> one ``(audio, sample_rate)`` each, generated in shared batches."""
        return [(r.audio, r.sample_rate) for r in self.run_batch(texts, voice, prompt, prompt_text, seed, progress)]

    def stream(self, text: str, voice: str | None = None, prompt=None, prompt_text: str | None = None,
               seed: int = 0, progress: bool = False) -> Iterator[np.ndarray]:
        """Audio pieces float32 ``[n]`` as they are generated: chunk by chunk (the first one at
        most ``first_chunk_words`` words), each in pieces of ``stream_frames`` frames, then its
        pause. ``self.last_chunks`` holds the chunk results so far."""
        speaker = self.prepare_prompt(voice, prompt, prompt_text)
        chunks = split_text(text, self.config.max_words, self.config.pauses, self.config.min_words)
        first = split_long(chunks[0].text, self.config.first_chunk_words)
        if len(first) > 1:
            clause = {**PAUSES, **self.config.pauses}["clause"]
            chunks = [Chunk(t, clause, "clause") for t in first[:-1]] + [Chunk(first[-1], chunks[0].pause,
                                                                                chunks[0].kind)] + chunks[1:]
        self.last_chunks = []
        bar = tqdm(chunks, desc="speak", unit="chunk", disable=not progress or len(chunks) < 2, file=sys.stderr)
        for index, chunk in enumerate(bar):
            result = self._synthesize_chunks(speaker, [chunk], seed + 101 * index, False)[0]
            self.last_chunks.append(result)
            audio = result.audio
            step = self.config.stream_frames * self.hop
            for start in range(0, len(audio), step):
                yield audio[start : start + step]
            if chunk.pause > 0:
                yield np.zeros(round(chunk.pause * self.sample_rate), np.float32)
        bar.close()


class TTSWarning(UserWarning):
    """Something about the input was adjusted (prompt cut, transcribed, level changed)."""


def _phones(ids: torch.Tensor, vocab) -> int:
    """Phonemes in ``ids`` that are sounds (not pads, word boundaries or breaks)."""
    symbols = vocab.decode(ids.tolist())
    return sum(s not in ("_", "|", "‖", "<pad>", "<unk>") for s in symbols)


def _cut_at_quiet_frame(wav: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    """The first ``seconds`` of ``wav``, ending at the quietest 20 ms frame of its last second."""
    n = round(FRAME_SECONDS * sample_rate)
    end = int(seconds * sample_rate) // n
    levels = frame_levels(wav[: end * n], sample_rate)
    window = levels[max(0, end - 50) :]
    cut = max(0, end - 50) + int(np.argmin(window)) if window.size else end
    return wav[: max(cut, 1) * n]


def load(ar: str | None = None, nar: str | None = None, codec: str | None = None, device: str = "cpu",
         config: SynthesisConfig | None = None) -> Synthesizer:
    """A :class:`Synthesizer` from saved LMs (default ``weights/lm-ar`` and ``weights/lm-nar``) and
    the codec they were trained with. ``ar="tiny"`` / ``nar="tiny"`` give untrained tiny random
    models (tests; the output is noise)."""
    from tokenlm.errors import LMError

    if ar == "tiny" or nar == "tiny":
        if not (ar == "tiny" and nar == "tiny"):
            raise TTSError("use ar='tiny' and nar='tiny' together")
        return tiny_synthesizer(codec or "tiny-16k", config=config)
    from tokenlm.continuation import load_models

    try:
        ar_model, nar_model, codec_model = load_models(ar, nar, codec, device)
    except LMError as error:
        raise TTSError(f"{error} (ar='tiny', nar='tiny' gives untrained test models)") from None
    if ar_model.info.get("vocab") != nar_model.info.get("vocab"):
        raise TTSError("the AR and NAR models use different phoneme vocabularies")
    from tokenlm.text import PhonemeVocab

    vocab = PhonemeVocab.from_dict(ar_model.info["vocab"])
    return Synthesizer(ar_model, nar_model, codec_model, vocab, config)


def tiny_models(n_codebooks: int = 4, seed: int = 0):
    """Untrained tiny ``(ar, nar, vocab)`` for tests (random weights, fixed seed)."""
    from tokenlm.ar import ARModel
    from tokenlm.config import LMConfig
    from tokenlm.nar import NARModel
    from tokenlm.text import default_vocab

    vocab = default_vocab()
    config = LMConfig(d_model=32, n_layers=1, n_heads=2, ff_mult=2, dropout=0.0, n_phonemes=len(vocab),
                      n_codebooks=n_codebooks)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ar, nar = ARModel(config).eval(), NARModel(config).eval()
    return ar, nar, vocab


def tiny_synthesizer(codec: str = "tiny-16k", n_codebooks: int = 4, config: SynthesisConfig | None = None,
                     seed: int = 0) -> Synthesizer:
    """A :class:`Synthesizer` with tiny random LMs and a codec (tiny-16k by default): plumbing only."""
    import codec as codec_package

    ar, nar, vocab = tiny_models(n_codebooks, seed)
    return Synthesizer(ar, nar, codec_package.load(codec), vocab, config)

