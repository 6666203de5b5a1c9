"""Smoke test of the shipped speech codec in weights/ (skipped when it is absent)."""

import numpy as np
import pytest
import torch

import codec
from codec.audio import load_audio
from codec.files import decode_bytes, encode_audio
from codec.pretrained import REPO_WEIGHTS

SAMPLE = REPO_WEIGHTS / "samples" / "kathleen_arctic_a0001.flac"
pytestmark = pytest.mark.skipif(not (REPO_WEIGHTS / "speech-16k").is_dir(), reason="no shipped speech-16k weights")


def log_spectrum(x: np.ndarray) -> np.ndarray:
    """Log-magnitude spectra of 25 ms blocks ``[blocks, 201]``."""
    return np.log(np.abs(np.fft.rfft(x.reshape(-1, 400), axis=-1)) + 1e-4)


def test_shipped_codec_round_trips_speech():
    model = codec.load("speech-16k")
    assert (model.sample_rate, model.frame_rate, model.max_codebooks) == (16_000, 50, 12)
    wav, rate = load_audio(SAMPLE, 16_000)
    for bitrate in (1.5, 3, 6):
        data = encode_audio(model, wav, rate, bitrate)
        decoded, out_rate = decode_bytes(model, data)
        assert out_rate == 16_000 and decoded.shape == wav.shape
        assert np.sqrt(np.mean(decoded**2)) > 0.1 * np.sqrt(np.mean(wav**2))  # speech, not silence
        # log-spectra of input and output agree far better than chance (an untrained model: ~0)
        n = wav.shape[-1] // 400 * 400
        corr = np.corrcoef(log_spectrum(wav[0, :n]).ravel(), log_spectrum(decoded[0, :n]).ravel())[0, 1]
        assert corr > 0.8, (bitrate, corr)
    # the shipped context tables beat plain 10-bit packing on real speech (by little: the codes
    # are used evenly; see the model card), and compress picks them
    codes = model.encode(torch.from_numpy(wav), 16_000, 6)
    packed = len(encode_audio(model, wav, rate, 6, coding="packed"))
    assert len(encode_audio(model, wav, rate, 6, coding="context")) < packed
    assert len(encode_audio(model, wav, rate, 6)) < packed
    assert codes.shape[1] == 12
