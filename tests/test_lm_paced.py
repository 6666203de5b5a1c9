"""Paced text positions (``LMConfig.text_pace``). AR: phoneme j at ``j * pace``, audio input t
at t; training (teacher forcing), batched and cached generation must all place every token at
the same position, and the trainer's ``--paced-text`` takes the pace from its data. NAR: each
row paced by its own frames, from where its text starts (the prompt's transcript or not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lm_helpers import NPH, V, lively, tiny_config

from tokenlm.ar import ARModel
from tokenlm.errors import LMError
from tokenlm.generate import generate_ar, nar_fill, prompt_pace
from tokenlm.nar import NARModel
from tokenlm.sampling import SamplingConfig

GREEDY = SamplingConfig(temperature=0)


@pytest.fixture(scope="module")
def paced():
    torch.manual_seed(0)
    return lively(ARModel(tiny_config(text_pace=3.0)))


def rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    phonemes = [torch.randint(2, NPH, (n,), generator=g) for n in (6, 11, 3, 8)]
    prompts = [torch.randint(0, V, (n,), generator=g) for n in (9, 0, 14, 2)]
    return phonemes, prompts


def test_positions_are_paced_and_contiguous_without_a_pace():
    model = ARModel(tiny_config(text_pace=3.0))
    positions = model.positions(torch.tensor([3, 2]), 3, 4, torch.tensor([2.5, 4.0]))
    assert positions.tolist() == [[0, 2.5, 5, 0, 1, 2, 3], [0, 4, 8, 0, 1, 2, 3]]
    plain = ARModel(tiny_config())
    assert plain.positions(torch.tensor([3, 2]), 3, 2).tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 2, 3]]
    with pytest.raises(ValueError, match="needs pace"):
        model.positions(torch.tensor([3]), 3, 4)


def test_the_pace_changes_the_output_and_training_uses_the_true_one(paced):
    g = torch.Generator().manual_seed(3)
    phonemes, codes = torch.randint(2, NPH, (1, 8), generator=g), torch.randint(0, V, (1, 20), generator=g)
    P, T = torch.tensor([8]), torch.tensor([20])
    default = paced(phonemes, P, codes, T)
    torch.testing.assert_close(default, paced(phonemes, P, codes, T, pace=torch.tensor([20 / 8])))
    assert not torch.allclose(default, paced(phonemes, P, codes, T, pace=torch.tensor([1.0])), atol=1e-3)


def test_paced_padding_invariance(paced):
    phonemes, prompts = rows()
    lengths = [len(q) for q in prompts]
    B, P, T = 4, max(len(p) for p in phonemes), max(lengths)
    ph = torch.zeros(B, P, dtype=torch.long)
    codes = torch.zeros(B, T, dtype=torch.long)
    for i, (p, q) in enumerate(zip(phonemes, prompts)):
        ph[i, : len(p)], codes[i, : len(q)] = p, q
    pace = torch.tensor([2.0, 3.5, 4.0, 1.5])
    batch = paced(ph, torch.tensor([len(p) for p in phonemes]), codes, torch.tensor(lengths), pace=pace)
    for i, (p, q) in enumerate(zip(phonemes, prompts)):
        alone = paced(p[None], torch.tensor([len(p)]), q[None], torch.tensor([len(q)]), pace=pace[i : i + 1])
        torch.testing.assert_close(batch[i, : len(q) + 1], alone[0], atol=1e-5, rtol=1e-5)


def test_generation_places_tokens_where_training_does(paced):
    """Greedy generation, then teacher forcing on what it produced: every generated token is the
    argmax of the training forward pass (same positions for phonemes, prompt and new frames)."""
    phonemes, prompts = rows(1)
    pace = [2.0, 3.0, 5.0, 2.5]
    out = generate_ar(paced, phonemes, prompts, GREEDY, max_frames=30, pace=pace,
                      target_phonemes=[len(p) for p in phonemes])
    assert any(len(o) > 5 for o in out) and len(set(torch.cat(out).tolist())) > 3
    for p, q, o, r in zip(phonemes, prompts, out, pace):
        codes = torch.cat([q, o])[None]
        logits = paced(p[None], torch.tensor([len(p)]), codes, torch.tensor([codes.shape[1]]), pace=torch.tensor([r]))
        predicted = logits[0, len(q) : len(q) + len(o), :V].argmax(-1)  # eos is masked early on
        assert predicted.tolist() == o.tolist()


def test_cached_uncached_and_batched_generation_agree(paced):
    phonemes, prompts = rows(2)
    batch = generate_ar(paced, phonemes, prompts, GREEDY, max_frames=25, target_phonemes=[2, 5, 1, 4])
    uncached = generate_ar(paced, phonemes, prompts, GREEDY, max_frames=25, target_phonemes=[2, 5, 1, 4],
                           use_cache=False)
    assert [b.tolist() for b in batch] == [u.tolist() for u in uncached]
    for p, q, t, b in zip(phonemes, prompts, [2, 5, 1, 4], batch):
        assert generate_ar(paced, [p], [q], GREEDY, max_frames=25, target_phonemes=[t])[0].tolist() == b.tolist()
    guided = SamplingConfig(temperature=0, text_guidance=2.0)
    assert all(len(x) >= 1 for x in generate_ar(paced, phonemes, prompts, guided, max_frames=10))


def test_default_pace_comes_from_the_prompt_within_bounds():
    config = tiny_config(text_pace=4.0)
    assert prompt_pace(config, prompt_phonemes=10, prompt_frames=45) == 4.5
    assert prompt_pace(config, 10, 5) == 2.0  # at least half the default
    assert prompt_pace(config, 1, 500) == 8.0  # at most twice
    assert prompt_pace(config, 0, 30) == 4.0  # no transcript: the default
    assert prompt_pace(config, 10, 0) == 4.0
    model = lively(ARModel(config))
    with pytest.raises(LMError, match="pace must give"):
        generate_ar(model, [torch.tensor([3, 4])], None, GREEDY, max_frames=5, pace=[0.0])


def test_paced_text_training_takes_the_median_pace_of_the_data(tmp_path):
    from test_lm_train import config, make_shards, make_utterances

    from tokenlm.data import training_utterances
    from tokenlm.pretrained import read_lm_info
    from tokenlm.train import train_lm

    out = tmp_path / "run"
    train_lm(config(make_shards(tmp_path / "shards"), out, "ar", steps=4, checkpoint_every=4, paced_text=True))
    train = [u for u in training_utterances(make_utterances()[0]) if len(u.phonemes) and u.codes.shape[1] <= 1000]
    expected = round(float(np.median([u.codes.shape[1] / len(u.phonemes) for u in train])), 3)
    assert read_lm_info(out / "export")["lm"]["text_pace"] == pytest.approx(expected) and expected > 1
    loaded = ARModel.from_pretrained(out / "export")
    assert loaded.config.paced and generate_ar(loaded, [torch.tensor([5, 6, 7])], None, GREEDY, max_frames=8)
    train_lm(config(tmp_path / "shards", tmp_path / "nar", "nar", steps=2, checkpoint_every=2, paced_text=True))
    nar = NARModel.from_pretrained(tmp_path / "nar" / "export")
    assert nar.config.paced and read_lm_info(tmp_path / "nar" / "export")["lm"]["text_pace"] == pytest.approx(expected)


def test_nar_positions_pace_each_row_from_where_its_text_starts():
    model = NARModel(tiny_config(text_pace=3.0))
    P, Tp, T = torch.tensor([2, 4]), torch.tensor([4, 2]), torch.tensor([8, 6])
    # row 0: text over prompt + target (12 frames, 6 per phoneme); row 1: over the target alone
    positions = model.positions(P, 4, Tp, 4, T, 8, text_starts=torch.tensor([0, 2]))
    assert positions[0, :2].tolist() == [3.0, 9.0]
    assert positions[1, :4].tolist() == [2.75, 4.25, 5.75, 7.25]
    assert positions[0, 4:8].tolist() == [0, 1, 2, 3] and positions[0, 8:].tolist() == list(range(4, 12))
    assert positions[1, 8:14].tolist() == list(range(2, 8))
    plain = NARModel(tiny_config())
    assert plain.positions(P, 4, Tp, 4, T, 8)[1, :8].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_paced_nar_batch_equals_rows_and_text_starts_matter():
    torch.manual_seed(1)
    nar = lively(NARModel(tiny_config(text_pace=3.0)))
    phonemes, _ = rows(3)
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, V, (4, n), generator=g) for n in (5, 0, 9, 2)]
    firsts = [torch.randint(0, V, (n,), generator=g) for n in (12, 7, 20, 3)]
    starts = [0, 0, 9, 2]
    out = nar_fill(nar, phonemes, prompts, firsts, text_starts=starts)
    for i in range(4):
        alone = nar_fill(nar, [phonemes[i]], [prompts[i]], [firsts[i]], text_starts=[starts[i]])[0]
        assert torch.equal(alone, out[i])
    moved = nar_fill(nar, phonemes[2:3], prompts[2:3], firsts[2:3])[0]  # text from frame 0 instead of 9
    assert not torch.equal(moved[1:], out[2][1:])
    for bad in ([0, 0, 10, 2], [0, 0, -1, 2], [0, 0, 1]):
        with pytest.raises(LMError, match="text_starts"):
            nar_fill(nar, phonemes, prompts, firsts, text_starts=bad)
