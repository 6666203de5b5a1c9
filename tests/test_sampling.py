"""Token sampling: greedy, top-k, top-p, seeds, repetition-aware sampling (RAS)."""

from __future__ import annotations

import pytest
import torch

from tokenlm.errors import LMError
from tokenlm.sampling import SamplingConfig, filter_logits, sample_next


def test_greedy_is_argmax():
    logits = torch.randn(5, 20, generator=torch.Generator().manual_seed(0))
    tokens = sample_next(logits, SamplingConfig(temperature=0), None, torch.zeros(5, 30, dtype=torch.long))
    assert torch.equal(tokens, logits.argmax(-1))


def test_top_k_and_top_p_restrict_the_support():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 50, generator=g).expand(4000, 50)
    top5 = set(logits[0].topk(5).indices.tolist())
    tokens = sample_next(logits, SamplingConfig(temperature=1.0, top_k=5, repetition_threshold=0), g)
    assert set(tokens.tolist()) == top5  # all five occur in 4000 draws, nothing else
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()[None].expand(4000, 4)
    tokens = sample_next(
        probs, SamplingConfig(temperature=1.0, top_k=0, top_p=0.75, repetition_threshold=0), g
    )
    assert set(tokens.tolist()) == {0, 1}  # 0.5 + 0.3 >= 0.75: the nucleus is {0, 1}
    both = SamplingConfig(temperature=1.0, top_k=3, top_p=0.75, repetition_threshold=0)
    assert set(sample_next(probs, both, g).tolist()) == {0, 1}
    wide = sample_next(probs, SamplingConfig(temperature=1.0, top_k=3, repetition_threshold=0), g)
    assert set(wide.tolist()) == {0, 1, 2}
    share = wide.eq(0).float().mean().item()
    assert abs(share - 0.5 / 0.95) < 0.04  # renormalised over the top 3
    kept = filter_logits(torch.tensor([[3.0, 1.0, 0.0]]), top_p=0.01)
    assert torch.isfinite(kept).tolist() == [[True, False, False]]  # the best token always stays


def test_seeded_generator_is_reproducible():
    logits = torch.randn(64, 100, generator=torch.Generator().manual_seed(1))
    config = SamplingConfig(temperature=1.3, top_k=20, top_p=0.9)
    a = sample_next(logits, config, torch.Generator().manual_seed(7))
    b = sample_next(logits, config, torch.Generator().manual_seed(7))
    c = sample_next(logits, config, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_repetition_aware_sampling_resamples_from_the_full_distribution():
    # top-k 1 always picks token 3; the full distribution gives token 3 only ~1/4 of the mass
    logits = torch.zeros(2000, 10)
    logits[:, 3] = 1.0
    config = SamplingConfig(temperature=1.0, top_k=1, repetition_window=10, repetition_threshold=4)
    g = torch.Generator().manual_seed(0)
    below = torch.tensor([3, 3, 3, 0, 0, 0, 0, 0, 0, 0]).expand(2000, 10)  # 3 repeats < threshold
    assert sample_next(logits, config, g, below).eq(3).all()
    old = torch.tensor([3] * 6 + [0] * 10).expand(2000, 16)  # repeats outside the window do not count
    assert sample_next(logits, config, g, old).eq(3).all()
    looping = torch.full((2000, 10), 3)
    tokens = sample_next(logits, config, g, looping)
    share = tokens.eq(3).float().mean().item()
    expected = torch.e / (torch.e + 9)  # softmax mass of token 3 without truncation
    assert abs(share - expected) < 0.05
    assert len(set(tokens.tolist())) == 10
    off = SamplingConfig(temperature=1.0, top_k=1, repetition_threshold=0)
    assert sample_next(logits, off, g, looping).eq(3).all()


def test_sampling_config_validation():
    for bad in (
        {"temperature": -1},
        {"top_k": -1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"min_frames_per_phoneme": 5, "max_frames_per_phoneme": 2},
        {"max_frames": 0},
    ):
        with pytest.raises(LMError):
            SamplingConfig(**bad)
    assert SamplingConfig(temperature=0).greedy


def test_model_sampling_starts_from_the_weights_recommendation():
    from tokenlm.sampling import model_sampling

    info = {"sampling": {"temperature": 0.5, "top_k": 10, "text_guidance": 3.0}}
    recommended = model_sampling(info)
    assert (recommended.temperature, recommended.top_k, recommended.text_guidance) == (0.5, 10, 3.0)
    assert recommended.top_p == SamplingConfig().top_p  # the rest: defaults
    mine = model_sampling(info, {"temperature": 0.9})
    assert (mine.temperature, mine.top_k) == (0.9, 10)
    assert model_sampling(None) == SamplingConfig() == model_sampling({"lm": {}})
    for bad in ({"temprature": 1.0}, {"top_k": "10"}, {"top_k": True}, {"temperature": -1.0}):
        with pytest.raises(LMError):
            model_sampling({"sampling": bad})
    assert SamplingConfig.from_dict(SamplingConfig().to_dict()) == SamplingConfig()


def test_a_saved_ar_may_carry_its_sampling_and_bad_entries_are_refused(tmp_path):
    import json

    from lm_helpers import tiny_config

    from tokenlm.ar import ARModel
    from tokenlm.pretrained import load_lm, read_lm_info, save_lm
    from tokenlm.text import default_vocab

    folder = save_lm(ARModel(tiny_config(n_phonemes=len(default_vocab()))), tmp_path / "ar", default_vocab())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"sampling": {"temperature": 0.5}}))
    assert load_lm(folder)[0].info["sampling"] == {"temperature": 0.5}
    (folder / "config.json").write_text(json.dumps(config | {"sampling": {"temperature": "hot"}}))
    with pytest.raises(LMError, match="config.json: sampling key 'temperature'"):
        read_lm_info(folder)
