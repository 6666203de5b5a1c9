"""Token LM models: config, shapes, masking, losses, batches, save/load (tiny random models)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lm_helpers import NPH, K, V, lively, tiny_config

from tokenlm.ar import ARModel, ar_loss, ar_targets
from tokenlm.batch import LMBatch, collate, random_prompt_lengths, split_prompt
from tokenlm.config import LMConfig
from tokenlm.errors import LMError
from tokenlm.nar import NARModel, nar_loss
from tokenlm.transformer import KVCache


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return lively(ARModel(tiny_config())), lively(NARModel(tiny_config()))


def make_batch(seed=0, phoneme_lengths=(7, 4, 1), code_lengths=(12, 9, 3)) -> LMBatch:
    g = torch.Generator().manual_seed(seed)
    B, P, T = len(code_lengths), max(phoneme_lengths), max(code_lengths)
    return LMBatch(
        torch.randint(2, NPH, (B, P), generator=g),
        torch.tensor(phoneme_lengths),
        torch.randint(0, V, (B, K, T), generator=g),
        torch.tensor(code_lengths),
    )


def test_config_round_trip_and_errors():
    config = tiny_config()
    assert LMConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(LMError, match="unknown"):
        LMConfig.from_dict(config.to_dict() | {"bogus": 1})
    with pytest.raises(LMError, match="wrong type"):
        LMConfig.from_dict(config.to_dict() | {"d_model": "256"})
    with pytest.raises(LMError, match="multiple of n_heads"):
        LMConfig(d_model=30, n_heads=4)


def test_ar_shapes_and_padding_invariance(models):
    ar, _ = models
    b = make_batch()
    logits = ar(b.phonemes, b.phoneme_lengths, b.codes[:, 0], b.code_lengths)
    assert logits.shape == (3, 13, V + 1)
    for i in range(3):
        P, T = int(b.phoneme_lengths[i]), int(b.code_lengths[i])
        alone = ar(
            b.phonemes[i : i + 1, :P],
            b.phoneme_lengths[i : i + 1],
            b.codes[i : i + 1, 0, :T],
            b.code_lengths[i : i + 1],
        )
        torch.testing.assert_close(logits[i, : T + 1], alone[0], atol=1e-5, rtol=1e-5)
    # padding values do not matter
    noisy = b.codes[:, 0].clone()
    noisy[1, 9:] = 5
    noisy_ph = b.phonemes.clone()
    noisy_ph[2, 1:] = 3
    again = ar(noisy_ph, b.phoneme_lengths, noisy, b.code_lengths)
    torch.testing.assert_close(again[1, :10], logits[1, :10])
    torch.testing.assert_close(again[2, :4], logits[2, :4])


def test_ar_is_causal(models):
    ar, _ = models
    b = make_batch()
    codes = b.codes[:1, 0]
    base = ar(b.phonemes[:1], b.phoneme_lengths[:1], codes, b.code_lengths[:1])
    changed = codes.clone()
    changed[0, 5] = (changed[0, 5] + 1) % V
    out = ar(b.phonemes[:1], b.phoneme_lengths[:1], changed, b.code_lengths[:1])
    torch.testing.assert_close(out[0, :6], base[0, :6])  # positions <= 5 do not see codes[5]
    assert not torch.allclose(out[0, 6:], base[0, 6:])


def test_ar_targets_and_loss():
    codes = torch.tensor([[1, 2, 3], [4, 5, 0]])
    targets = ar_targets(codes, torch.tensor([3, 2]), eos=V)
    assert targets.tolist() == [[1, 2, 3, V], [4, 5, V, -100]]
    model = ARModel(tiny_config()).train()
    loss, metrics = ar_loss(model, make_batch())
    loss.backward()
    assert set(metrics) >= {"loss", "accuracy", "eos_accuracy", "tokens"}
    assert metrics["tokens"] == 12 + 9 + 3 + 3
    assert abs(metrics["loss"] - np.log(V + 1)) < 1.0  # near uniform at init
    assert model.text_emb.weight.grad is not None and model.head.weight.grad.abs().sum() > 0


def test_ar_text_free_rows(models):
    ar, _ = models
    b = make_batch(phoneme_lengths=(0, 0, 0))
    logits = ar(b.phonemes[:, :0], b.phoneme_lengths, b.codes[:, 0], b.code_lengths)
    assert torch.isfinite(logits).all()
    # a zero-length phoneme row inside a padded batch computes the same as the row alone
    mixed = make_batch(phoneme_lengths=(7, 0, 3))
    out = ar(mixed.phonemes, mixed.phoneme_lengths, mixed.codes[:, 0], mixed.code_lengths)
    alone = ar(
        mixed.phonemes[1:2, :0], mixed.phoneme_lengths[1:2], mixed.codes[1:2, 0, :9], mixed.code_lengths[1:2]
    )
    torch.testing.assert_close(out[1, :10], alone[0], atol=1e-5, rtol=1e-5)


def nar_inputs(b: LMBatch, prompt_lengths, stage):
    prompt, pl, target, tl = split_prompt(b.codes, b.code_lengths, torch.tensor(prompt_lengths))
    return b.phonemes, b.phoneme_lengths, prompt, pl, target, tl, torch.tensor(stage)


def test_nar_shapes_padding_and_stage_inputs(models):
    _, nar = models
    b = make_batch()
    args = nar_inputs(b, [3, 0, 1], [1, 2, 3])
    logits = nar(*args)
    assert logits.shape == (3, 9, V)
    for i in range(3):
        P, Tp, T = int(args[1][i]), int(args[3][i]), int(args[5][i])
        alone = nar(
            args[0][i : i + 1, :P],
            args[1][i : i + 1],
            args[2][i : i + 1, :, :Tp],
            args[3][i : i + 1],
            args[4][i : i + 1, :, :T],
            args[5][i : i + 1],
            args[6][i : i + 1],
        )
        torch.testing.assert_close(logits[i, :T], alone[0], atol=1e-5, rtol=1e-5)
    # layers >= stage of the target are not read; layers < stage are
    target = args[4].clone()
    target[0, 1:] = (target[0, 1:] + 1) % V  # row 0 has stage 1
    same = nar(*args[:4], target, *args[5:])
    torch.testing.assert_close(same[0], logits[0])
    target[0, 0] = (target[0, 0] + 1) % V
    assert not torch.allclose(nar(*args[:4], target, *args[5:])[0], logits[0])


def test_nar_loss_deterministic_and_trainable():
    model = NARModel(tiny_config()).train()
    b = make_batch()
    loss1, m1 = nar_loss(model, b, torch.Generator().manual_seed(3))
    _, m2 = nar_loss(model, b, torch.Generator().manual_seed(3))
    assert m1 == m2
    loss1.backward()
    assert model.stage_emb.weight.grad is not None
    assert model.transformer.blocks[0].modulation.weight.grad.abs().sum() > 0
    _, m = nar_loss(model, b, torch.Generator().manual_seed(0), stage=2)
    assert 0 < m["tokens"] <= int(b.code_lengths.sum())
    with pytest.raises(LMError, match="stage"):
        nar_loss(model, b, torch.Generator(), stage=K)
    with pytest.raises(LMError, match="codebooks"):
        nar_loss(
            model, LMBatch(b.phonemes, b.phoneme_lengths, b.codes[:, :2], b.code_lengths), torch.Generator()
        )


def test_collate_and_split_prompt():
    utts = [
        SimpleNamespace(
            id=f"u{i}",
            phonemes=np.arange(2, 2 + p, dtype=np.int32),
            codes=np.full((6, t), i + 1, dtype=np.int16),
        )
        for i, (p, t) in enumerate([(3, 5), (1, 8)])
    ]
    b = collate(utts, n_codebooks=K)
    assert b.phonemes.shape == (2, 3) and b.codes.shape == (2, K, 8) and b.codes.dtype == torch.long
    assert (
        b.phoneme_lengths.tolist() == [3, 1] and b.code_lengths.tolist() == [5, 8] and b.ids == ["u0", "u1"]
    )
    assert b.codes[0, :, 5:].eq(0).all() and b.codes[0, :, :5].eq(1).all()
    with pytest.raises(LMError):
        collate(utts, n_codebooks=7)
    with pytest.raises(LMError):
        collate([])
    codes = torch.arange(2 * 1 * 6).view(2, 1, 6)
    prompt, _, target, tl = split_prompt(codes, torch.tensor([6, 4]), torch.tensor([2, 1]))
    assert prompt[0, 0].tolist() == [0, 1] and prompt[1, 0, :1].tolist() == [6]
    assert target[0, 0].tolist() == [2, 3, 4, 5] and target[1, 0, :3].tolist() == [7, 8, 9]
    assert tl.tolist() == [4, 3]
    lengths = random_prompt_lengths(torch.tensor([1, 10, 1000]), torch.Generator().manual_seed(0))
    assert lengths[0] == 0 and 0 <= lengths[1] <= 5 and 0 <= lengths[2] <= 150


def test_kv_cache_overflow():
    cache = KVCache(1, 1, 2, 4, capacity=3)
    cache.update(0, torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))
    cache.advance(3)
    with pytest.raises(RuntimeError, match="overflow"):
        cache.update(0, torch.zeros(1, 2, 1, 4), torch.zeros(1, 2, 1, 4))


def test_save_load_round_trip_and_tampering(tmp_path, models):
    text = pytest.importorskip("tokenlm.text")
    from tokenlm.pretrained import load_lm, read_lm_info, save_lm

    vocab = text.default_vocab()
    config = tiny_config(n_phonemes=len(vocab))
    torch.manual_seed(1)
    for cls in (ARModel, NARModel):
        model = cls(config).eval()
        folder = save_lm(model, tmp_path / cls.kind, vocab, extra={"step": 7}, codec={"name": "tiny-16k"})
        loaded, loaded_vocab = load_lm(folder, kind=cls.kind)
        assert type(loaded) is cls and not loaded.training and loaded.config == config
        assert loaded_vocab.to_dict() == vocab.to_dict()
        assert loaded.info["extra"] == {"step": 7} and loaded.info["codec"] == {"name": "tiny-16k"}
        for name, value in model.state_dict().items():  # float16 storage
            torch.testing.assert_close(loaded.state_dict()[name], value.half().float())
    assert read_lm_info(tmp_path / "ar")["kind"] == "ar"
    with pytest.raises(LMError, match="nar model"):
        load_lm(tmp_path / "nar", kind="ar")
    weights = tmp_path / "ar" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(LMError, match="sha256"):
        load_lm(tmp_path / "ar")
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(LMError, match="sha256"):
        load_lm(tmp_path / "ar")
    (tmp_path / "nar" / "config.json").write_text("{not json")
    with pytest.raises(LMError, match="cannot read"):
        load_lm(tmp_path / "nar")
    with pytest.raises(LMError, match="not a tokenwave LM folder"):
        load_lm(tmp_path / "missing")


def test_rope_depends_only_on_relative_positions():
    from tokenlm.transformer import apply_rope, rope_frequencies, rope_rotations

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 1, 1, 5, 8, generator=g).unbind(0)
    inv_freq = rope_frequencies(8, 10_000.0)

    def scores(offset):
        rot = rope_rotations(torch.arange(5)[None] + offset, inv_freq)
        return apply_rope(q, rot) @ apply_rope(k, rot).transpose(-1, -2)

    torch.testing.assert_close(scores(0), scores(37), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(scores(0), q @ k.transpose(-1, -2), atol=1e-3)  # positions do matter
    torch.testing.assert_close(apply_rope(q, rope_rotations(torch.zeros(1, 5), inv_freq)), q)


def test_nar_stage_draws_follow_the_decay():
    from tokenlm.nar import draw_stages

    uniform = draw_stages(K, 6000, torch.Generator().manual_seed(0))
    assert uniform.min() == 1 and uniform.max() == K - 1
    counts = torch.bincount(uniform, minlength=K)[1:].double() / 6000
    assert (counts - 1 / (K - 1)).abs().max() < 0.03
    decayed = draw_stages(K, 6000, torch.Generator().manual_seed(0), decay=0.5)
    counts = torch.bincount(decayed, minlength=K)[1:].double() / 6000
    expected = torch.tensor([1.0, 0.5, 0.25][: K - 1], dtype=torch.float64)
    assert (counts - expected / expected.sum()).abs().max() < 0.03
    with pytest.raises(LMError, match="decay"):
        draw_stages(K, 4, torch.Generator(), decay=0.0)
    with pytest.raises(LMError, match="decay"):
        nar_loss(NARModel(tiny_config()), make_batch(), torch.Generator(), stage_decay=1.5)
