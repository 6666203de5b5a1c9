"""Streaming ``compress``/``decompress`` (codec/files.py, tokenfile.StreamPacker): the same bytes as
whole-file encoding, bounded work per step, the decoded length equal to the input's, and clean
errors for files that only go wrong midway. (The hour-long run with peak memory is a benchmark:
``tokenwave bench-long``.)"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import soundfile as sf
import torch

from codec import files
from codec import tokenfile as tf
from codec.audio import load_audio
from codec.context_coding import ContextTables
from codec.errors import AudioError, TokenFileError
from codec.fuzz import skewed_counts, zipf_counts
from codec.model import token_fingerprint
from codec.pretrained import tiny_random
from codec.streaming import StreamingDecoder, StreamingEncoder


def speechlike(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``[N, C]`` float32: harmonics with a syllable envelope plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(130 + 40 * np.sin(2 * np.pi * 0.4 * t)) / rate
    x = sum(np.sin(h * phase + h) / h for h in range(1, 15)) * np.clip(np.sin(2 * np.pi * 3.3 * t), 0.05, None)
    x = 0.4 * x / np.abs(x).max()
    return np.stack([np.roll(x, 91 * c) + 0.01 * rng.standard_normal(len(t)) for c in range(channels)], 1).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    """The tiny codec with skewed entropy tables, as trained ones have."""
    m = tiny_random(16_000)
    m.code_counts.copy_(torch.from_numpy(zipf_counts(np.random.default_rng(1), m.max_codebooks, m.codebook_size)))
    m._fingerprint = token_fingerprint(m.state_dict())
    return m


CASES = [  # (seconds, rate, channels, separate, coding, subtype)
    (12.3, 16_000, 1, False, "auto", "PCM_16"),  # three 250-frame chunks
    (7.1, 44_100, 2, False, "auto", "PCM_16"),  # resampled while streaming, downmixed
    (6.0, 22_050, 2, True, "range", "FLOAT"),
    (5.5, 8_000, 3, False, "packed", "PCM_24"),
    (0.01, 48_000, 1, False, "auto", "PCM_16"),  # shorter than a frame
]


@pytest.mark.parametrize(("seconds", "rate", "channels", "separate", "coding", "subtype"), CASES)
def test_streaming_compress_is_byte_identical_to_whole_file(tmp_path, monkeypatch, model, seconds, rate, channels,
                                                           separate, coding, subtype):
    monkeypatch.setattr(files, "READ_FRAMES", 7777)  # many blocks, none aligned with frames or chunks
    source = tmp_path / "in.wav"
    sf.write(source, speechlike(seconds, rate, channels), rate, subtype=subtype)
    size = files.compress_file(model, source, tmp_path / "x.tok", None, separate, coding)
    data = (tmp_path / "x.tok").read_bytes()
    wav, sr = load_audio(source, mono=not separate)
    assert data == files.encode_audio(model, wav, sr, None, coding) and size == len(data)
    header = tf.read_header(data)
    assert header.length == round(wav.shape[1] * 16_000 / rate) and header.channels == (channels if separate else 1)


def test_bitrate_and_tie_rule(tmp_path, model):
    source = tmp_path / "in.wav"
    sf.write(source, speechlike(2.0, 16_000), 16_000)
    files.compress_file(model, source, tmp_path / "a.tok", 1.5)
    assert tf.read_header((tmp_path / "a.tok").read_bytes()).num_codebooks == 3
    uniform = tiny_random(16_000)  # flat tables: range coding cannot win, auto packs
    files.compress_file(uniform, source, tmp_path / "b.tok", None)
    wav, sr = load_audio(source)
    assert (tmp_path / "b.tok").read_bytes() == files.encode_audio(uniform, wav, sr, None)
    assert tf.read_header((tmp_path / "b.tok").read_bytes()).coding == "packed"


def test_streaming_decompress_matches_whole_decode_and_length(tmp_path, monkeypatch, model):
    monkeypatch.setattr(files, "DECODE_FRAMES", 37)
    source = tmp_path / "in.wav"
    sf.write(source, speechlike(11.0, 16_000, channels=2), 16_000)
    files.compress_file(model, source, tmp_path / "x.tok", None, separate_channels=True)
    seconds = files.decompress_file(model, tmp_path / "x.tok", tmp_path / "x.wav")
    decoded, rate = sf.read(tmp_path / "x.wav", dtype="float32", always_2d=True)
    assert rate == 16_000 and decoded.shape == (11 * 16_000, 2) and seconds == 11.0
    whole, _ = files.decode_bytes(model, (tmp_path / "x.tok").read_bytes())
    # Chunked decoding equals whole decoding to float tolerance: at most one 16-bit step apart.
    assert np.abs(decoded - np.clip(whole.T, -1, 1)).max() <= 1.5 / 32768
    files.decompress_file(model, tmp_path / "x.tok", tmp_path / "x.flac")
    assert sf.info(str(tmp_path / "x.flac")).frames == 11 * 16_000


def test_work_per_step_is_bounded(tmp_path, monkeypatch, model):
    """Memory cannot grow with the audio: every encoder and decoder step takes a bounded piece."""
    pushed, decoded = [], []
    push, dpush = StreamingEncoder.push, StreamingDecoder.push
    monkeypatch.setattr(StreamingEncoder, "push", lambda self, wav: pushed.append(wav.shape[-1]) or push(self, wav))
    monkeypatch.setattr(StreamingDecoder, "push", lambda self, c: decoded.append(c.shape[-1]) or dpush(self, c))
    monkeypatch.setattr(files, "READ_FRAMES", 4000)
    source = tmp_path / "in.wav"
    sf.write(source, speechlike(15.0, 48_000), 48_000)
    files.compress_file(model, source, tmp_path / "x.tok", None)
    assert len(pushed) > 150 and max(pushed) <= 2 * 4000 * 16_000 // 48_000  # soxr hands out uneven pieces
    files.decompress_file(model, tmp_path / "x.tok", tmp_path / "x.wav")
    assert max(decoded) <= files.DECODE_FRAMES and sum(decoded) == tf.read_header((tmp_path / "x.tok").read_bytes()).num_frames
    assert sf.info(str(tmp_path / "x.wav")).frames == 15 * 16_000


def test_many_tiny_chunks_decode_together(tmp_path, model):
    """A file of 1-frame chunks is decoded in DECODE_FRAMES pieces, not frame by frame."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, (1, 4, 400))
    header = tf.TokenFileHeader(model=model.name, model_hash=model.fingerprint, sample_rate=16_000, frame_rate=50.0,
                                num_codebooks=4, codebook_size=1024, num_frames=400, length=399 * 320, chunk_frames=1,
                                coding="packed")
    _, blocks = files.decode_stream(model, tf.pack(codes, header))
    sizes = [b.shape[1] for b in blocks]
    assert sum(sizes) == 399 * 320 and len(sizes) <= 3
    whole = model.decode(torch.from_numpy(codes), length=399 * 320)[0, 0].numpy()
    np.testing.assert_allclose(np.concatenate([b[0] for b in files.decode_stream(model, tf.pack(codes, header))[1]]),
                               whole, atol=1e-5)


def _with_bad_last_chunk(data: bytes) -> bytes:
    """A file whose last chunk has a valid CRC but a payload the range decoder rejects."""
    last = tf.chunks(data)[-1]
    start, end = last.offset + 12, last.offset + 12 + last.payload_bytes
    payload = b"\xff" * (end - start)
    chunk = data[last.offset : start] + payload
    return data[: last.offset] + chunk + struct.pack("<I", zlib.crc32(chunk))


def test_errors_found_midway_leave_nothing(tmp_path, model):
    source = tmp_path / "in.wav"
    sf.write(source, speechlike(12.0, 16_000), 16_000)
    files.compress_file(model, source, tmp_path / "x.tok", None, coding="range")
    data = (tmp_path / "x.tok").read_bytes()
    bad = tmp_path / "bad.tok"
    bad.write_bytes(_with_bad_last_chunk(data))
    with pytest.raises(TokenFileError, match="bad.tok: chunk 2"):
        files.decompress_file(model, bad, tmp_path / "out.wav")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tok", "in.wav", "x.tok"]

    nan = speechlike(12.0, 16_000)
    nan[150_000] = np.nan  # in the third read block
    sf.write(tmp_path / "nan.wav", nan, 16_000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: contains NaN or infinite samples \\(the first at sample 150000\\)"):
        files.compress_file(model, tmp_path / "nan.wav", tmp_path / "nan.tok", None)
    assert not (tmp_path / "nan.tok").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_header_that_does_not_fit_the_model_is_refused(model):
    data = tf.pack(np.zeros((1, 2, 10), np.int64), tf.TokenFileHeader(
        model=model.name, model_hash=model.fingerprint, sample_rate=16_000, frame_rate=50.0, num_codebooks=2,
        codebook_size=1024, num_frames=10, length=9 * 320, coding="packed"))
    obj = json.loads(tf.read_header(data).to_json())

    def variant(**changes) -> bytes:
        text = json.dumps(dict(obj, **changes)).encode()
        start = tf.MAGIC + struct.pack("<HI", 1, len(text)) + text
        return start + struct.pack("<I", zlib.crc32(start)) + data[10 + len(tf.read_header(data).to_json()) + 4 :]

    for changes, match in [
        ({"sample_rate": 32_000}, "32000 Hz"), ({"frame_rate": 25.0}, "frames/s"),
        ({"length": 10 * 320}, "decode to at most 2880"), ({"model_hash": "00"}, "made by model"),
    ]:
        with pytest.raises(TokenFileError, match=match):
            list(files.decode_stream(model, variant(**changes))[1])
    _, blocks = files.decode_stream(model, variant(length=0))  # nothing to decode, but checked
    assert list(blocks) == []


def test_stream_packer_equals_pack_for_any_pieces():
    rng = np.random.default_rng(5)
    table = ContextTables.from_counts(*skewed_counts(rng, 6, 1024, levels=2))  # serves every coding
    for _ in range(10):
        C, K, T, chunk_frames = int(rng.integers(1, 3)), int(rng.integers(1, 7)), int(rng.integers(0, 700)), int(rng.integers(1, 300))
        codes = rng.integers(0, 1024, (C, K, T))
        header = tf.TokenFileHeader(model="m", model_hash="ab", sample_rate=16_000, frame_rate=50.0, num_codebooks=K,
                                    codebook_size=1024, num_frames=T, length=T * 320, channels=C,
                                    chunk_frames=chunk_frames)
        with tf.StreamPacker(header, table, tf.CODINGS) as packer:
            cuts = np.sort(rng.integers(0, T + 1, int(rng.integers(0, 8))))
            for a, b in zip([0, *cuts], [*cuts, T]):
                packer.push(codes[:, :, a:b])
            packer.finish(T * 320)
            for coding in tf.CODINGS:
                header.coding = coding
                buf = io.BytesIO()
                assert packer.write_to(buf, coding) == packer.size(coding) == len(buf.getvalue())
                assert buf.getvalue() == tf.pack(codes, header, table)
    with pytest.raises(ValueError, match="shape"), tf.StreamPacker(header, table) as packer:
        packer.push(np.zeros((C, K + 1, 3), np.int64))


def test_models_without_streaming_take_the_whole_file_path(tmp_path, model):
    class NoStreaming:
        """A codec offering only the AudioCodec interface (like the transformers ones)."""

        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            if name.startswith("stream_"):
                raise AttributeError(name)
            return getattr(self._inner, name)

    wrapped = NoStreaming(model)
    source = tmp_path / "in.wav"
    sf.write(source, speechlike(3.0, 16_000), 16_000)
    files.compress_file(wrapped, source, tmp_path / "x.tok", None)
    files.decompress_file(wrapped, tmp_path / "x.tok", tmp_path / "x.wav")
    assert sf.info(str(tmp_path / "x.wav")).frames == 3 * 16_000


def test_long_signal_is_written_in_segments(tmp_path):
    from codec.bench_long import write_long_signal

    n = write_long_signal(tmp_path / "long.wav", minutes=1.1, sample_rate=8_000, channels=2)
    info = sf.info(str(tmp_path / "long.wav"))
    assert n == 66 * 8_000 == info.frames and info.channels == 2
    audio, _ = sf.read(tmp_path / "long.wav", dtype="float32")
    assert 0.05 < np.abs(audio).max() <= 1.0 and audio[:8000].std() > 0.01


@pytest.mark.slow
def test_bench_long_command(capsys):
    from codec.cli import main

    assert main(["bench-long", "--minutes", "0.2", "--model", "tiny-16k", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "OK: decoded length equals the input length (192000 samples at 16000 Hz)" in out
    assert "OK: peak RSS" in out and "compress" in out and "decompress" in out


def test_a_file_from_other_installed_weights_names_them(tmp_path, monkeypatch, model):
    from codec.pretrained import load_pretrained, save_pretrained

    save_pretrained(tiny_random(seed=1), tmp_path / "weights" / "older-codec")
    other = load_pretrained(tmp_path / "weights" / "older-codec")  # as stored (float16)
    (tmp_path / "weights" / "not-a-codec").mkdir()
    (tmp_path / "weights" / "not-a-codec" / "config.json").write_text('{"format": "tokenwave-lm"}')
    monkeypatch.setenv("TOKENWAVE_WEIGHTS", str(tmp_path / "weights"))
    wav = speechlike(0.5, 16_000)[:, 0]
    data = files.encode_audio(other, wav[None], 16_000, bitrate=1.5)
    with pytest.raises(TokenFileError, match="installed as 'older-codec': pass --model older-codec"):
        list(files.decode_stream(model, data)[1])
    assert files.shipped_model_with_fingerprint("0123") is None


def test_decompress_finds_the_installed_weights_an_older_file_was_written_with(tmp_path, monkeypatch, capsys):
    """A file written by 'speechy' before 'speechy' was updated decodes with the old weights, now
    installed as 'speechy-v1'."""
    import dataclasses

    from codec.cli import main as cli_main
    from codec.model import CodecModel
    from codec.pretrained import load_pretrained, save_pretrained

    def renamed(model, name):
        copy = CodecModel(dataclasses.replace(model.config, name=name))
        copy.load_state_dict(model.state_dict())
        return copy.prepare_for_inference()

    weights = tmp_path / "weights"
    save_pretrained(renamed(tiny_random(seed=1), "speechy"), tmp_path / "old")
    old = load_pretrained(tmp_path / "old")
    sf.write(tmp_path / "a.wav", speechlike(0.5, 16_000), 16_000)
    (tmp_path / "a.tok").write_bytes(files.encode_audio(old, speechlike(0.5, 16_000).T, 16_000, bitrate=1.5))
    save_pretrained(renamed(old, "speechy-v1"), weights / "speechy-v1")
    save_pretrained(renamed(tiny_random(seed=2), "speechy"), weights / "speechy")
    monkeypatch.setenv("TOKENWAVE_WEIGHTS", str(weights))
    assert files.installed_model_of(tmp_path / "a.tok") == "speechy-v1"
    assert cli_main(["decompress", str(tmp_path / "a.tok"), "-o", str(tmp_path / "a_out.wav")]) == 0
    assert "written by earlier 'speechy' weights; decoding with 'speechy-v1'" in capsys.readouterr().err
    decoded, _ = sf.read(tmp_path / "a_out.wav")
    expected, _ = files.decode_bytes(old, (tmp_path / "a.tok").read_bytes())
    np.testing.assert_allclose(decoded, expected[0], atol=1e-4)
    # Forcing the new model still fails, naming the weights that fit.
    assert cli_main(["decompress", str(tmp_path / "a.tok"), "-o", str(tmp_path / "b.wav"), "--model", "speechy"]) == 1
    assert "installed as 'speechy-v1'" in capsys.readouterr().err


def test_a_file_of_retired_weights_says_how_to_restore_them(tmp_path, monkeypatch, capsys):
    """Weights listed in retired.json (and installed nowhere): decompress names them and the git
    command that brings them back; nothing is loaded or downloaded."""
    import json

    from codec.cli import main as cli_main
    from codec.pretrained import save_pretrained

    weights = tmp_path / "weights"
    old, new = tiny_random(seed=1), tiny_random(seed=2)
    (tmp_path / "a.tok").write_bytes(files.encode_audio(old, speechlike(0.5, 16_000).T, 16_000, bitrate=1.5))
    save_pretrained(new, weights / new.name)
    (weights / "retired.json").write_text(json.dumps([{"name": "tiny-old", "model_hash": old.fingerprint,
                                                        "retired": "2026-12-06", "commit": "abc1234",
                                                        "files": ["model.safetensors", "config.json"]}]))
    monkeypatch.setenv("TOKENWAVE_WEIGHTS", str(weights))
    assert cli_main(["decompress", str(tmp_path / "a.tok"), "-o", str(tmp_path / "a.wav")]) == 1
    err = capsys.readouterr().err
    assert "'tiny-old', retired from weights/ on 2026-12-06" in err
    assert ("mkdir -p weights/tiny-old && for f in model.safetensors config.json; do "
            "git show abc1234:weights/tiny-old/$f > weights/tiny-old/$f; done") in err
    assert not (tmp_path / "a.wav").exists()
    # weights replaced by newer ones under the same name: restored from that folder under their own name
    (weights / "retired.json").write_text(json.dumps([{"name": "tiny-old", "folder": new.name,
                                                        "model_hash": old.fingerprint, "retired": "2026-12-08",
                                                        "commit": "abc1234", "files": ["config.json"]}]))
    assert cli_main(["decompress", str(tmp_path / "a.tok"), "-o", str(tmp_path / "a.wav")]) == 1
    assert (f"mkdir -p weights/tiny-old && for f in config.json; do git show abc1234:weights/{new.name}/$f > "
            "weights/tiny-old/$f; done") in capsys.readouterr().err
    (weights / "retired.json").write_text("{not json")  # a broken list only loses the hint
    assert cli_main(["decompress", str(tmp_path / "a.tok"), "-o", str(tmp_path / "a.wav")]) == 1
    assert "token file was made by model" in capsys.readouterr().err
