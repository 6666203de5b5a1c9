"""Mixed precision in training (``--precision``, codec/precision.py): which dtype each setting
gives on the CPU, that the codec's bf16 pass keeps the quantizer, the iSTFT head and a frozen
encoder in float32, and that bf16 training runs and learns for the codec and both token LMs."""

import dataclasses
import json

import pytest
import torch
from test_train import config as codec_train_config
from test_train import make_manifest

from codec.config import tiny
from codec.errors import TokenwaveError
from codec.model import CodecModel
from codec.precision import autocast, autocast_dtype
from codec.train import freeze_token_space, train_codec

CPU = torch.device("cpu")


def test_cpu_precisions():
    assert autocast_dtype("auto", CPU) is None  # float32 stays the CPU default
    assert autocast_dtype("fp32", CPU) is None
    assert autocast_dtype("bf16", CPU) == torch.bfloat16
    with pytest.raises(TokenwaveError, match="fp16 needs CUDA"):
        autocast_dtype("fp16", CPU)
    with pytest.raises(TokenwaveError, match="auto, fp32, bf16, fp16"):
        autocast_dtype("int8", CPU)
    with autocast(CPU, None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.bfloat16


def _compute_dtypes(model: CodecModel) -> dict:
    """Record the dtype that each part of the model computes in during one forward pass."""
    seen = {}

    def hook(name):
        def record(module, inputs, output):
            first = output[0] if isinstance(output, tuple) else output
            seen[name] = first.dtype
        return record

    model.encoder.stack.blocks[0].fc1.register_forward_hook(hook("encoder"))
    model.decoder.stack.blocks[0].fc1.register_forward_hook(hook("decoder"))
    model.decoder.head.proj.register_forward_hook(hook("head"))
    model.quantizer.register_forward_hook(lambda m, i, out: seen.__setitem__("quantizer", out.quantized.dtype))
    return seen


def test_codec_bf16_pass_keeps_quantizer_and_head_in_float32():
    torch.manual_seed(0)
    model = CodecModel(tiny()).train()
    wav = torch.randn(2, 1, 8_000) * 0.1
    seen = _compute_dtypes(model)
    recon, _ = model(wav, mixed=torch.bfloat16)
    assert seen == {"encoder": torch.bfloat16, "decoder": torch.bfloat16,
                    "quantizer": torch.float32, "head": torch.float32}
    assert recon.dtype == torch.float32 and recon.shape == wav.shape
    recon.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_codec_bf16_with_a_frozen_encoder_computes_the_float32_codes():
    torch.manual_seed(0)
    model = CodecModel(tiny())
    freeze_token_space(model)
    model.eval()  # no quantizer dropout, no codebook updates
    wav = torch.randn(2, 1, 8_000) * 0.1
    seen = _compute_dtypes(model)
    recon_fp32, plain = model(wav)
    recon_bf16, mixed = model(wav, mixed=torch.bfloat16)
    assert seen["encoder"] == torch.float32 and seen["decoder"] == torch.bfloat16
    assert torch.equal(plain.codes, mixed.codes)  # the decoder trains on the codes inference computes
    # bfloat16 keeps 8 bits of mantissa: close to the float32 output, not equal to it.
    error = (recon_bf16 - recon_fp32).norm() / recon_fp32.norm()
    assert 0 < error < 0.05


def test_train_codec_in_bf16_learns_and_records_it(tmp_path):
    manifest = make_manifest(tmp_path)
    train_codec(dataclasses.replace(codec_train_config(tmp_path, manifest, steps=20), precision="bf16"))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 20 and log[-1]["loss"] < log[0]["loss"]
    training = json.loads((tmp_path / "run" / "export" / "config.json").read_text())["training"]
    assert training["precision"] == "bf16"
    with pytest.raises(TokenwaveError, match="--precision must be fp32 or bf16"):
        train_codec(dataclasses.replace(codec_train_config(tmp_path, manifest, steps=20), precision="fp16"))


@pytest.mark.parametrize("stage", ["ar", "nar"])
def test_train_lm_in_bf16_on_the_cpu_tracks_float32_and_resumes_exactly(tmp_path, stage):
    from test_lm_train import assert_same_weights, final_weights, make_shards, read_log
    from test_lm_train import config as lm_train_config

    from tokenlm.train import train_lm

    shards = make_shards(tmp_path / "shards")
    out = tmp_path / "run"
    train_lm(lm_train_config(shards, out, stage, steps=10, precision="bf16"))
    train_lm(lm_train_config(shards, tmp_path / "fp32", stage, steps=10, precision="fp32"))
    bf16, fp32 = [r["loss"] for r in read_log(out)], [r["loss"] for r in read_log(tmp_path / "fp32")]
    assert len(bf16) == len(fp32) == 10 and bf16 != fp32  # the same batches, in another precision
    assert max(abs(a - b) / b for a, b in zip(bf16, fp32)) < 0.05
    uninterrupted = final_weights(out, 10)
    (out / "checkpoints" / "step_0000010.pt").write_bytes(b"torn")
    train_lm(lm_train_config(shards, out, stage, steps=10, precision="bf16"))
    assert_same_weights(final_weights(out, 10), uninterrupted)  # bf16 on the CPU is deterministic too
    with pytest.raises(TokenwaveError, match="fp16 needs CUDA"):
        train_lm(lm_train_config(shards, tmp_path / "fp16", stage, steps=2, precision="fp16"))
