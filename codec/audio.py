"""Reading, writing and resampling audio files.

Shapes: waveforms are float32 numpy arrays ``[C, N]`` (C channels, N samples per channel) with
values in [-1, 1]. Reading goes through libsndfile (``soundfile``), so WAV, FLAC, OGG, AIFF and
the other formats it knows are read whatever their sample rate, bit depth or channel count.
Resampling uses ``soxr``. Writing is atomic. Bad input raises :class:`AudioError` with a
one-line message that names the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from codec.atomic import atomic_output
from codec.errors import AudioError

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"}
"""Extensions :func:`find_audio_files` picks up inside folders (lower case, with the dot)."""

WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
"""Extensions :func:`write_audio` accepts, and the libsndfile format each one writes."""


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _error(path: str | os.PathLike, problem: str) -> AudioError:
    return AudioError(_one_line(f"{os.fspath(path)}: {problem}"))


def _check_rate(sample_rate: object, what: str) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(_one_line(f"{what} must be a positive integer, got {sample_rate!r}"))
    return int(sample_rate)


def load_audio(
    path: str | os.PathLike, sample_rate: int | None = None, mono: bool = True
) -> tuple[np.ndarray, int]:
    """Read an audio file as a float32 array ``[C, N]`` and its sample rate.

    Any format libsndfile reads (WAV, FLAC, OGG Vorbis/Opus, AIFF, ... and MP3 where the
    installed libsndfile decodes it) at any sample rate, bit depth (8/16/24/32-bit integer,
    32/64-bit float) and channel count. Integer samples are scaled to [-1, 1]; float samples are
    returned as stored, so values beyond [-1, 1] are kept (not clipped).

    Args:
        path: the file to read.
        sample_rate: resample to this rate (soxr, high quality) when given and different from
            the file's; None keeps the file's rate.
        mono: True (default) downmixes by averaging the channels, giving ``[1, N]``;
            False keeps every channel, giving ``[C, N]`` in the file's channel order.

    Returns:
        ``(wav, sr)``: ``wav`` float32 ``[C, N]``, ``sr`` its sample rate.

    Raises:
        AudioError: the path is missing, a folder or unreadable; the file is not audio or in
            a format libsndfile does not read; it holds no samples; it holds NaN or Inf.
    """
    if sample_rate is not None:
        sample_rate = _check_rate(sample_rate, "sample_rate")
    p = Path(path)
    if not p.exists():
        raise _error(path, "no such file")
    if p.is_dir():
        raise _error(path, "is a folder, not an audio file")
    if p.suffix.lower() == ".raw":
        raise _error(path, "headerless RAW audio is not supported (no sample rate or format in the file)")
    try:
        with open(p, "rb") as fh:  # a clear OSError (e.g. permission denied) before libsndfile's
            if not fh.read(1):
                raise _error(path, "file is empty (0 bytes)")
        with sf.SoundFile(p) as f:
            sr = f.samplerate
            data = f.read(dtype="float32", always_2d=True)  # [N, C]
    except sf.LibsndfileError as e:
        raise _error(
            path, f"cannot read as audio ({e.error_string.rstrip('.')}); expected WAV, FLAC, OGG or AIFF"
        ) from None
    except OSError as e:
        raise _error(path, f"cannot open file ({e.strerror or e})") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise _error(path, f"cannot read as audio ({e})") from None

    if data.shape[0] == 0:
        raise _error(path, "contains no audio samples")
    if not np.isfinite(data).all():
        n_nan, n_inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        raise _error(path, f"contains NaN or infinite samples ({n_nan} NaN, {n_inf} Inf)")

    wav = np.ascontiguousarray(data.T)  # [C, N]
    if mono and wav.shape[0] > 1:
        wav = wav.mean(axis=0, keepdims=True, dtype=np.float32)
    if sample_rate is not None and sample_rate != sr:
        wav = resample(wav, sr, sample_rate)
        sr = sample_rate
    return wav, sr


def resample(wav: np.ndarray, from_sr: int, to_sr: int) -> np.ndarray:
    """Resample ``wav`` ``[C, N]`` (or ``[N]``) from ``from_sr`` to ``to_sr`` Hz with soxr (high quality).

    Returns float32 ``[C, M]`` (or ``[M]``) with ``M = round(N * to_sr / from_sr)``; the input
    unchanged (as float32) when the rates are equal.
    """
    from_sr = _check_rate(from_sr, "from_sr")
    to_sr = _check_rate(to_sr, "to_sr")
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim not in (1, 2):
        raise AudioError(f"resample expects a waveform [C, N] or [N], got shape {tuple(wav.shape)}")
    if from_sr == to_sr:
        return wav
    # soxr wants [N, C]: one column per channel.
    out = soxr.resample(np.ascontiguousarray(wav.T), from_sr, to_sr, quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)


def write_audio(path: str | os.PathLike, wav, sample_rate: int, subtype: str | None = None) -> None:
    """Write ``wav`` to ``path`` as WAV or FLAC (chosen from the extension), atomically.

    Args:
        path: the file to write; its extension (``.wav`` or ``.flac``) picks the format.
            An existing file is replaced.
        wav: float samples ``[C, N]`` or ``[N]``, a numpy array or a torch tensor, nominally
            in [-1, 1]. Integer subtypes clip to [-1, 1]; float subtypes store values as given.
        sample_rate: in Hz.
        subtype: a libsndfile subtype such as ``"PCM_16"`` (default), ``"PCM_24"``,
            ``"PCM_32"``, ``"FLOAT"`` (WAV only) or ``"DOUBLE"`` (WAV only).

    The audio goes to a hidden temporary file in the same folder, which is flushed to disk and
    then renamed over ``path``: a process killed midway never leaves a partial file at ``path``.

    Raises:
        AudioError: unsupported extension or subtype, a waveform that is not ``[C, N]`` floats,
            empty, or holds NaN/Inf, a missing folder, or a failed write.
    """
    p = Path(path)
    fmt = WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        choices = ", ".join(sorted(WRITE_FORMATS))
        raise _error(path, f"cannot write {p.suffix or 'files without an extension'}; use one of {choices}")
    subtype = (subtype or "PCM_16").upper()
    if not sf.check_format(fmt, subtype):
        choices = ", ".join(sf.available_subtypes(fmt))
        raise _error(path, f"{fmt} cannot hold subtype {subtype}; choose one of {choices}")
    sample_rate = _check_rate(sample_rate, "sample_rate")

    if hasattr(wav, "detach"):  # a torch tensor, without importing torch
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav)
    if not np.issubdtype(wav.dtype, np.floating):
        raise _error(path, f"expected float samples in [-1, 1], got dtype {wav.dtype}")
    if wav.ndim == 1:
        wav = wav[None]
    if wav.ndim != 2:
        raise _error(path, f"expected a waveform [C, N] or [N], got shape {tuple(wav.shape)}")
    if wav.shape[1] == 0:
        raise _error(path, "refusing to write audio with no samples")
    if not np.isfinite(wav).all():
        raise _error(path, "refusing to write audio with NaN or infinite samples")
    wav = wav.astype(np.float64 if subtype == "DOUBLE" else np.float32, copy=False)
    if subtype not in ("FLOAT", "DOUBLE"):
        wav = np.clip(wav, -1.0, 1.0)

    folder = p.parent
    if not folder.is_dir():
        raise _error(path, f"folder {os.fspath(folder)} does not exist")
    try:
        with atomic_output(p, overwrite=True, what="audio file", error=AudioError) as f:
            sf.write(f, wav.T, sample_rate, format=fmt, subtype=subtype)
    except (RuntimeError, ValueError) as e:  # libsndfile's errors; OSErrors are AudioErrors already
        raise _error(path, f"cannot write audio ({e})") from None


def files_in_folder(folder: Path, extensions: Iterable[str]) -> list[Path]:
    """Files under ``folder`` (recursively, sorted) whose lower-case extension is in
    ``extensions``, skipping hidden files and folders (names starting with ``.``)."""
    extensions = set(extensions)
    return sorted(
        f
        for f in folder.rglob("*")
        if f.suffix.lower() in extensions
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def find_audio_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand ``inputs`` into a list of audio files.

    A file is kept as given, whatever its extension (so it is reported when read). A folder
    is searched recursively for files whose extension is in :data:`AUDIO_EXTENSIONS`
    (case-insensitive), skipping hidden files and folders (names starting with ``.``); its
    files come sorted by path. The order of ``inputs`` is kept.

    Raises:
        AudioError: an input does not exist, or a folder holds no audio files.
    """
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = files_in_folder(p, AUDIO_EXTENSIONS)
            if not files:
                exts = ", ".join(sorted(AUDIO_EXTENSIONS))
                raise _error(item, f"folder holds no audio files ({exts})")
            found.extend(files)
        elif p.exists():
            found.append(p)
        else:
            raise _error(item, "no such file or folder")
    return found


def resample_tensor(wav, from_rate: int, to_rate: int):
    """:func:`resample` for a torch tensor ``[..., N]``; float32 on ``wav``'s device."""
    import torch

    if int(from_rate) == int(to_rate):
        return wav
    shape = wav.shape
    y = resample(wav.detach().reshape(-1, shape[-1]).to("cpu", torch.float32).numpy(), int(from_rate), int(to_rate))
    return torch.from_numpy(y).reshape(*shape[:-1], y.shape[-1]).to(wav.device)
