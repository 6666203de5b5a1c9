"""The transformers codecs (EnCodec, DAC, Mimi) behind AudioCodec, on tiny random models; and the benchmark."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

pytest.importorskip("transformers")

from codec.benchmark import benchmark_codec, format_comparison, speech_like_signal
from codec.errors import AudioError, ModelError, TokenFileError
from codec.hf_codecs import (
    HFCodec,
    encodec_24khz_architecture,
    load_hf_codec,
    resample,
    tiny_random_hf_codec,
)

KINDS = ["encodec", "dac", "mimi"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: thread start-up and sync cost more than the work, and the test machine is shared.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def codecs() -> dict[str, HFCodec]:
    return {kind: tiny_random_hf_codec(kind) for kind in KINDS}


def _wav(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(batch, 1, n, generator=g)


def _frames(codec: HFCodec, n: int) -> int:
    return math.ceil(n / codec.hop_length)


@pytest.mark.parametrize("kind", KINDS)
def test_encode_shape_dtype_range(codecs, kind):
    codec = codecs[kind]
    n = 1001  # not a whole number of frames
    codes = codec.encode(_wav(2, n), codec.sample_rate)
    assert codes.shape == (2, codec.max_codebooks, _frames(codec, n))
    assert codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < codec.codebook_size
    assert len(torch.unique(codes)) > 1  # random codebooks, not all zero
    assert codec.sample_rate / codec.frame_rate == pytest.approx(codec.hop_length)


@pytest.mark.parametrize("kind", KINDS)
def test_bitrate_to_codebooks(codecs, kind):
    codec = codecs[kind]
    wav = _wav(1, 800)
    full = codec.encode(wav, codec.sample_rate)
    ks = []
    for bitrate in codec.bitrates:
        k = codec.bitrate_to_codebooks(bitrate)
        ks.append(k)
        assert codec.codebooks_to_bitrate(k) == pytest.approx(bitrate)
        codes = codec.encode(wav, codec.sample_rate, bitrate=bitrate)
        assert codes.shape[1] == k
        assert torch.equal(codes, full[:, :k])  # residual quantisation: fewer codebooks = a prefix
    assert ks == sorted(ks) and ks[-1] == codec.max_codebooks
    assert codec.bitrate_to_codebooks(None) == codec.max_codebooks
    with pytest.raises(ModelError, match="no bitrate"):
        codec.bitrate_to_codebooks(codec.bitrates[0] * 0.77)


def test_bitrates_per_kind(codecs):
    # EnCodec: only its target bandwidths (3/6/12 kbps here: 500 Hz frames, 6 bits per code).
    assert codecs["encodec"].bitrates == [3.0, 6.0, 12.0]
    assert [codecs["encodec"].bitrate_to_codebooks(b) for b in (3.0, 6.0, 12.0)] == [1, 2, 4]
    with pytest.raises(ModelError):
        codecs["encodec"].bitrate_to_codebooks(9.0)  # 3 codebooks: not an EnCodec bandwidth
    # DAC: any K; 2000 Hz frames x 5 bits.
    assert codecs["dac"].bitrates == pytest.approx([10.0, 20.0, 30.0])
    # Mimi: any K from its single semantic codebook; 500 Hz x 6 bits.
    assert codecs["mimi"].bitrates == pytest.approx([3.0, 6.0, 9.0, 12.0])


@pytest.mark.parametrize("kind", KINDS)
def test_decode_shape_and_length(codecs, kind):
    codec = codecs[kind]
    n = 1001
    codes = codec.encode(_wav(2, n), codec.sample_rate)
    out = codec.decode(codes, length=n)
    assert out.shape == (2, 1, n) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    full = codec.decode(codes)
    assert full.shape == (2, 1, codes.shape[-1] * codec.hop_length)
    assert torch.equal(full[..., :n], out)
    # fewer codebooks decode too
    k = codec._allowed[0]
    assert codec.decode(codes[:, :k], length=n).shape == (2, 1, n)
    with pytest.raises(TokenFileError):
        codec.decode(codes, length=codes.shape[-1] * codec.hop_length + 1)
    bad = codes.clone()
    bad[0, 0, 0] = codec.codebook_size
    with pytest.raises(TokenFileError):
        codec.decode(bad)
    with pytest.raises(TokenFileError):
        codec.decode(torch.zeros(1, codec.max_codebooks + 1, 3, dtype=torch.int64))
    with pytest.raises(TokenFileError):
        codec.decode(codes.float())


@pytest.mark.parametrize("kind", KINDS)
def test_input_at_another_rate_is_resampled(codecs, kind):
    codec = codecs[kind]
    other = 44100
    n = 2205  # 50 ms
    wav = _wav(2, n, seed=3)
    codes = codec.encode(wav, other)
    native = resample(wav, other, codec.sample_rate)
    assert native.shape[-1] == round(n * codec.sample_rate / other)
    assert codes.shape == (2, codec.max_codebooks, _frames(codec, native.shape[-1]))
    assert torch.equal(codes, codec.encode(native, codec.sample_rate))


def test_resample_keeps_a_tone():
    t = torch.arange(16000) / 16000
    tone = torch.sin(2 * math.pi * 440 * t).reshape(1, 1, -1)
    up = resample(tone, 16000, 24000)
    assert up.shape == (1, 1, 24000)
    ref = torch.sin(2 * math.pi * 440 * torch.arange(24000) / 24000)
    assert torch.allclose(up[0, 0, 1000:-1000], ref[1000:-1000], atol=1e-2)


@pytest.mark.parametrize("kind", KINDS)
def test_bad_audio_is_refused(codecs, kind):
    codec = codecs[kind]
    with pytest.raises(AudioError):
        codec.encode(torch.zeros(2, 100), codec.sample_rate)  # no channel axis
    with pytest.raises(AudioError):
        codec.encode(torch.zeros(1, 2, 100), codec.sample_rate)  # stereo
    with pytest.raises(AudioError):
        codec.encode(torch.zeros(1, 1, 0), codec.sample_rate)
    nan = torch.zeros(1, 1, 100)
    nan[0, 0, 5] = float("nan")
    with pytest.raises(AudioError):
        codec.encode(nan, codec.sample_rate)
    with pytest.raises(AudioError):
        codec.encode(torch.zeros(1, 1, 100), 0)


@pytest.mark.parametrize("kind", KINDS)
def test_load_from_local_directory(codecs, kind, tmp_path):
    codec = codecs[kind]
    folder = tmp_path / f"my-{kind}"
    codec.model.save_pretrained(folder)
    loaded = load_hf_codec(str(folder))
    assert isinstance(loaded, HFCodec) and loaded.kind == kind
    assert loaded.name == f"my-{kind}"
    assert loaded.fingerprint == codec.fingerprint
    assert (loaded.sample_rate, loaded.frame_rate, loaded.codebook_size, loaded.max_codebooks) == (
        codec.sample_rate,
        codec.frame_rate,
        codec.codebook_size,
        codec.max_codebooks,
    )
    wav = _wav(1, 700, seed=5)
    assert torch.equal(loaded.encode(wav, codec.sample_rate), codec.encode(wav, codec.sample_rate))


def _fake_hub_cache(cache, repo_id: str, folder) -> None:
    """Lay ``folder`` out as huggingface_hub's cache would after a download of ``repo_id``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)


def test_load_hub_id_from_local_cache(codecs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    codecs["encodec"].model.save_pretrained(tmp_path / "src")
    _fake_hub_cache(tmp_path / "cache", "someone/tiny-encodec", tmp_path / "src")
    loaded = load_hf_codec("someone/tiny-encodec", cache_dir=tmp_path / "cache")
    assert loaded.name == "someone/tiny-encodec"
    assert loaded.fingerprint == codecs["encodec"].fingerprint


@pytest.mark.parametrize("name", ["facebook/encodec_24khz", "mimi", "descript/dac_44khz"])
def test_missing_hub_id_is_a_one_line_model_error(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelError) as info:
        load_hf_codec(name, cache_dir=tmp_path / "empty-cache")
    message = str(info.value)
    assert "\n" not in message
    assert "huggingface-cli download" in message and "never downloads" in message
    expected = {"mimi": "kyutai/mimi"}.get(name, name)
    assert f"huggingface-cli download {expected}" in message


def test_hub_id_with_weights_missing_from_cache(codecs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    codecs["dac"].model.save_pretrained(tmp_path / "src")
    for weights in (tmp_path / "src").glob("*.safetensors"):
        weights.unlink()
    _fake_hub_cache(tmp_path / "cache", "someone/tiny-dac", tmp_path / "src")
    with pytest.raises(ModelError, match="weights are not in the local Hugging Face cache") as info:
        load_hf_codec("someone/tiny-dac", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value)


def test_bad_paths_and_configs(tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        load_hf_codec(str(tmp_path / "nope") + "/")
    with pytest.raises(ModelError, match="no such directory"):
        load_hf_codec("./not/a/model/here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_hf_codec(tmp_path / "empty")
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match="not a supported codec"):
        load_hf_codec(other)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read config.json"):
        load_hf_codec(broken)
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        load_hf_codec(tmp_path / "file.bin")
    with pytest.raises(ModelError, match="unknown codec kind"):
        tiny_random_hf_codec("soundstream")


def test_weights_that_do_not_fit_are_refused(codecs, tmp_path):
    codecs["mimi"].model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["codebook_size"] = 128  # codebook tensors now have the wrong shape
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as info:
        load_hf_codec(tmp_path / "m")
    assert "\n" not in str(info.value)


def test_chunked_stereo_encodec_is_refused():
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(
        sampling_rate=8000, upsampling_ratios=[4, 4], codebook_size=64, codebook_dim=16,
        target_bandwidths=[3.0, 6.0], hidden_size=16, num_filters=4, num_lstm_layers=1,
        chunk_length_s=1.0, overlap=0.01, normalize=True,
    )  # fmt: skip
    with pytest.raises(ModelError, match="chunks"):
        HFCodec(EncodecModel(config))


def test_fingerprint_is_cached_and_tracks_weights(codecs):
    a = codecs["dac"].fingerprint
    assert len(a) == 16 and int(a, 16) >= 0
    assert codecs["dac"].fingerprint is a
    assert tiny_random_hf_codec("dac").fingerprint == a  # seeded
    assert tiny_random_hf_codec("dac", seed=1).fingerprint != a
    assert len({c.fingerprint for c in codecs.values()}) == 3


def test_encodec_24khz_architecture_matches_the_pretrained_model():
    codec = encodec_24khz_architecture()
    c = codec.config
    assert (codec.sample_rate, codec.frame_rate, codec.hop_length) == (24000, 75.0, 320)
    assert (codec.max_codebooks, codec.codebook_size) == (32, 1024)
    assert codec.bitrates == [1.5, 3.0, 6.0, 12.0, 24.0]
    assert list(c.upsampling_ratios) == [8, 5, 4, 2]
    assert (c.num_filters, c.hidden_size, c.codebook_dim, c.num_lstm_layers, c.num_residual_layers) == (
        32, 128, 128, 2, 1,
    )  # fmt: skip
    assert (c.norm_type, c.use_causal_conv, c.normalize, c.chunk_length_s, c.audio_channels) == (
        "weight_norm", True, False, None, 1,
    )  # fmt: skip
    assert (c.kernel_size, c.last_kernel_size, c.residual_kernel_size, c.compress, c.pad_mode) == (
        7, 7, 3, 2, "reflect",
    )  # fmt: skip
    assert codec.num_parameters == 14_851_810
    assert encodec_24khz_architecture().fingerprint == codec.fingerprint  # seeded
    codes = codec.encode(_wav(1, 2400), 24000, bitrate=6.0)
    assert codes.shape == (1, 8, 8)
    assert codec.decode(codes, length=2400).shape == (1, 1, 2400)


def test_speech_like_signal():
    x = speech_like_signal(0.5, 16000)
    assert x.shape == (1, 1, 8000) and x.dtype == torch.float32
    assert torch.equal(x, speech_like_signal(0.5, 16000))
    assert float(x.abs().max()) == pytest.approx(0.5)
    assert float(x.std()) > 0.02


def test_benchmark_codec_and_table(codecs):
    rows = [
        benchmark_codec(codecs["mimi"], 0.25, 1, repeats=2),
        benchmark_codec(codecs["encodec"], 0.25, 1, bitrate=6.0, repeats=1),
    ]
    for row in rows:
        assert row["encode_rtf"] > 0 and row["decode_rtf"] > 0
        assert row["total_rtf"] == pytest.approx(row["encode_rtf"] + row["decode_rtf"])
        assert row["encode_peak_mib"] >= 0 and row["decode_peak_mib"] >= 0 and row["memory_method"]
        assert row["threads"] == 1
    assert len(rows[0]["encode_s"]) == 2 and rows[1]["codebooks"] == 2
    text = format_comparison(rows)
    assert "tiny-random-mimi" in text and "tiny-random-encodec" in text
    assert "speed ratio tiny-random-mimi vs tiny-random-encodec" in text
    assert torch.get_num_threads() == 1  # restored


def test_benchmark_with_a_given_signal(codecs):
    row = benchmark_codec(codecs["dac"], 0.1, 1, repeats=1, signal=_wav(1, 441)[0, 0], signal_rate=44100)
    assert row["seconds"] == pytest.approx(0.1) and row["signal"] == "given signal"
    assert row["frames"] == math.ceil(1600 / codecs["dac"].hop_length)
