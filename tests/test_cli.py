"""End-to-end tests of the ``tokenwave`` command line on the tiny random test models.

Most cases call ``codec.cli.main([...])`` in-process (fast: no interpreter or torch start-up);
a few run the installed console script to check what a user really sees (exit status, one
``error:`` line, no traceback). Every command names ``--model tiny-16k`` (or ``tiny-24k``) so
nothing depends on whether trained weights are shipped under ``weights/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from codec.cli import main

REPO = Path(__file__).resolve().parent.parent
MODEL = ["--model", "tiny-16k"]


# --------------------------------------------------------------------------------------------
# Helpers


def speech(seconds: float = 0.6, sample_rate: int = 16_000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A speech-like test signal ``[N, C]`` float32 (peak 0.5): a gliding voice source with
    harmonics, a formant-like spectral tilt, syllable-rate loudness and a little noise."""
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(seed)
    out = []
    for c in range(channels):
        f0 = 120.0 + 30.0 * c + 25.0 * np.sin(2 * np.pi * 0.7 * t) + 3.0 * np.sin(2 * np.pi * 5.5 * t)
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        voiced = np.zeros(n)
        for h in range(1, int(min(30, 0.45 * sample_rate / 200)) + 1):
            f = h * 150.0
            formant = 1.0 / (1.0 + ((f - 700.0) / 300.0) ** 2) + 0.4 / (1.0 + ((f - 1800.0) / 400.0) ** 2)
            voiced += (formant + 0.05) / h**0.5 * np.sin(h * phase + 0.3 * h)
        envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + c), 0.0, None) ** 0.6
        x = envelope * voiced / np.abs(voiced).max() + 0.01 * rng.standard_normal(n)
        out.append(0.5 * x / np.abs(x).max())
    return np.stack(out, axis=1).astype(np.float32)


def write_speech(path: Path, seconds: float = 0.6, sample_rate: int = 16_000, channels: int = 1,
                 **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, speech(seconds, sample_rate, channels), sample_rate, **kw)
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``tokenwave argv...`` in-process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_one_error(err: str, *fragments: str) -> str:
    """stderr holds exactly one ``error:`` line (containing ``fragments``) and no traceback."""
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def assert_no_errors(err: str) -> None:
    assert "Traceback" not in err and not error_lines(err), err


def leftovers(folder: Path) -> list[Path]:
    """Temporary files an interrupted or failed atomic write would leave behind."""
    return [p for p in folder.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def info(capsys, tok: Path) -> str:
    code, out, err = cli(capsys, "info", tok)
    assert code == 0, err
    return out


def field(info_text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(.*)$", info_text, re.MULTILINE)
    assert match, info_text
    return match.group(1)


def samples_at_16k(path: Path) -> int:
    """The input's length after resampling to 16 kHz, as the codec sees it."""
    meta = sf.info(path)
    return round(meta.frames * 16_000 / meta.samplerate)


@pytest.fixture
def wav(tmp_path) -> Path:
    return write_speech(tmp_path / "speech.wav")


# --------------------------------------------------------------------------------------------
# One file: compress, info, decompress, bitrates


def test_compress_info_decompress(tmp_path, capsys, wav):
    tok = tmp_path / "speech.tok"
    code, _, err = cli(capsys, "compress", wav, "-o", tok, *MODEL)
    assert code == 0, err
    assert_no_errors(err)
    assert tok.is_file() and tok.stat().st_size > 0
    assert str(tok) in err  # "speech.wav -> speech.tok (N bytes)"

    text = info(capsys, tok)
    assert "tiny-16k" in field(text, "model")
    assert f"{sf.info(wav).frames} samples at 16000 Hz, 1 channel(s)" in field(text, "audio")
    assert field(text, "codes").startswith("12 codebooks x 1024 entries")
    assert field(text, "file size") == f"{tok.stat().st_size} bytes"
    used = re.match(r"([\d.]+) kbps codes, ([\d.]+) kbps whole file", field(text, "bitrate used"))
    packed = re.match(r"([\d.]+) kbps at 10 bits per code", field(text, "plain packing"))
    assert used and packed, text
    assert float(packed.group(1)) == pytest.approx(6.0)  # 12 codebooks x 50 Hz x 10 bits
    assert 0 < float(used.group(1)) <= float(used.group(2))
    assert "entropy coding saves" in text

    out = tmp_path / "decoded.wav"
    code, _, err = cli(capsys, "decompress", tok, "-o", out, *MODEL)
    assert code == 0, err
    assert_no_errors(err)
    decoded, rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == 16_000
    assert decoded.shape == (samples_at_16k(wav), 1)
    assert np.isfinite(decoded).all() and np.abs(decoded).max() > 0
    assert leftovers(tmp_path) == []


def test_output_into_a_closed_pipe_is_quiet(tmp_path, capsys, wav):
    """`tokenwave info FILE | head -1`: the reader leaves early; no traceback, exit 141 like a shell."""
    tok = tmp_path / "speech.tok"
    assert cli(capsys, "compress", wav, "-o", tok, *MODEL)[0] == 0
    reader, writer = os.pipe()
    os.close(reader)  # every write fails with EPIPE
    result = subprocess.run([sys.executable, "-m", "codec.cli", "info", str(tok), "--stats", *MODEL],
                            stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    os.close(writer)
    assert result.returncode == 141 and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(("bitrate", "codebooks"), [("1.5", 3), ("3", 6), ("6", 12)])
def test_bitrate_sets_codebooks(tmp_path, capsys, wav, bitrate, codebooks):
    tok = tmp_path / "speech.tok"
    code, _, err = cli(capsys, "compress", wav, "-o", tok, "--bitrate", bitrate, *MODEL)
    assert code == 0, err
    text = info(capsys, tok)
    assert field(text, "codes").startswith(f"{codebooks} codebooks x 1024 entries")
    assert field(text, "plain packing").startswith(f"{float(bitrate):.3f} kbps")

    out = tmp_path / "speech.out.wav"
    code, _, err = cli(capsys, "decompress", tok, "-o", out, *MODEL)
    assert code == 0, err
    assert sf.info(out).frames == samples_at_16k(wav)


@pytest.mark.parametrize("bitrate", ["2.2", "0", "-3", "7"])
def test_invalid_bitrate_is_one_line_error(tmp_path, capsys, wav, bitrate):
    tok = tmp_path / "speech.tok"
    code, _, err = cli(capsys, "compress", wav, "-o", tok, "--bitrate", bitrate, *MODEL)
    assert code != 0
    assert_one_error(err, "tiny-16k has no bitrate", "choose one of 0.5, 1, 1.5")
    assert not tok.exists() and leftovers(tmp_path) == []


def test_invalid_bitrate_is_fatal_exit_2(tmp_path, capsys):
    folder = tmp_path / "in"
    for name in ("a.wav", "b.wav"):
        write_speech(folder / name, seconds=0.3)
    code, _, err = cli(capsys, "compress", folder, "-o", tmp_path / "out", "--bitrate", "2.2", *MODEL)
    assert code == 2
    assert_one_error(err, "no bitrate 2.2")


@pytest.mark.parametrize("bitrate", ["nan", "inf"])
def test_non_finite_bitrate_is_one_line_error(tmp_path, capsys, wav, bitrate):
    code, _, err = cli(capsys, "compress", wav, "-o", tmp_path / "speech.tok", "--bitrate", bitrate, *MODEL)
    assert code == 2
    assert_one_error(err, "bitrate")


def test_roundtrip_writes_wav_and_prints_kbps(tmp_path, capsys, wav):
    out = tmp_path / "roundtrip.wav"
    code, stdout, err = cli(capsys, "roundtrip", wav, out, "--bitrate", "3", *MODEL)
    assert code == 0, err
    assert_no_errors(err)
    meta = sf.info(out)
    assert meta.samplerate == 16_000 and meta.frames == samples_at_16k(wav) and meta.channels == 1
    match = re.search(r"([\d.]+) kbps with tiny-16k", stdout)
    assert match, stdout
    assert 0 < float(match.group(1)) < 20
    assert "SNR" in stdout


# --------------------------------------------------------------------------------------------
# Folders, partial failures, overwriting, atomic writes


def test_folder_tree_mirrors_relative_paths(tmp_path, capsys):
    src = tmp_path / "in"
    write_speech(src / "a.wav", seconds=0.3)
    write_speech(src / "sub" / "b.flac", seconds=0.4, format="FLAC")
    write_speech(src / "sub" / "deeper" / "c.wav", seconds=0.5, sample_rate=22_050)
    (src / "sub" / "notes.txt").write_text("not audio, not picked up")
    toks = tmp_path / "toks"

    code, _, err = cli(capsys, "compress", src, "-o", toks, *MODEL)
    assert code == 0, err
    assert_no_errors(err)
    found = sorted(p.relative_to(toks).as_posix() for p in toks.rglob("*") if p.is_file())
    assert found == ["a.tok", "sub/b.tok", "sub/deeper/c.tok"]

    wavs = tmp_path / "wavs"
    code, _, err = cli(capsys, "decompress", toks, "-o", wavs, *MODEL)
    assert code == 0, err
    found = sorted(p.relative_to(wavs).as_posix() for p in wavs.rglob("*") if p.is_file())
    assert found == ["a.wav", "sub/b.wav", "sub/deeper/c.wav"]
    for name, source in [("a", "a.wav"), ("sub/b", "sub/b.flac"), ("sub/deeper/c", "sub/deeper/c.wav")]:
        assert sf.info(wavs / f"{name}.wav").frames == samples_at_16k(src / source)
    assert leftovers(toks) == [] and leftovers(wavs) == []


def test_folder_with_one_bad_file_processes_the_others(tmp_path, capsys):
    src = tmp_path / "in"
    write_speech(src / "good1.wav", seconds=0.3)
    write_speech(src / "nested" / "good2.wav", seconds=0.3)
    (src / "nested" / "bad.wav").write_text("this is a text file, not a WAV\n")
    out = tmp_path / "out"

    code, _, err = cli(capsys, "compress", src, "-o", out, *MODEL)
    assert code == 1
    assert_one_error(err, "bad.wav")
    assert "1 of 3 file(s) failed" in err
    assert (out / "good1.tok").is_file() and (out / "nested" / "good2.tok").is_file()
    assert not (out / "nested" / "bad.tok").exists()
    assert leftovers(out) == []


def test_compress_never_overwrites_without_force(tmp_path, capsys, wav):
    tok = tmp_path / "speech.tok"
    assert cli(capsys, "compress", wav, "-o", tok, *MODEL)[0] == 0
    before = tok.read_bytes()

    code, _, err = cli(capsys, "compress", wav, "-o", tok, "--bitrate", "1.5", *MODEL)
    assert code == 1
    assert_one_error(err, str(tok), "--force")
    assert tok.read_bytes() == before

    code, _, err = cli(capsys, "compress", wav, "-o", tok, "--bitrate", "1.5", "--force", *MODEL)
    assert code == 0, err
    assert tok.read_bytes() != before
    assert field(info(capsys, tok), "codes").startswith("3 codebooks")
    assert leftovers(tmp_path) == []


def test_decompress_and_roundtrip_never_overwrite_without_force(tmp_path, capsys, wav):
    tok = tmp_path / "speech.tok"
    assert cli(capsys, "compress", wav, "-o", tok, *MODEL)[0] == 0
    before = wav.read_bytes()

    code, _, err = cli(capsys, "decompress", tok, *MODEL)  # default output beside it: speech.decoded.wav
    assert code == 0, err
    decoded = tmp_path / "speech.decoded.wav"
    first = decoded.read_bytes()
    decoded.write_bytes(b"keep me")
    code, _, err = cli(capsys, "decompress", tok, *MODEL)
    assert code == 1
    assert_one_error(err, str(decoded), "--force")
    assert decoded.read_bytes() == b"keep me" and first != b"keep me"

    code, _, err = cli(capsys, "roundtrip", wav, wav, *MODEL)
    assert code == 2
    assert_one_error(err, "--force")
    assert wav.read_bytes() == before

    other = tmp_path / "other.wav"
    other.write_bytes(b"old")
    code, _, err = cli(capsys, "decompress", tok, "-o", other, "--force", *MODEL)
    assert code == 0, err
    assert sf.info(other).frames == samples_at_16k(wav)
    assert leftovers(tmp_path) == []


def test_failed_writes_leave_no_temp_files(tmp_path, capsys, wav, monkeypatch):
    tok = tmp_path / "speech.tok"
    assert cli(capsys, "compress", wav, "-o", tok, *MODEL)[0] == 0
    out = tmp_path / "out"
    out.mkdir()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # both token and audio writers fsync before renaming
    code, _, err = cli(capsys, "compress", wav, "-o", out / "speech.tok", *MODEL)
    assert code == 1
    assert_one_error(err, "No space left on device")
    code, _, err = cli(capsys, "decompress", tok, "-o", out / "speech.wav", *MODEL)
    assert code == 1
    assert_one_error(err, "No space left on device")
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Channels and input formats


def test_stereo_separate_channels(tmp_path, capsys):
    stereo = write_speech(tmp_path / "stereo.wav", seconds=0.5, channels=2)
    tok = tmp_path / "stereo.tok"
    code, _, err = cli(capsys, "compress", stereo, "-o", tok, "--channels", "separate", *MODEL)
    assert code == 0, err
    assert "2 channel(s)" in field(info(capsys, tok), "audio")

    out = tmp_path / "decoded.wav"
    code, _, err = cli(capsys, "decompress", tok, "-o", out, *MODEL)
    assert code == 0, err
    decoded, rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == 16_000 and decoded.shape == (samples_at_16k(stereo), 2)
    assert np.isfinite(decoded).all()

    mixed = tmp_path / "mixed.tok"
    assert cli(capsys, "compress", stereo, "-o", mixed, *MODEL)[0] == 0  # default: downmix
    assert "1 channel(s)" in field(info(capsys, mixed), "audio")


@pytest.mark.parametrize(
    ("name", "sample_rate", "options"),
    [
        ("8k.wav", 8_000, {}),
        ("44k1.wav", 44_100, {}),
        ("24bit.wav", 16_000, {"subtype": "PCM_24"}),
        ("float.wav", 22_050, {"subtype": "FLOAT"}),
        ("speech.flac", 48_000, {"format": "FLAC"}),
        ("speech.ogg", 16_000, {"format": "OGG", "subtype": "VORBIS"}),
    ],
)
def test_input_formats(tmp_path, capsys, name, sample_rate, options):
    source = write_speech(tmp_path / name, seconds=0.5, sample_rate=sample_rate, **options)
    tok = tmp_path / "x.tok"
    code, _, err = cli(capsys, "compress", source, "-o", tok, *MODEL)
    assert code == 0, err
    assert_no_errors(err)
    assert f"{samples_at_16k(source)} samples at 16000 Hz" in field(info(capsys, tok), "audio")

    out = tmp_path / "x.wav"
    code, _, err = cli(capsys, "decompress", tok, "-o", out, *MODEL)
    assert code == 0, err
    decoded, rate = sf.read(out, dtype="float32", always_2d=True)
    assert rate == 16_000 and decoded.shape == (samples_at_16k(source), 1)
    assert np.isfinite(decoded).all()


# --------------------------------------------------------------------------------------------
# Bad token files, bad audio, another model's token file


def test_decompress_refuses_another_models_file(tmp_path, capsys):
    source = write_speech(tmp_path / "speech24.wav", seconds=0.4, sample_rate=24_000)
    tok = tmp_path / "speech24.tok"
    code, _, err = cli(capsys, "compress", source, "-o", tok, "--model", "tiny-24k")
    assert code == 0, err
    assert "tiny-24k" in field(info(capsys, tok), "model")

    out = tmp_path / "out.wav"
    code, _, err = cli(capsys, "decompress", tok, "-o", out, "--model", "tiny-16k")
    assert code != 0
    assert_one_error(err, "tiny-24k", "tiny-16k")
    assert not out.exists() and leftovers(tmp_path) == []


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(position: float):
    def corrupt(data: bytes) -> bytes:
        i = min(len(data) - 1, int(len(data) * position))
        return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]

    return corrupt


CORRUPTIONS = {
    "truncated-half": _truncated,
    "truncated-last-byte": lambda data: data[:-1],
    "bit-flip-header": _flip(0.05),
    "bit-flip-payload": _flip(0.8),
    "random-bytes": lambda data: np.random.default_rng(1).bytes(len(data)),
    "empty": lambda data: b"",
}


@pytest.fixture(scope="module")
def good_tok_bytes(tmp_path_factory) -> bytes:
    from codec.files import compress_file
    from codec.pretrained import load

    folder = tmp_path_factory.mktemp("good")
    source = write_speech(folder / "speech.wav", seconds=0.5)
    compress_file(load("tiny-16k"), source, folder / "speech.tok", None)
    return (folder / "speech.tok").read_bytes()


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_decompress_bad_token_file(tmp_path, capsys, good_tok_bytes, kind):
    tok = tmp_path / f"{kind}.tok"
    tok.write_bytes(CORRUPTIONS[kind](good_tok_bytes))
    out = tmp_path / "out.wav"

    code, _, err = cli(capsys, "decompress", tok, "-o", out, *MODEL)
    assert code != 0
    assert_one_error(err)
    assert not out.exists() and leftovers(tmp_path) == []

    code, stdout, err = cli(capsys, "info", tok)
    assert code == 2 and stdout == ""
    assert_one_error(err)


def _folder_with_one_corrupt_token_file(tmp_path: Path, good: bytes) -> tuple[Path, Path]:
    toks = tmp_path / "toks"
    toks.mkdir()
    (toks / "a.tok").write_bytes(good)
    (toks / "b.tok").write_bytes(CORRUPTIONS["bit-flip-payload"](good))
    (toks / "c.tok").write_bytes(good)
    return toks, tmp_path / "wavs"


def test_decompress_folder_with_one_corrupt_file(tmp_path, capsys, good_tok_bytes):
    toks, wavs = _folder_with_one_corrupt_token_file(tmp_path, good_tok_bytes)
    code, _, err = cli(capsys, "decompress", toks, "-o", wavs, *MODEL)
    assert code == 1
    assert_one_error(err, "checksum")
    assert "1 of 3 file(s) failed" in err
    assert sorted(p.name for p in wavs.iterdir()) == ["a.wav", "c.wav"]


def test_decompress_folder_error_names_the_bad_file(tmp_path, capsys, good_tok_bytes):
    toks, wavs = _folder_with_one_corrupt_token_file(tmp_path, good_tok_bytes)
    code, _, err = cli(capsys, "decompress", toks, "-o", wavs, *MODEL)
    assert code == 1
    assert_one_error(err, "b.tok")


def _text_file(path: Path) -> None:
    path.write_text("hello, I am not audio\n" * 10)


def _nan_float_wav(path: Path) -> None:
    x = speech(0.2)
    x[100:110] = np.nan
    sf.write(path, x, 16_000, subtype="FLOAT")


BAD_AUDIO = {
    "empty.wav": (lambda p: p.write_bytes(b""), "empty"),
    "header-only.wav": (lambda p: sf.write(p, np.zeros((0, 1), np.float32), 16_000), "no audio samples"),
    "text.wav": (_text_file, "cannot read as audio"),
    "nan.wav": (_nan_float_wav, "NaN"),
}


@pytest.mark.parametrize("name", list(BAD_AUDIO))
def test_compress_bad_audio(tmp_path, capsys, name):
    make, fragment = BAD_AUDIO[name]
    source = tmp_path / name
    make(source)
    tok = tmp_path / "x.tok"
    code, _, err = cli(capsys, "compress", source, "-o", tok, *MODEL)
    assert code == 1
    assert_one_error(err, name, fragment)
    assert not tok.exists() and leftovers(tmp_path) == []


def test_compress_missing_path(tmp_path, capsys):
    code, _, err = cli(capsys, "compress", tmp_path / "missing.wav", *MODEL)
    assert code == 2
    assert_one_error(err, "missing.wav", "no such file")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# models, bench


def test_models_lists_the_tiny_models(capsys):
    code, stdout, _ = cli(capsys, "models")
    assert code == 0
    names = stdout.split()
    assert "tiny-16k" in names and "tiny-24k" in names


def test_bench_compares_with_encodec(capsys):
    pytest.importorskip("transformers")
    code, stdout, err = cli(capsys, "bench", "--model", "tiny-16k", "--seconds", "1", "--threads", "1")
    assert code == 0, err
    assert "tiny-16k" in stdout and "encodec_24khz" in stdout.lower()
    assert re.search(r"tiny-16k\s+16000\s", stdout), stdout
    assert "RTF" in stdout


# --------------------------------------------------------------------------------------------
# The installed console script


def _console_script() -> Path:
    for candidate in (Path(sys.executable).parent / "tokenwave", REPO / ".venv" / "bin" / "tokenwave"):
        if candidate.is_file():
            return candidate
    pytest.skip("the tokenwave console script is not installed")


def run_script(cwd: Path, *argv) -> subprocess.CompletedProcess:
    threads = os.environ.get("TOKENWAVE_TEST_THREADS", "1")
    env = os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return subprocess.run(
        [str(_console_script()), *map(str, argv)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_script_missing_input_is_fatal(tmp_path):
    result = run_script(tmp_path, "compress", "nowhere.wav", *MODEL)
    assert result.returncode == 2
    assert_one_error(result.stderr, "nowhere.wav")
    assert result.stdout == ""


def test_script_bad_audio_and_bad_token_file(tmp_path):
    _text_file(tmp_path / "text.wav")
    result = run_script(tmp_path, "compress", "text.wav", *MODEL)
    assert result.returncode == 1
    assert_one_error(result.stderr, "text.wav")
    assert not (tmp_path / "text.tok").exists()

    (tmp_path / "noise.tok").write_bytes(np.random.default_rng(2).bytes(300))
    result = run_script(tmp_path, "decompress", "noise.tok", "-o", "noise.wav", *MODEL)
    assert result.returncode == 1
    assert_one_error(result.stderr, "not a tokenwave token file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.tok", "text.wav"]


def test_script_info_on_truncated_file(tmp_path, good_tok_bytes):
    (tmp_path / "cut.tok").write_bytes(good_tok_bytes[:20])
    result = run_script(tmp_path, "info", "cut.tok")
    assert result.returncode == 2
    assert_one_error(result.stderr, "truncated")
    assert result.stdout == ""


def test_info_stats_reports_every_level(tmp_path, capsys, wav):
    tok = tmp_path / "speech.tok"
    assert cli(capsys, "compress", wav, "-o", tok, "--bitrate", "1.5", *MODEL)[0] == 0
    code, out, err = cli(capsys, "info", tok, "--stats")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert [row[0] for row in rows] == ["1", "2", "3"]
    for _, usage, perplexity, entropy in rows:
        assert 0 < float(usage.rstrip("%")) <= 100 and float(perplexity) >= 1 and float(entropy) >= 0


def test_coding_choice(tmp_path, capsys, wav):
    """auto keeps whichever is smaller; the tiny model's flat tables make range coding lose to packing."""
    sizes = {}
    for coding in ("auto", "range", "packed"):
        tok = tmp_path / f"{coding}.tok"
        assert cli(capsys, "compress", wav, "-o", tok, "--coding", coding, *MODEL)[0] == 0
        sizes[coding] = tok.stat().st_size
        assert field(info(capsys, tok), "coding").startswith("range" if coding == "range" else "packed")
        assert cli(capsys, "decompress", tok, "-o", tmp_path / f"{coding}.wav", *MODEL)[0] == 0
    assert sizes["auto"] == min(sizes.values())


def test_train_codec_passes_the_discriminator_and_time_options(tmp_path, monkeypatch):
    import codec.train

    seen = {}

    def fake_train(config):
        seen["config"] = config
        return tmp_path / "export"

    monkeypatch.setattr(codec.train, "train_codec", fake_train)
    argv = ["train-codec", "--manifest", "m.jsonl", "--out", str(tmp_path / "run"), "--adversarial",
            "--disc-channels", "16", "--disc-items", "4", "--disc-crop-seconds", "0.5", "--time-limit", "9.5",
            "--disc-lr-scale", "4", "--noise-probability", "0.3", "--noise-snr", "10,25"]
    assert main(argv) == 0
    config = seen["config"]
    assert config.adversarial and config.discriminator == {"channels": 16}
    assert config.discriminator_items == 4 and config.discriminator_crop_seconds == 0.5
    assert config.time_limit_minutes == 9.5 and config.discriminator_lr_scale == 4.0
    assert config.noise_probability == 0.3 and config.noise_snr_db == (10.0, 25.0)
    assert main(argv[:6]) == 0  # defaults: EnCodec's discriminator on the whole batch
    assert seen["config"].discriminator == {} and seen["config"].discriminator_items is None
    assert seen["config"].time_limit_minutes is None and seen["config"].noise_probability == 0.0
    with pytest.raises(SystemExit) as usage:  # one number: a usage error
        main(argv[:6] + ["--noise-snr", "5"])
    assert usage.value.code == 2
