"""Tests of rate-distortion optimised quantization (``codec.rdo``) and ``--rate-weight``."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from test_context_coding import context_model

from codec import tokenfile as tf
from codec.cli import main as cli_main
from codec.errors import ModelError, TokenwaveError
from codec.files import check_rate_weight, coding_tables, decode_bytes, encode_audio
from codec.pretrained import tiny_random
from codec.rdo import CodeCosts, RateDistortionQuantizer


class Codebook:
    def __init__(self, vectors):
        self.embed = torch.tensor(vectors, dtype=torch.float64)[:, None]  # [N, D=1]


class Quantizer:
    """Two levels of four one-dimensional codes."""

    num_codebooks, codebook_size = 2, 4

    def __init__(self):
        self.codebooks = [Codebook([0.0, 10.0, 20.0, 30.0]), Codebook([0.0, 1.0, 2.0, 3.0])]


def speechlike(seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    t = np.arange(int(16_000 * seconds)) / 16_000
    rng = np.random.default_rng(seed)
    wav = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(len(t))
    return wav.astype(np.float32)[None]


def test_a_cheaper_code_wins_once_its_saving_outweighs_the_extra_distance():
    # Level 2: code 1 is 0.16 away (squared) from a residual of 1.4, code 2 0.36 away; code 2
    # costs 1 bit, code 1 about 9.97 bits, so code 2 wins once w * 8.97 > 0.2 (w > 0.0223).
    probabilities = np.array([[0.25] * 4, [0.998, 0.001, 0.5, 0.001]])
    probabilities[1] /= probabilities[1].sum()  # code 0 is cheaper still, but 1.96 away
    costs = CodeCosts(probabilities)
    saving = float(costs.levels[1, 1] - costs.levels[1, 2])
    latent = torch.tensor([[[11.4]]], dtype=torch.float64)  # level 1 takes 10, leaving 1.4
    for weight, expected in ((0.0, 1), (0.9 * 0.2 / saving, 1), (1.1 * 0.2 / saving, 2)):
        codes = RateDistortionQuantizer(Quantizer(), probabilities, max(weight, 1e-12)).encode(latent, 2)
        assert codes.tolist() == [[[1], [expected]]], weight


def test_level_one_pays_for_its_context():
    # A transition table where staying on the previous level-1 code is cheap: with a large
    # weight the second frame keeps the first frame's code although another is nearer.
    model = context_model(2)
    tables = model.context_tables()
    N = model.codebook_size
    favourite = int(np.argmax(tables.transitions[N]))  # the cheapest first code
    stay = int(np.argmax(tables.transitions[favourite]))
    latent = torch.stack([model.quantizer.codebooks[0].embed[favourite], model.quantizer.codebooks[0].embed[
        (stay + 1) % N]])[None].double()  # [1, 2, D]: frame 2 sits on another code
    near = RateDistortionQuantizer(model.quantizer, tables, 1e-9).encode(latent, 1)
    far = RateDistortionQuantizer(model.quantizer, tables, 1e6).encode(latent, 1)
    assert near[0, 0].tolist() == [favourite, (stay + 1) % N]
    assert far[0, 0].tolist() == [favourite, stay]


def test_zero_weight_is_the_plain_encoder_bit_for_bit_and_bad_weights_fail():
    model = context_model(2)
    wav = torch.from_numpy(speechlike())
    torch.testing.assert_close(model.encode(wav, 16_000, rate_weight=0.0), model.encode(wav, 16_000), rtol=0, atol=0)
    assert encode_audio(model, wav.numpy(), 16_000, None, rate_weight=0) == encode_audio(model, wav.numpy(), 16_000, None)
    for bad in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(ModelError, match="rate weight"):
            model.encode(wav, 16_000, rate_weight=bad)
    with pytest.raises(ModelError, match="entropy-coding tables"):
        RateDistortionQuantizer(model.quantizer, None, 0.1)

    class OtherCodec:
        name = "other"

    assert check_rate_weight(OtherCodec(), 0) == 0.0
    with pytest.raises(TokenwaveError, match="cannot weigh"):
        check_rate_weight(OtherCodec(), 0.1)


def test_weight_trades_distance_for_smaller_files_that_any_reader_decodes():
    model = context_model(3)
    wav = speechlike(2.0)
    sizes, errors = [], []
    for weight in (0.0, 0.05, 5.0):
        data = encode_audio(model, wav, 16_000, None, "context", weight)
        assert tf.read_header(data).coding == "context"
        sizes.append(len(data))
        _, codes = tf.unpack(data, coding_tables(model))
        audio, rate = decode_bytes(model, data)
        assert rate == 16_000 and audio.shape == wav.shape and np.isfinite(audio).all()
        latent = model.encode_latent(torch.from_numpy(wav), 16_000)
        quantized = model.quantizer.decode(torch.from_numpy(np.ascontiguousarray(codes)))
        errors.append(float((latent.double() - quantized.double()).pow(2).sum()))
    assert sizes[2] < sizes[0] and sizes[1] <= sizes[0]
    assert errors[0] < errors[2] and errors[0] <= errors[1]


def test_streaming_carries_the_level_one_context_across_chunks():
    model = context_model(2)
    wav = torch.from_numpy(speechlike(1.5, seed=3)).repeat(2, 1)  # two streams at once
    whole = model.encode(wav, 16_000, rate_weight=0.2)
    encoder = model.stream_encoder(batch=2, rate_weight=0.2)
    pieces = [encoder.push(wav[:, i : i + 777]) for i in range(0, wav.shape[1], 777)] + [encoder.flush()]
    torch.testing.assert_close(torch.cat(pieces, dim=-1), whole, rtol=0, atol=0)
    assert not torch.equal(whole, model.encode(wav, 16_000))


def test_compress_and_roundtrip_take_a_rate_weight(tmp_path, capsys):
    from codec.pretrained import save_pretrained

    save_pretrained(context_model(3), tmp_path / "m")
    sf.write(tmp_path / "a.wav", speechlike(2.0)[0], 16_000)
    base = ["compress", str(tmp_path / "a.wav"), "--model", str(tmp_path / "m")]
    assert cli_main(base + ["-o", str(tmp_path / "plain.tok")]) == 0
    assert cli_main(base + ["-o", str(tmp_path / "weighed.tok"), "--rate-weight", "5"]) == 0
    assert (tmp_path / "weighed.tok").stat().st_size < (tmp_path / "plain.tok").stat().st_size
    assert cli_main(["decompress", str(tmp_path / "weighed.tok"), "--model", str(tmp_path / "m"),
                     "-o", str(tmp_path / "b.wav")]) == 0
    assert sf.info(tmp_path / "b.wav").frames == 32_000
    capsys.readouterr()
    assert cli_main(base + ["-o", str(tmp_path / "bad.tok"), "--rate-weight", "-1"]) == 2
    assert "rate weight" in capsys.readouterr().err and not (tmp_path / "bad.tok").exists()
    assert cli_main(["roundtrip", str(tmp_path / "a.wav"), str(tmp_path / "r.wav"), "--model", str(tmp_path / "m"),
                     "--rate-weight", "5"]) == 0
    assert "kbps" in capsys.readouterr().out
    # A codec with per-level tables only (no context tables) weighs its codes with those.
    untrained = tiny_random()
    assert untrained.context_tables() is None
    untrained.encode(torch.from_numpy(speechlike()), 16_000, rate_weight=0.1)


def test_eval_codec_scores_each_rate_weight_as_a_system(tmp_path, capsys):
    import json

    from codec.pretrained import save_pretrained

    save_pretrained(context_model(3), tmp_path / "m")
    sf.write(tmp_path / "a.wav", speechlike(2.0)[0], 16_000)
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "", "speaker": "s"}) + "\n")
    args = ["eval-codec", "--model", str(tmp_path / "m"), "--manifest", str(tmp_path / "manifest.jsonl"),
            "--split", "all", "--bitrates", "6"]
    assert cli_main(args + ["--rate-weights", "0,5", "--out", str(tmp_path / "e")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "e" / "results.jsonl").read_text().splitlines()]
    payload = {r["system"]: r["payload_kbps"] for r in rows if r["type"] == "summary"}
    name = context_model(3).name
    assert set(payload) == {name, f"{name} w=5"} and payload[name] > payload[f"{name} w=5"]
    assert "rate weight" in (tmp_path / "e" / "results.md").read_text()
    capsys.readouterr()
    assert cli_main(args + ["--rate-weights", "0,-2", "--out", str(tmp_path / "f")]) == 2
    assert "--rate-weights" in capsys.readouterr().err
