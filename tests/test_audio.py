"""Tests of codec.audio: reading any rate/depth/channel count, resampling, atomic writes, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from codec import audio
from codec.audio import AUDIO_EXTENSIONS, find_audio_files, load_audio, resample, write_audio
from codec.errors import AudioError, TokenwaveError


def sine(freq: float, sr: int, seconds: float = 0.5, amp: float = 0.5) -> np.ndarray:
    """A sine ``[N]`` float32."""
    t = np.arange(round(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x: np.ndarray, sr: int) -> float:
    """Frequency in Hz of the largest FFT bin of ``x`` ``[N]``."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


def assert_audio_error(excinfo: pytest.ExceptionInfo, path: Path) -> str:
    """The message is one line and names the file; returns it."""
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message
    assert path.name in message
    return message


# ---------------------------------------------------------------- reading: formats and depths


@pytest.mark.parametrize(
    "fmt, subtype, ext, tol",
    [
        ("WAV", "PCM_U8", ".wav", 1 / 64),
        ("WAV", "PCM_16", ".wav", 1e-4),
        ("WAV", "PCM_24", ".wav", 1e-6),
        ("WAV", "PCM_32", ".wav", 1e-7),
        ("WAV", "FLOAT", ".wav", 0.0),
        ("WAV", "DOUBLE", ".wav", 1e-7),
        ("FLAC", "PCM_16", ".flac", 1e-4),
        ("FLAC", "PCM_24", ".flac", 1e-6),
        ("AIFF", "PCM_16", ".aiff", 1e-4),
    ],
)
def test_lossless_round_trip(tmp_path, fmt, subtype, ext, tol):
    x = sine(440, 16000)
    path = tmp_path / f"a{ext}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    wav, sr = load_audio(path)
    assert sr == 16000
    assert wav.dtype == np.float32 and wav.shape == (1, len(x))
    np.testing.assert_allclose(wav[0], x, atol=tol)


def test_ogg_vorbis_round_trip(tmp_path):
    x = sine(440, 22050, seconds=1.0)
    path = tmp_path / "a.ogg"
    sf.write(path, x, 22050, format="OGG", subtype="VORBIS")
    wav, sr = load_audio(path)
    assert sr == 22050 and wav.shape[0] == 1
    assert abs(wav.shape[1] - len(x)) <= 2048  # lossy codec: length may differ by a block at most
    n = min(len(x), wav.shape[1])
    assert np.corrcoef(wav[0, :n], x[:n])[0, 1] > 0.95


def test_float_values_beyond_unit_range_are_kept(tmp_path):
    x = np.array([0.0, 1.5, -2.0, 0.25], dtype=np.float32)
    path = tmp_path / "loud.wav"
    sf.write(path, x, 8000, subtype="FLOAT")
    wav, _ = load_audio(path)
    np.testing.assert_array_equal(wav[0], x)


def test_mp3_renamed_to_wav_decodes_or_fails_clearly(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    path = tmp_path / "song.wav"
    try:
        sf.write(tmp_path / "song.mp3", sine(440, 44100), 44100, format="MP3")
    except sf.LibsndfileError:
        pytest.skip("this libsndfile cannot encode MP3")
    os.replace(tmp_path / "song.mp3", path)
    try:
        wav, sr = load_audio(path)
    except AudioError as e:
        assert "\n" not in str(e) and path.name in str(e)
    else:
        assert sr == 44100 and wav.shape[0] == 1 and wav.shape[1] > 0


# ---------------------------------------------------------------- resampling


@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000, 192000])
def test_load_resamples_to_16k(tmp_path, sr):
    x = sine(1000, sr)
    path = tmp_path / f"{sr}.wav"
    sf.write(path, x, sr, subtype="PCM_24")
    wav, out_sr = load_audio(path, sample_rate=16000)
    assert out_sr == 16000 and wav.dtype == np.float32
    assert abs(wav.shape[1] - round(len(x) * 16000 / sr)) <= 1
    assert abs(peak_frequency(wav[0], 16000) - 1000) <= 2 * 16000 / wav.shape[1]
    # The level survives: a 0.5 sine has RMS 0.5 / sqrt(2).
    assert abs(np.sqrt(np.mean(wav[0, 800:-800] ** 2)) - 0.5 / np.sqrt(2)) < 0.01


def test_resample_keeps_channels_and_is_a_no_op_at_equal_rates():
    x = np.stack([sine(500, 48000), sine(2000, 48000)])  # [2, N]
    assert resample(x, 48000, 48000) is x
    y = resample(x, 48000, 16000)
    assert y.shape == (2, len(x[0]) // 3) and y.dtype == np.float32
    assert abs(peak_frequency(y[0], 16000) - 500) < 5
    assert abs(peak_frequency(y[1], 16000) - 2000) < 5
    assert resample(x[0], 48000, 24000).shape == (len(x[0]) // 2,)


@pytest.mark.parametrize("bad", [0, -16000, 16000.0, None, True])
def test_bad_sample_rates_are_refused(tmp_path, bad):
    path = tmp_path / "a.wav"
    sf.write(path, sine(440, 16000), 16000)
    with pytest.raises(AudioError):
        resample(np.zeros((1, 100), np.float32), 16000, bad)
    if bad is not None:
        with pytest.raises(AudioError):
            load_audio(path, sample_rate=bad)
        with pytest.raises(AudioError):
            write_audio(tmp_path / "b.wav", np.zeros(10, np.float32), bad)


# ---------------------------------------------------------------- channels


@pytest.mark.parametrize("channels", range(1, 9))
def test_channels_downmix_and_keep(tmp_path, channels):
    n = 1000
    levels = np.linspace(-0.5, 0.5, channels, dtype=np.float32) + 0.1 * np.arange(channels)
    x = np.repeat(levels[None, :], n, axis=0)  # [N, C], channel c constant at levels[c]
    path = tmp_path / f"{channels}ch.wav"
    sf.write(path, x, 16000, subtype="FLOAT")

    wav, _ = load_audio(path)
    assert wav.shape == (1, n)
    np.testing.assert_allclose(wav[0], levels.mean(), atol=1e-6)

    wav, _ = load_audio(path, mono=False)
    assert wav.shape == (channels, n) and wav.dtype == np.float32
    np.testing.assert_allclose(wav, np.repeat(levels[:, None], n, axis=1), atol=1e-6)


def test_stereo_resampled_keeps_channels(tmp_path):
    x = np.stack([sine(300, 44100), sine(3000, 44100)], axis=1)  # [N, 2]
    path = tmp_path / "st.flac"
    sf.write(path, x, 44100)
    wav, sr = load_audio(path, sample_rate=16000, mono=False)
    assert sr == 16000 and wav.shape[0] == 2
    assert abs(peak_frequency(wav[0], 16000) - 300) < 5
    assert abs(peak_frequency(wav[1], 16000) - 3000) < 5


# ---------------------------------------------------------------- reading errors


def test_missing_path(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "no such file" in assert_audio_error(e, path)


def test_directory(tmp_path):
    path = tmp_path / "folder.wav"
    path.mkdir()
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "folder" in assert_audio_error(e, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "empty" in assert_audio_error(e, path)


@pytest.mark.parametrize(
    "fmt, subtype, ext",
    [
        ("WAV", "PCM_16", ".wav"),
        ("WAV", "FLOAT", ".wav"),
        ("AIFF", "PCM_16", ".aiff"),
        ("OGG", "VORBIS", ".ogg"),
    ],
)
def test_header_only_zero_length_audio(tmp_path, fmt, subtype, ext):
    path = tmp_path / f"header_only{ext}"
    sf.write(path, np.zeros((0, 1), np.float32), 16000, format=fmt, subtype=subtype)
    assert path.stat().st_size > 0
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "no audio samples" in assert_audio_error(e, path)


def test_truncated_wav_without_its_data(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(full, sine(440, 16000), 16000)
    path = tmp_path / "truncated.wav"
    path.write_bytes(full.read_bytes()[:44])  # the header claims 8000 samples, none follow
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert_audio_error(e, path)


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 100)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "cannot read as audio" in assert_audio_error(e, path)


@pytest.mark.parametrize("name", ["noise.wav", "noise.flac", "noise.ogg", "noise.raw", "noise"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(10_000))
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert_audio_error(e, path)


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_samples(tmp_path, subtype, bad):
    x = sine(440, 16000)
    x[100] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, x, 16000, subtype=subtype)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    message = assert_audio_error(e, path)
    assert ("NaN" in message) and ("infinite" in message)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.wav"
    sf.write(path, sine(440, 16000), 16000)
    path.chmod(0)
    try:
        with pytest.raises(AudioError) as e:
            load_audio(path)
        assert "ermission" in assert_audio_error(e, path)
    finally:
        path.chmod(0o644)


def test_message_stays_one_line_with_a_newline_in_the_name(tmp_path):
    path = tmp_path / "two\nlines.wav"
    path.write_text("not audio")
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert "\n" not in str(e.value) and "two\\nlines.wav" in str(e.value)


def test_audio_error_is_a_tokenwave_error():
    assert issubclass(AudioError, TokenwaveError)


# ---------------------------------------------------------------- writing


@pytest.mark.parametrize(
    "name, subtype, tol",
    [
        ("a.wav", None, 1e-4),
        ("a.wav", "PCM_24", 1e-6),
        ("a.wav", "pcm_32", 1e-7),
        ("a.wav", "FLOAT", 0.0),
        ("a.wav", "DOUBLE", 0.0),
        ("a.flac", None, 1e-4),
        ("a.FLAC", "PCM_24", 1e-6),
    ],
)
def test_write_then_load(tmp_path, name, subtype, tol):
    x = np.stack([sine(440, 16000), sine(880, 16000, amp=0.25)])  # [2, N]
    path = tmp_path / name
    write_audio(path, x, 16000, subtype=subtype)
    info = sf.info(path)
    assert info.format == ("FLAC" if name.lower().endswith(".flac") else "WAV")
    assert info.subtype == (subtype or "PCM_16").upper()
    wav, sr = load_audio(path, mono=False)
    assert sr == 16000
    np.testing.assert_allclose(wav, x, atol=tol)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left behind


def test_write_accepts_1d_and_torch(tmp_path):
    torch = pytest.importorskip("torch")
    x = sine(440, 16000)
    write_audio(tmp_path / "np.wav", x, 16000)
    write_audio(tmp_path / "torch.wav", torch.from_numpy(x)[None], 16000)  # [1, N] tensor
    a, _ = load_audio(tmp_path / "np.wav")
    b, _ = load_audio(tmp_path / "torch.wav")
    assert a.shape == b.shape == (1, len(x))
    np.testing.assert_array_equal(a, b)


def test_write_clips_integer_formats_only(tmp_path):
    x = np.array([0.0, 1.5, -3.0, 0.5], dtype=np.float32)
    write_audio(tmp_path / "int.wav", x, 8000)
    write_audio(tmp_path / "float.wav", x, 8000, subtype="FLOAT")
    clipped, _ = load_audio(tmp_path / "int.wav")
    np.testing.assert_allclose(clipped[0], [0.0, 1.0, -1.0, 0.5], atol=1e-4)
    kept, _ = load_audio(tmp_path / "float.wav")
    np.testing.assert_array_equal(kept[0], x)


def test_write_replaces_an_existing_file(tmp_path):
    path = tmp_path / "out.wav"
    write_audio(path, np.full(100, 0.5, np.float32), 16000)
    write_audio(path, np.full(50, -0.25, np.float32), 16000)
    wav, _ = load_audio(path)
    assert wav.shape == (1, 50)
    assert os.listdir(tmp_path) == ["out.wav"]


@pytest.mark.parametrize("name", ["out.mp3", "out.ogg", "out.txt", "out"])
def test_write_refuses_other_extensions(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(AudioError) as e:
        write_audio(path, sine(440, 16000), 16000)
    assert ".wav" in assert_audio_error(e, path)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "wav, subtype, words",
    [
        (np.zeros((1, 0), np.float32), None, "no samples"),
        (np.array([0.0, np.nan], np.float32), None, "NaN"),
        (np.array([0.0, np.inf]), "FLOAT", "NaN or infinite"),
        (np.zeros((1, 2, 100), np.float32), None, "shape"),
        (np.zeros(100, np.int16), None, "int16"),
        (np.zeros(100, np.float32), "VORBIS", "subtype"),
    ],
)
def test_write_refuses_bad_waveforms(tmp_path, wav, subtype, words):
    path = tmp_path / "out.wav"
    with pytest.raises(AudioError) as e:
        write_audio(path, wav, 16000, subtype=subtype)
    assert words in assert_audio_error(e, path)
    assert os.listdir(tmp_path) == []


def test_write_into_missing_folder(tmp_path):
    path = tmp_path / "missing" / "out.wav"
    with pytest.raises(AudioError) as e:
        write_audio(path, sine(440, 16000), 16000)
    assert "does not exist" in assert_audio_error(e, path)


def test_write_failing_midway_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "out.wav"
    write_audio(path, np.full(100, 0.5, np.float32), 16000)
    before = path.read_bytes()

    def crash(file, data, samplerate, **kwargs):
        file.write(b"RIFF\x00\x00")  # a partial header, then the "disk" fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audio.sf, "write", crash)
    with pytest.raises(AudioError) as e:
        write_audio(path, np.zeros(1000, np.float32), 16000)
    assert "No space left" in assert_audio_error(e, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.wav"]


def test_write_interrupted_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "out.flac"

    def interrupted(file, data, samplerate, **kwargs):
        file.write(b"fLaC")
        raise KeyboardInterrupt

    monkeypatch.setattr(audio.sf, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_audio(path, np.zeros(1000, np.float32), 16000)
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- finding files


def test_audio_extensions():
    assert {".wav", ".flac", ".ogg", ".oga", ".aiff", ".aif"} <= AUDIO_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in AUDIO_EXTENSIONS)


def test_find_audio_files_on_a_tree(tmp_path):
    root = tmp_path / "data"
    for rel in [
        "b.wav",
        "a.FLAC",
        "sub/c.ogg",
        "sub/deeper/d.aiff",
        "sub/e.oga",
        "z.aif",
        "notes.txt",
        "sub/readme.md",
        ".hidden.wav",
        ".cache/x.wav",
        "sub/f.mp3",
    ]:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (root / "folder.wav").mkdir()  # a folder with an audio extension is not a file
    single = tmp_path / "single.txt"
    single.write_text("kept as given")

    found = find_audio_files([single, root, str(root / "sub" / "f.mp3")])
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == [
        "single.txt",
        "data/a.FLAC",
        "data/b.wav",
        "data/sub/c.ogg",
        "data/sub/deeper/d.aiff",
        "data/sub/e.oga",
        "data/z.aif",
        "data/sub/f.mp3",
    ]
    assert all(isinstance(p, Path) for p in found)
    assert find_audio_files([]) == []


def test_find_audio_files_errors(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(AudioError) as e:
        find_audio_files([missing])
    assert "no such file" in assert_audio_error(e, missing)

    empty = tmp_path / "empty_folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(AudioError) as e:
        find_audio_files([empty])
    assert "no audio files" in assert_audio_error(e, empty)
