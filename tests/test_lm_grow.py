"""Growing a trained token LM deeper (tokenlm/grow.py, train-lm --grow-layers)."""

from __future__ import annotations

import pytest
import torch
from lm_helpers import NPH, V, lively, tiny_config

from tokenlm.ar import ARModel
from tokenlm.errors import LMError
from tokenlm.generate import generate_ar, nar_fill
from tokenlm.grow import grow_layers
from tokenlm.nar import NARModel
from tokenlm.sampling import SamplingConfig

GREEDY = SamplingConfig(temperature=0.0, repetition_threshold=0)


def test_a_grown_ar_computes_what_it_was_grown_from():
    torch.manual_seed(0)
    small = lively(ARModel(tiny_config(text_pace=3.0)))
    grown = grow_layers(small, 4).eval()
    assert grown.config.n_layers == 4 and len(grown.transformer.blocks) == 4
    assert grown.num_parameters() > small.num_parameters()
    kept = small.state_dict()
    assert all(torch.equal(grown.state_dict()[k], v) for k, v in kept.items())
    new_block = grown.transformer.blocks[3]
    assert new_block.attn.qkv.weight.abs().sum() > 0  # fresh weights, only the branch outputs are zero
    g = torch.Generator().manual_seed(1)
    phonemes = torch.randint(2, NPH, (2, 7), generator=g)
    codes = torch.randint(0, V, (2, 12), generator=g)
    lengths = (torch.tensor([7, 5]), torch.tensor([12, 9]))
    with torch.no_grad():
        before = small(phonemes, lengths[0], codes, lengths[1])
        after = grown(phonemes, lengths[0], codes, lengths[1])
    assert torch.allclose(before, after, atol=1e-5)
    rows = [torch.tensor([5, 9, 11, 4]), torch.tensor([7, 8])]
    prompts = [torch.randint(0, V, (6,), generator=g), torch.randint(0, V, (3,), generator=g)]
    same = generate_ar(small, rows, prompts, GREEDY, max_frames=10)
    assert [torch.equal(a, b) for a, b in zip(same, generate_ar(grown, rows, prompts, GREEDY, max_frames=10))] == [True, True]


def test_a_grown_nar_computes_what_it_was_grown_from_and_then_learns():
    torch.manual_seed(2)
    small = lively(NARModel(tiny_config()))
    grown = grow_layers(small, 3).eval()
    g = torch.Generator().manual_seed(3)
    phonemes = [torch.randint(2, NPH, (n,), generator=g) for n in (5, 8)]
    prompts = [torch.randint(0, V, (4, n), generator=g) for n in (6, 3)]
    firsts = [torch.randint(0, V, (n,), generator=g) for n in (10, 7)]
    with torch.no_grad():
        expected = nar_fill(small, phonemes, prompts, firsts)
        got = nar_fill(grown, phonemes, prompts, firsts)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    # the zero branch outputs get gradients, so the new layers start learning at once
    grown.train()
    P = torch.stack([torch.nn.functional.pad(p, (0, 8 - len(p))) for p in phonemes])
    prompt = torch.stack([torch.nn.functional.pad(p, (0, 6 - p.shape[1])) for p in prompts])
    target = torch.randint(0, V, (2, 4, 10), generator=g)
    logits = grown(P, torch.tensor([5, 8]), prompt, torch.tensor([6, 3]), target, torch.tensor([10, 7]),
                   torch.tensor([1, 2]))
    logits.float().pow(2).mean().backward()
    assert grown.transformer.blocks[2].mlp[2].weight.grad.abs().sum() > 0


def test_growing_refuses_a_model_no_deeper():
    small = ARModel(tiny_config())
    for bad in (2, 1, 0):
        with pytest.raises(LMError, match="--grow-layers must be more than"):
            grow_layers(small, bad)


def test_train_lm_grows_the_init_lm_and_records_it(tmp_path):
    from safetensors.torch import load_file
    from test_lm_train import TINY_MODEL, config, make_shards

    from tokenlm.pretrained import read_lm_info
    from tokenlm.train import TrainLMConfig, train_lm

    shards = make_shards(tmp_path / "shards")
    train_lm(config(shards, tmp_path / "first", "ar", steps=3, checkpoint_every=3))
    init = tmp_path / "first" / "export"
    out = tmp_path / "grown"  # one step at a negligible rate: the old weights kept, the new branches still ~0
    train_lm(config(shards, out, "ar", steps=1, lr=1e-12, warmup_steps=0, checkpoint_every=1, init=str(init),
                    grow_layers=TINY_MODEL["n_layers"] + 1))
    info = read_lm_info(out / "export")
    assert info["lm"]["n_layers"] == TINY_MODEL["n_layers"] + 1
    assert info["extra"]["training"]["grow_layers"] == TINY_MODEL["n_layers"] + 1
    before, after = load_file(init / "model.safetensors"), load_file(out / "export" / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    new = f"transformer.blocks.{TINY_MODEL['n_layers']}."
    assert after[new + "attn.proj.weight"].abs().max() < 1e-6 and after[new + "attn.qkv.weight"].abs().max() > 0
    with pytest.raises(LMError, match="--grow-layers needs --init"):
        train_lm(config(shards, tmp_path / "none", "ar", steps=1, grow_layers=4))
    with pytest.raises(LMError, match="--grow-layers must be a positive"):
        TrainLMConfig(stage="ar", shards=[str(shards)], out_dir=str(tmp_path / "x"), grow_layers=0)
