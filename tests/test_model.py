"""The codec model: shapes, bitrates, streaming equals offline, quantizer behaviour, save/load."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import codec
from codec.config import CodecConfig, tiny
from codec.errors import AudioError, ModelError
from codec.model import CodecModel, token_fingerprint
from codec.pretrained import load_pretrained, save_pretrained, tiny_random
from codec.quantizer import EMACodebook, ResidualVectorQuantizer, codebook_stats


def speechlike(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """A harmonic signal with a wandering pitch plus a little noise, ``[N]``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wav = sum(np.sin(k * phase) / k for k in range(1, 12)) * 0.1 + 0.01 * rng.standard_normal(len(t))
    return torch.from_numpy(wav.astype(np.float32))


@pytest.fixture(scope="module")
def model16():
    return tiny_random(16_000)


@pytest.mark.parametrize("sample_rate", [16_000, 24_000])
@pytest.mark.parametrize("bitrate,codebooks", [(1.5, 3), (3, 6), (6, 12), (0.5, 1)])
def test_shapes_and_bitrates(sample_rate, bitrate, codebooks):
    model = tiny_random(sample_rate)
    assert model.frame_rate == 50
    wav = speechlike(1.0, sample_rate)[None].repeat(2, 1)
    codes = model.encode(wav, sample_rate, bitrate=bitrate)
    assert codes.shape == (2, codebooks, model.num_frames(sample_rate))
    assert codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < 1024
    out = model.decode(codes, length=sample_rate)
    assert out.shape == (2, 1, sample_rate)
    assert torch.isfinite(out).all()


def test_bitrate_table(model16):
    assert model16.bitrates[:3] == [0.5, 1.0, 1.5]
    assert model16.bitrate_to_codebooks(6) == 12
    assert model16.bitrate_to_codebooks(None) == 12
    for bad in (0, 0.7, 6.5, -1):
        with pytest.raises(ModelError, match="no bitrate"):
            model16.bitrate_to_codebooks(bad)


def test_default_config_is_the_speech_codec():
    config = CodecConfig()
    assert (config.sample_rate, config.frame_rate, config.num_codebooks, config.codebook_size) == (16000, 50, 12, 1024)
    assert config.latency_seconds <= 0.080


@pytest.mark.parametrize("length", [1, 5, 319, 320, 321, 641])
def test_short_audio_is_padded_and_length_restored(model16, length):
    wav = speechlike(1.0, 16_000)[:length]
    codes = model16.encode(wav, 16_000)
    assert codes.shape[-1] == model16.num_frames(length) >= 2
    assert model16.decode(codes, length=length).shape[-1] == length


def test_input_at_another_rate_is_resampled(model16):
    codes = model16.encode(speechlike(1.0, 48_000), 48_000)
    assert codes.shape[-1] == model16.num_frames(16_000)


@pytest.mark.parametrize(
    "bad,message",
    [
        (torch.zeros(0), "empty"),
        (torch.tensor([0.0, float("nan")]), "NaN"),
        (torch.tensor([0.0, float("inf")]), "NaN or Inf"),
        (torch.zeros(2, 2, 100), "mono"),
        (torch.zeros(1, 1, 1, 100), "shaped"),
        (torch.zeros(100, dtype=torch.int16), "floating-point"),
    ],
)
def test_bad_audio_is_refused(model16, bad, message):
    with pytest.raises(AudioError, match=message):
        model16.encode(bad, 16_000)


def test_bad_codes_are_refused(model16):
    good = model16.encode(speechlike(0.2, 16_000), 16_000)
    for bad in (good[0], good.float(), good[:, :0], torch.cat([good, good], 1), good + 1024, good - good - 1, good[..., :1]):
        with pytest.raises(ModelError):
            model16.decode(bad)


def test_decoding_vectors_equals_decoding_their_codes(model16):
    codes = model16.encode(speechlike(0.5, 16_000), 16_000, bitrate=3)
    vectors = model16.code_vectors(codes)
    tables = model16.codebook_tables()
    assert len(tables) == model16.max_codebooks and tables[0].shape == (model16.codebook_size, vectors.shape[2])
    assert torch.allclose(vectors.float(), sum(tables[k][codes[:, k]] for k in range(codes.shape[1])), atol=1e-6)
    assert torch.equal(model16.decode_vectors(vectors, length=7000), model16.decode(codes, length=7000))
    between = model16.decode_vectors(vectors * 0.5)  # any point of the latent space decodes
    assert between.shape == model16.decode(codes).shape and torch.isfinite(between).all()
    for bad in (vectors[0], vectors[..., :-1], vectors[:, :1], vectors * float("nan")):
        with pytest.raises(ModelError):
            model16.decode_vectors(bad)


@settings(max_examples=15, deadline=None)
@given(chunks=st.lists(st.integers(0, 2000), min_size=1, max_size=30), bitrate=st.sampled_from([0.5, 1.5, 6]))
def test_streaming_encode_is_bit_exact(model16, chunks, bitrate):
    wav = speechlike(2.0, 16_000, seed=len(chunks))[: sum(chunks) + 1]
    offline = model16.encode(wav, 16_000, bitrate)
    stream = model16.stream_encoder(bitrate)
    pieces, start = [], 0
    for size in chunks + [len(wav)]:
        pieces.append(stream.push(wav[start : start + size]))
        start += size
    pieces.append(stream.flush())
    assert torch.equal(torch.cat(pieces, dim=-1), offline)


def test_streaming_encode_is_bit_exact_at_full_size():
    torch.manual_seed(3)
    model = CodecModel(CodecConfig()).prepare_for_inference()
    wav = speechlike(2.0, 16_000)
    offline = model.encode(wav, 16_000)
    for chunk in (160, 1111):
        stream = model.stream_encoder()
        codes = [stream.push(wav[i : i + chunk]) for i in range(0, len(wav), chunk)] + [stream.flush()]
        assert torch.equal(torch.cat(codes, -1), offline)


@pytest.mark.parametrize("chunk", [1, 2, 7, 1000])
def test_streaming_decode_matches_offline(model16, chunk):
    wav = speechlike(1.3, 16_000)
    codes = model16.encode(wav, 16_000)
    offline = model16.decode(codes, length=len(wav))
    decoder = model16.stream_decoder(length=len(wav))
    audio = torch.cat([decoder.push(codes[..., i : i + chunk]) for i in range(0, codes.shape[-1], chunk)], -1)
    assert audio.shape == offline.shape
    torch.testing.assert_close(audio, offline, atol=1e-5, rtol=1e-5)


def test_streaming_decoder_emits_audio_with_the_documented_latency(model16):
    decoder = model16.stream_decoder()
    codes = model16.encode(speechlike(1.0, 16_000), 16_000)
    first = decoder.push(codes[..., :1])
    second = decoder.push(codes[..., 1:2])
    overlap = model16.config.n_fft // model16.hop
    assert first.shape[-1] == 0 if overlap == 2 else True
    assert second.shape[-1] == model16.hop  # samples [0, hop) are final after frame 1
    assert model16.config.latency_seconds == pytest.approx(0.04)


def test_streaming_guards(model16):
    stream = model16.stream_encoder()
    with pytest.raises(AudioError, match="empty"):
        stream.flush()
    stream = model16.stream_encoder()
    stream.push(torch.zeros(10))
    stream.flush()
    with pytest.raises(AudioError, match="flushed"):
        stream.push(torch.zeros(10))
    with pytest.raises(AudioError, match="NaN"):
        model16.stream_encoder().push(torch.tensor([float("nan")]))
    decoder = model16.stream_decoder()
    for bad in (torch.full((1, 3, 2), 1024), torch.zeros(1, 13, 2, dtype=torch.long), torch.zeros(2, 3, 2, dtype=torch.long)):
        with pytest.raises(ModelError):
            decoder.push(bad)


def test_training_pass_quantizer_dropout_and_gradients():
    torch.manual_seed(0)
    model = CodecModel(tiny())
    model.train()
    wav = speechlike(1.0, 16_000)[None, None].repeat(8, 1, 1)
    recon, out = model(wav)
    assert recon.shape == wav.shape
    assert out.codes.shape == (8, 12, model.num_frames(16_000))
    assert all(bool(cb.initialized) for cb in model.quantizer.codebooks)  # k-means ran on the first batch
    (recon.pow(2).mean() + out.commitment_loss).backward()
    assert model.encoder.proj_in.weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    counts = {int(k) for _ in range(10) for k in model(wav)[1].num_codebooks}
    assert len(counts) > 2 and 12 in counts  # quantizer dropout varies the depth


def test_ema_codebook_learns_and_dead_codes_are_replaced():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(dim=4, num_codebooks=2, codebook_size=16, dead_code_threshold=1.0, dropout=0.0)
    rvq.train()
    centers = torch.randn(8, 4) * 3
    data = lambda: (centers[torch.randint(0, 8, (512,))] + 0.05 * torch.randn(512, 4))[None]
    errors = []
    for _ in range(80):
        x = data()
        errors.append((rvq(x).quantized - x).pow(2).mean().item())
    assert errors[-1] < 0.1 and errors[-1] < errors[1] / 3  # EMA updates keep improving after k-means
    first = rvq.codebooks[0]
    first.cluster_size[:4] = 0.0  # pretend 4 codes went dead
    before = first.embed[:4].clone()
    x = data()[0]
    first.update(x, first.nearest(x))
    assert not torch.equal(first.embed[:4], before)
    assert (first.cluster_size[:4] >= 1.0).all()
    # re-seeded codes sit on data points
    assert torch.cdist(first.embed[:4], x).min(dim=1).values.max() < 1e-5


def test_dead_code_rule_spares_evenly_used_codes_when_a_batch_has_fewer_frames_than_codes():
    """32 frames per update over 64 codes: each code is used about 0.5 times per update, below
    the absolute threshold of 2; only the code no frame reaches any more may be re-seeded."""
    torch.manual_seed(0)
    centers = torch.randn(64, 4) * 5
    book = EMACodebook(dim=4, size=64, decay=0.99, dead_code_threshold=2.0, kmeans_iters=1, dead_code_share=0.1)
    book.initialized.fill_(1.0)
    book.embed.copy_(centers)
    book.cluster_size.fill_(0.5)
    book.embed_avg.copy_(centers * 0.5)
    for _ in range(400):
        x = centers[torch.randint(1, 64, (32,))] + 0.01 * torch.randn(32, 4)  # code 0 never used
        book.update(x, book.nearest(x))
    assert float(book.dead_threshold()) == pytest.approx(0.1 * 32 / 64, rel=0.05)
    drift = (book.embed - centers).norm(dim=1)
    assert drift[1:].max() < 0.05  # every live code kept its place
    assert drift[0] > 1.0  # the unused one was re-seeded onto a batch vector


def test_codebook_stats():
    codes = torch.tensor([[[0, 1, 2, 3], [5, 5, 5, 5]]])
    stats = codebook_stats(codes, codebook_size=8)
    assert stats[0]["usage"] == 0.5 and stats[0]["perplexity"] == pytest.approx(4.0)
    assert stats[1]["usage"] == 1 / 8 and stats[1]["perplexity"] == pytest.approx(1.0)


def test_save_load_round_trip_and_tamper_detection(tmp_path, model16):
    save_pretrained(model16, tmp_path / "m")
    loaded = codec.load(str(tmp_path / "m"))
    wav = speechlike(0.5, 16_000)
    # float16 storage changes the weights slightly; the codes of a random model mostly agree
    agree = (loaded.encode(wav, 16_000) == model16.encode(wav, 16_000)).float().mean()
    assert agree > 0.5
    assert loaded.fingerprint == load_pretrained(tmp_path / "m").fingerprint
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["name"] == "tiny-16k" and len(config["weights_sha256"]) == 64
    data = bytearray((tmp_path / "m" / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupted"):
        codec.load(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").write_bytes(bytes(data[:100]))
    with pytest.raises(ModelError):
        codec.load(str(tmp_path / "m"))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ModelError, match="tiny-16k"):
        codec.load("no-such-model")


def test_config_validation():
    with pytest.raises(ModelError, match="multiple of hop"):
        CodecConfig(n_fft=500)
    with pytest.raises(ModelError, match="unknown"):
        CodecConfig.from_dict({"bogus": 1})
    with pytest.raises(ModelError, match="wrong type"):
        CodecConfig.from_dict({"sample_rate": "16000"})


def test_load_from_the_local_hub_cache(tmp_path, monkeypatch, model16):
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-codec" / "snapshots" / "0123abcd"
    save_pretrained(model16, snapshot)
    (cache / "models--someone--tiny-codec" / "refs").mkdir()
    (cache / "models--someone--tiny-codec" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    loaded = codec.load("someone/tiny-codec")
    assert loaded.fingerprint == load_pretrained(snapshot).fingerprint
    with pytest.raises(ModelError, match="never downloads"):
        codec.load("someone/absent-codec")


def test_fingerprint_covers_the_token_space_not_the_decoder():
    model = CodecModel(tiny())  # not prepared for inference: the fingerprint is not cached
    before = model.fingerprint
    with torch.no_grad():
        model.decoder.proj_in.weight.add_(0.1)
    assert model.fingerprint == before  # a retrained decoder reads the same token files
    with torch.no_grad():
        model.encoder.proj_in.weight.add_(0.1)
    assert model.fingerprint != before
    changed = model.fingerprint
    codes_before = model.codes_fingerprint
    model.code_counts[0, 0] += 1  # the entropy-coding tables are part of the token files...
    assert model.fingerprint != changed
    assert model.codes_fingerprint == codes_before  # ...but not of what the codes mean (token LMs)
    changed = model.fingerprint
    with torch.no_grad():
        model.quantizer.codebooks[0].embed[0] += 1
    assert model.fingerprint != changed and model.codes_fingerprint != codes_before
    prepared = CodecModel(tiny()).prepare_for_inference()  # cached values equal the computed ones
    assert prepared.codes_fingerprint == token_fingerprint(prepared.state_dict(), tables=False)
    assert prepared.fingerprint == token_fingerprint(prepared.state_dict()) != prepared.codes_fingerprint


def test_frozen_codebooks_still_drop_levels_but_do_not_learn():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(8, 3, 16, dropout=1.0)
    rvq.learn_codebooks = False
    before = {k: v.clone() for k, v in rvq.state_dict().items()}
    out = rvq.train()(torch.randn(32, 10, 8))
    assert all(torch.equal(before[k], v) for k, v in rvq.state_dict().items())
    assert (out.num_codebooks < 3).any()  # quantizer dropout still trains the decoder for every bitrate
