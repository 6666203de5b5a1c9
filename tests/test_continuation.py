"""``tokenwave continue`` end to end with the tiny random codec and tiny random AR/NAR models:
the output is the prompt followed by the requested seconds, prompts of any rate and channel count
work, a seed fixes the result, and missing models, a codec mismatch and over-long requests are
one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import codec
from codec.cli import main


def save_tiny_models(folder, fingerprint: str | None = None, K: int = 4):
    """Random tiny AR and NAR for the tiny-16k codec (1024 codes), saved with save_lm."""
    from tokenlm.ar import ARModel
    from tokenlm.config import LMConfig
    from tokenlm.nar import NARModel
    from tokenlm.pretrained import save_lm
    from tokenlm.text import default_vocab

    tiny = codec.load("tiny-16k")
    vocab = default_vocab()
    info = {"name": tiny.name, "fingerprint": fingerprint or tiny.codes_fingerprint, "sample_rate": tiny.sample_rate,
            "frame_rate": tiny.frame_rate, "num_codebooks": K, "codebook_size": tiny.codebook_size}
    config = LMConfig(d_model=32, n_layers=1, n_heads=2, dropout=0.0, n_phonemes=len(vocab),
                      codebook_size=tiny.codebook_size, n_codebooks=K)
    torch.manual_seed(0)
    save_lm(ARModel(config), folder / "ar", vocab, codec=info)
    save_lm(NARModel(config), folder / "nar", vocab, codec=info)
    return folder / "ar", folder / "nar"


def write_prompt(path, seconds: float = 1.0, rate: int = 16_000, channels: int = 1):
    t = np.arange(int(seconds * rate)) / rate
    wav = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5
    sf.write(path, np.stack([wav] * channels, axis=1).astype(np.float32), rate)
    return path


def run(prompt, out, ar, nar, *extra) -> int:
    return main(["continue", str(prompt), "--seconds", "1.5", "-o", str(out), "--ar", str(ar), "--nar", str(nar),
                 *map(str, extra)])


def test_continuation_writes_the_prompt_then_the_requested_seconds(tmp_path, capsys):
    ar, nar = save_tiny_models(tmp_path)
    prompt = write_prompt(tmp_path / "prompt.wav", seconds=1.01)  # not a whole number of frames
    out = tmp_path / "out.wav"
    assert run(prompt, out, ar, nar, "--seed", 1) == 0
    assert "1.5 s continuation" in capsys.readouterr().out
    audio, rate = sf.read(out, dtype="float32")
    original, _ = sf.read(prompt, dtype="float32")
    assert rate == 16_000 and len(audio) == len(original) + 24_000
    head = len(original) - 320  # before the one-frame crossfade: the prompt itself (16-bit rounding)
    assert np.abs(audio[:head] - original[:head]).max() < 1e-4
    assert np.isfinite(audio).all() and np.abs(audio[len(original):]).max() > 0

    again = tmp_path / "again.wav"
    assert run(prompt, again, ar, nar, "--seed", 1) == 0
    assert np.array_equal(sf.read(again)[0], sf.read(out)[0])  # the seed fixes the result
    other = tmp_path / "other.wav"
    assert run(prompt, other, ar, nar, "--seed", 2) == 0
    assert not np.array_equal(sf.read(other)[0], sf.read(out)[0])


def test_stereo_44k_prompt_is_downmixed_and_resampled(tmp_path):
    ar, nar = save_tiny_models(tmp_path)
    prompt = write_prompt(tmp_path / "stereo.flac", seconds=0.5, rate=44_100, channels=2)
    out = tmp_path / "out.wav"
    assert run(prompt, out, ar, nar, "--temperature", 0) == 0
    audio, rate = sf.read(out)
    assert rate == 16_000 and len(audio) == 8_000 + 24_000


def test_python_api_returns_prompt_plus_continuation(tmp_path):
    from tokenlm.continuation import continue_audio, load_models

    ar_dir, nar_dir = save_tiny_models(tmp_path)
    ar, nar, codec_model = load_models(str(ar_dir), str(nar_dir))
    assert codec_model.name == "tiny-16k"  # the codec named in the models' export
    wav = np.random.default_rng(0).standard_normal(5_000).astype(np.float32) * 0.1
    out = continue_audio(wav, 16_000, 0.42, ar, nar, codec_model, seed=0, prompt_seconds=0.1)
    assert out.shape == (5_000 + 6_720,) and out.dtype == np.float32
    argmax = continue_audio(wav, 16_000, 0.42, ar, nar, codec_model, seed=0, prompt_seconds=0.1, nar_temperature=None)
    assert argmax.shape == out.shape and np.array_equal(argmax[:4_000], out[:4_000])  # the prompt is kept as is
    assert not np.allclose(argmax[6_000:], out[6_000:], atol=1e-5)  # the NAR's layers are decoded differently


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    import codec.pretrained

    prompt = write_prompt(tmp_path / "prompt.wav")
    monkeypatch.setattr(codec.pretrained, "weights_dirs", lambda: [tmp_path / "no-weights"])
    assert main(["continue", str(prompt), "--seconds", "1", "-o", str(tmp_path / "x.wav")]) == 2
    assert "error: no AR model: weights/lm-ar is missing" in capsys.readouterr().err

    ar, nar = save_tiny_models(tmp_path / "other-codec", fingerprint="ffffffffffffffff")
    assert run(prompt, tmp_path / "x.wav", ar, nar) == 2
    assert "trained on codes of codec tiny-16k (ffffffffffffffff)" in capsys.readouterr().err

    ar, nar = save_tiny_models(tmp_path / "models")
    assert main(["continue", str(prompt), "--seconds", "40", "-o", str(tmp_path / "x.wav"), "--ar", str(ar),
                 "--nar", str(nar)]) == 2
    assert "too long" in capsys.readouterr().err
    (tmp_path / "exists.wav").write_bytes(b"")
    assert run(prompt, tmp_path / "exists.wav", ar, nar) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_bad_seconds(tmp_path, capsys, seconds):
    ar, nar = save_tiny_models(tmp_path)
    prompt = write_prompt(tmp_path / "prompt.wav", seconds=0.2)
    assert main(["continue", str(prompt), "--seconds", seconds, "-o", str(tmp_path / "x.wav"), "--ar", str(ar),
                 "--nar", str(nar)]) == 2
    assert "--seconds must be a positive number" in capsys.readouterr().err
