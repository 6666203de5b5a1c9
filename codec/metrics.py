"""Objective quality metrics for decoded speech, all computed at 16 kHz on mono signals.

Every function takes a reference and a degraded (decoded) signal, 1-D float arrays at the same
sample rate; they are truncated to the shorter of the two (callers align them first, see
:mod:`codec.evaluate`). Higher is better for PESQ, STOI and SI-SDR; lower is better for the
log-mel distance and MCD, which are 0 for identical signals.

- :func:`pesq_wb`: wideband PESQ (ITU-T P.862.2, MOS-LQO 1.04 ... 4.64) from the ``pesq`` package.
  PESQ refuses some inputs (no speech found, under 1/4 s): those give NaN and a
  :class:`MetricWarning`, so that one odd file does not stop an evaluation.
- :func:`stoi`: short-time objective intelligibility (0 ... 1) from ``pystoi``; NaN when the
  reference has too few non-silent frames for STOI to be defined.
- :func:`si_sdr`: scale-invariant signal-to-distortion ratio in dB (numpy).
- :func:`log_mel_distance`: mean absolute difference of natural-log mel spectrograms
  (the same kind of spectrogram as the training loss in :mod:`codec.losses`).
- :func:`mcd`: mel-cepstral distortion in dB over 13 MFCC-like cepstra (definition there).

``pesq`` and ``pystoi`` come with the ``eval`` extra (``pip install 'tokenwave[eval]'``) and are
imported only when used.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
"""The rate every metric here is computed at (wideband PESQ is defined at 16 kHz only)."""

METRICS = ("pesq", "stoi", "si_sdr", "log_mel", "mcd")
"""The keys of :func:`score`'s result, in table order."""

# Log-mel distance: 64 ms frames, 16 ms hop, 80 mel bands over 0-8 kHz, natural log of the mel
# magnitude floored at 1e-5 (about -100 dB), as in the training loss.
LOG_MEL_N_FFT = 1024
LOG_MEL_HOP = 256
LOG_MEL_BANDS = 80
LOG_MEL_FLOOR = 1e-5

# MCD: 32 ms frames, 10 ms hop, 40 mel bands, cepstra c1..c13.
MCD_N_FFT = 512
MCD_HOP = 160
MCD_BANDS = 40
MCD_CEPSTRA = 13
MCD_POWER_FLOOR = 1e-10
MCD_DYNAMIC_RANGE_DB = 40.0


class MetricWarning(UserWarning):
    """A metric could not be computed for one signal pair and was set to NaN."""


def _pair(reference, degraded) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as 1-D float64 arrays of the same (the shorter) length."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    deg = np.asarray(degraded, dtype=np.float64).reshape(-1)
    n = min(ref.size, deg.size)
    ref, deg = ref[:n], deg[:n]
    if not (np.isfinite(ref).all() and np.isfinite(deg).all()):
        raise ValueError("signals must be finite (no NaN or Inf samples)")
    return ref, deg


def pesq_wb(reference, degraded, sample_rate: int = SAMPLE_RATE) -> float:
    """Wideband PESQ (P.862.2), or NaN with a :class:`MetricWarning` when PESQ refuses the pair
    (no utterances detected, shorter than 1/4 s, silent input)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"wideband PESQ needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
    from pesq import PesqError, pesq

    ref, deg = _pair(reference, degraded)
    if not np.any(ref) or not np.any(deg):
        warnings.warn("PESQ: silent signal; PESQ set to NaN", MetricWarning, stacklevel=2)
        return math.nan
    try:
        return float(pesq(SAMPLE_RATE, ref, deg, "wb"))
    except PesqError as error:
        message = error.args[0].decode(errors="replace") if error.args and isinstance(error.args[0], bytes) else str(error)
        warnings.warn(f"PESQ: {type(error).__name__} ({message}); PESQ set to NaN", MetricWarning, stacklevel=2)
        return math.nan


def stoi(reference, degraded, sample_rate: int = SAMPLE_RATE, extended: bool = False) -> float:
    """STOI (``extended=True``: ESTOI) in 0 ... 1, or NaN with a :class:`MetricWarning` when the
    reference has too few non-silent frames (pystoi then warns and returns 1e-5)."""
    from pystoi import stoi as _stoi

    ref, deg = _pair(reference, degraded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi(ref, deg, sample_rate, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        warnings.warn("STOI: too few non-silent frames; STOI set to NaN", MetricWarning, stacklevel=2)
        return math.nan
    return value


def si_sdr(reference, degraded, eps: float = 1e-12) -> float:
    """Scale-invariant SDR in dB (Le Roux et al., 2019), both signals made zero-mean first.

    ``target = <s, ŝ> / |s|² · s``, ``SI-SDR = 10 log10(|target|² / |ŝ - target|²)``; ``eps``
    keeps it finite (about 10·log10(energy / eps) dB for identical signals).
    """
    ref, deg = _pair(reference, degraded)
    ref = ref - ref.mean()
    deg = deg - deg.mean()
    scale = np.dot(ref, deg) / (np.dot(ref, ref) + eps)
    target = scale * ref
    noise = deg - target
    return float(10.0 * np.log10((np.dot(target, target) + eps) / (np.dot(noise, noise) + eps)))


@lru_cache(maxsize=8)
def _mel_matrix(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    from codec.losses import mel_filterbank

    return mel_filterbank(sample_rate, n_fft, n_mels).double().numpy()  # [n_mels, n_fft // 2 + 1]


def _power_spectrogram(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``|STFT|²`` ``[frames, n_fft // 2 + 1]``: Hann window of ``n_fft`` samples, centred frames
    (``n_fft // 2`` samples of reflection padding each side, zeros when the signal is too short)."""
    pad = n_fft // 2
    x = np.pad(x, pad, mode="reflect" if x.size > pad else "constant")
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    window = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as torch.hann_window
    return np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2


def log_mel_spectrogram(x, sample_rate: int = SAMPLE_RATE, n_fft: int = LOG_MEL_N_FFT, hop: int = LOG_MEL_HOP,
                        n_mels: int = LOG_MEL_BANDS, floor: float = LOG_MEL_FLOOR) -> np.ndarray:
    """``ln(max(mel @ |STFT|, floor))`` ``[frames, n_mels]`` (mel filters from
    :func:`codec.losses.mel_filterbank`, applied to the magnitude as in the training loss)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    magnitude = np.sqrt(_power_spectrogram(x, n_fft, hop))
    return np.log(np.maximum(magnitude @ _mel_matrix(sample_rate, n_fft, n_mels).T, floor))


def log_mel_distance(reference, degraded, sample_rate: int = SAMPLE_RATE) -> float:
    """Mean over all frames and bands of ``|log_mel(ref) - log_mel(deg)|`` (natural log; see
    :func:`log_mel_spectrogram`); 0 for identical signals."""
    ref, deg = _pair(reference, degraded)
    return float(np.mean(np.abs(log_mel_spectrogram(ref, sample_rate) - log_mel_spectrogram(deg, sample_rate))))


@lru_cache(maxsize=4)
def _cepstrum_matrix(n_bands: int, n_cepstra: int) -> np.ndarray:
    """``C[d, m] = cos(pi d (m + 1/2) / M) / M``, d = 0 ... n_cepstra (DCT-II scaled by 1/M)."""
    d = np.arange(n_cepstra + 1)[:, None]
    m = np.arange(n_bands)[None, :]
    return np.cos(np.pi * d * (m + 0.5) / n_bands) / n_bands


def mel_cepstra(x, sample_rate: int = SAMPLE_RATE, n_cepstra: int = MCD_CEPSTRA) -> tuple[np.ndarray, np.ndarray]:
    """MFCC-like cepstra ``[frames, n_cepstra + 1]`` (c0 ... c_n) and frame energies in dB.

    See :func:`mcd` for the definition.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    power = _power_spectrogram(x, MCD_N_FFT, MCD_HOP)
    mel_power = power @ _mel_matrix(sample_rate, MCD_N_FFT, MCD_BANDS).T
    log_amplitude = 0.5 * np.log(np.maximum(mel_power, MCD_POWER_FLOOR))
    energy_db = 10.0 * np.log10(np.maximum(power.sum(axis=-1), MCD_POWER_FLOOR))
    return log_amplitude @ _cepstrum_matrix(MCD_BANDS, n_cepstra).T, energy_db


def mcd(reference, degraded, sample_rate: int = SAMPLE_RATE) -> float:
    """Mel-cepstral distortion in dB (no time warping: the signals are already aligned).

    Exact definition:

    1. Power spectrogram: periodic Hann window of 512 samples (32 ms at 16 kHz), hop 160
       (10 ms), centred frames, ``P[t, k] = |FFT|²``.
    2. 40 mel bands (:func:`codec.losses.mel_filterbank`, HTK mel scale, 0 to ``sample_rate/2``):
       ``E[t, m] = Σ_k W[m, k] P[t, k]``; log amplitude ``L[t, m] = ½ ln(max(E[t, m], 1e-10))``.
    3. Cepstra (a DCT-II scaled by 1/M, M = 40 bands):
       ``c[t, d] = (1/M) Σ_m L[t, m] cos(π d (m + ½) / M)`` for d = 1 ... 13 (c0, the overall
       level, is excluded, so a gain change does not count). With this scaling ``c_d`` is the
       coefficient of ``2 cos(d ω)`` in the log-amplitude envelope over the mel-warped
       frequency axis, i.e. the same convention as the mel-cepstra of the usual MCD formula.
    4. Per frame ``MCD_t = (10 / ln 10) · sqrt(2 Σ_{d=1}^{13} (c[t, d] - ĉ[t, d])²)``, averaged
       over the frames whose reference energy ``10 log10 Σ_k P[t, k]`` is within 40 dB of the
       loudest reference frame (silence is left out, as STOI does).

    Values are comparable between systems scored here, but not exactly with MCD figures from
    SPTK mel-cepstral analysis with dynamic time warping.
    """
    ref, deg = _pair(reference, degraded)
    c_ref, energy = mel_cepstra(ref, sample_rate)
    c_deg, _ = mel_cepstra(deg, sample_rate)
    keep = energy >= energy.max() - MCD_DYNAMIC_RANGE_DB
    diff = c_ref[keep, 1:] - c_deg[keep, 1:]
    per_frame = (10.0 / math.log(10.0)) * np.sqrt(2.0 * np.sum(diff**2, axis=-1))
    return float(per_frame.mean())


def score(reference, degraded, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """All metrics of one aligned pair at 16 kHz: ``{"pesq", "stoi", "si_sdr", "log_mel", "mcd"}``.

    A degraded signal with NaN or Inf samples gets NaN everywhere (and a :class:`MetricWarning`).
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"metrics are computed at {SAMPLE_RATE} Hz, got {sample_rate} Hz")
    if not np.isfinite(np.asarray(degraded, dtype=np.float64)).all():
        warnings.warn("decoded audio holds NaN or Inf samples; all metrics set to NaN", MetricWarning, stacklevel=2)
        return {name: math.nan for name in METRICS}
    ref, deg = _pair(reference, degraded)
    return {
        "pesq": pesq_wb(ref, deg, sample_rate),
        "stoi": stoi(ref, deg, sample_rate),
        "si_sdr": si_sdr(ref, deg),
        "log_mel": log_mel_distance(ref, deg, sample_rate),
        "mcd": mcd(ref, deg, sample_rate),
    }
