"""Training data for the codec: manifests, the dev split, and random loudness-normalised crops.

A manifest is a JSON-lines file with one object per recording: ``audio`` (path relative to the
manifest's folder), ``text``, ``speaker``, ``duration``, ``sample_rate`` (as
``../shared/data/manifest.jsonl``). Folders of audio files are accepted too.

Dev split (documented in the README; never trained on):
- ``unseen``: every recording of the speakers in :data:`UNSEEN_SPEAKERS` (whole speakers held out),
- ``dev``: every 20th recording (sorted by path) of each remaining speaker,
- ``train``: the rest of the speech,
- ``other``: manifest rows without a transcript (music, nature sounds): not used as speech; with
  ``train-codec --noise-probability`` they are mixed under some training crops as background noise
  (:func:`mix_noise`).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codec.audio import AUDIO_EXTENSIONS, find_audio_files, load_audio
from codec.errors import AudioError, TokenwaveError

UNSEEN_SPEAKERS = {"fsdd_yweweler"}
DEV_EVERY = 20


@dataclass
class Recording:
    path: Path
    speaker: str
    text: str = ""
    is_speech: bool = True


def read_manifest(path: str | Path) -> list[Recording]:
    """Rows of a manifest (or every audio file under a folder) as :class:`Recording` objects."""
    path = Path(path)
    if path.is_dir():
        return [Recording(p, p.parent.name) for p in find_audio_files([path])]
    recordings = []
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        raise TokenwaveError(f"cannot read manifest {path}: {error.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = row.get("text", "")
            # Rows without a transcript (music, nature sounds) are not speech.
            recordings.append(Recording(path.parent / row["audio"], str(row.get("speaker", "")), text, bool(text)))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TokenwaveError(f"{path}:{number}: not a manifest row with an 'audio' field") from None
    return recordings


def split_of(recording: Recording, index_in_speaker: int) -> str:
    """``train``, ``dev``, ``unseen`` or ``other`` (not speech; see the module docstring)."""
    if not recording.is_speech:
        return "other"
    if recording.speaker in UNSEEN_SPEAKERS:
        return "unseen"
    return "dev" if index_in_speaker % DEV_EVERY == 0 else "train"


def select_split(recordings: list[Recording], split: str) -> list[Recording]:
    """The recordings of one split, keeping the manifest's order."""
    by_speaker: dict[str, list[Recording]] = {}
    for recording in recordings:
        by_speaker.setdefault(recording.speaker, []).append(recording)
    chosen = set()
    for items in by_speaker.values():
        for index, recording in enumerate(sorted(items, key=lambda r: str(r.path))):
            if split_of(recording, index) == split:
                chosen.add(recording.path)
    return [r for r in recordings if r.path in chosen]


class AudioCorpus:
    """Recordings held in memory at one sample rate; draws random crops.

    Crops are chosen with probability proportional to recording length, normalised to a random
    loudness between ``-28`` and ``-16`` dBFS RMS (gain augmentation), and near-silent crops are
    redrawn a few times.
    """

    def __init__(self, recordings: list[Recording], sample_rate: int, progress: bool = True):
        self.sample_rate = sample_rate
        self.signals: list[np.ndarray] = []
        skipped = 0
        for recording in tqdm(recordings, desc="loading audio", disable=not progress, unit="file"):
            if recording.path.suffix.lower() not in AUDIO_EXTENSIONS:
                skipped += 1
                continue
            try:
                wav, _ = load_audio(recording.path, sample_rate)
            except AudioError:
                skipped += 1
                continue
            self.signals.append(wav[0])
        if not self.signals:
            raise TokenwaveError("no readable audio in the training data")
        self.skipped = skipped
        lengths = np.array([len(s) for s in self.signals], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        self.seconds = lengths.sum() / sample_rate

    def batch(self, rng: np.random.Generator, batch_size: int, crop: int) -> np.ndarray:
        """``[batch_size, 1, crop]`` float32 crops."""
        out = np.zeros((batch_size, 1, crop), dtype=np.float32)
        for b in range(batch_size):
            for _ in range(5):
                signal = self.signals[rng.choice(len(self.signals), p=self.weights)]
                start = rng.integers(0, max(1, len(signal) - crop + 1))
                piece = signal[start : start + crop]
                rms = float(np.sqrt(np.mean(piece**2) + 1e-12))
                if rms > 1e-3:
                    break
            target_rms = 10 ** (rng.uniform(-28, -16) / 20)
            piece = piece * (target_rms / rms)
            out[b, 0, : len(piece)] = np.clip(piece, -1, 1)
        return out


def mix_noise(batch: np.ndarray, noise: AudioCorpus, rng: np.random.Generator, probability: float,
              snr_db: tuple[float, float]) -> np.ndarray:
    """``batch [B, 1, N]`` with, in each item with ``probability``, a random crop of ``noise`` added
    at a signal-to-noise ratio drawn uniformly from ``snr_db`` (dB, against the item's RMS), the
    sum clipped to [-1, 1]. The codec is then asked to reproduce the noisy mixture, so it learns
    to code speech in background sound. Every draw comes from ``rng``, so a (seed, step)
    generator gives the same mixtures again."""
    out = batch.copy()
    for b in range(len(out)):
        if rng.random() >= probability:
            continue
        snr = rng.uniform(*snr_db)
        extra = noise.batch(rng, 1, out.shape[-1])[0, 0]
        speech_rms = float(np.sqrt(np.mean(out[b, 0] ** 2)))
        noise_rms = float(np.sqrt(np.mean(extra**2)))
        if noise_rms < 1e-4 or speech_rms < 1e-4:  # silent noise or crop: nothing to mix
            continue
        out[b, 0] = np.clip(out[b, 0] + extra * (speech_rms / noise_rms) * 10 ** (-snr / 20), -1, 1)
    return out


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The random generator of one training step: the data order depends on (seed, step) only,
    so a resumed run draws exactly the batches an uninterrupted one would."""
    return np.random.default_rng([seed, step, zlib.crc32(b"tokenwave")])
