"""AR generation (KV cache, batching, seeds, length guards, adversarial input) and NAR fill."""

from __future__ import annotations

import pytest
import torch
from lm_helpers import NPH, K, V, lively, tiny_config

from tokenlm.ar import ARModel
from tokenlm.errors import LMError
from tokenlm.generate import generate_ar, length_limits, nar_fill, nar_fill_expected
from tokenlm.nar import NARModel
from tokenlm.sampling import SamplingConfig

GREEDY = SamplingConfig(temperature=0)


@pytest.fixture(scope="module")
def ar():
    torch.manual_seed(0)
    return lively(ARModel(tiny_config()))


@pytest.fixture(scope="module")
def nar():
    torch.manual_seed(1)
    return lively(NARModel(tiny_config()))


def rows(seed=0):
    g = torch.Generator().manual_seed(seed)
    phonemes = [torch.randint(2, NPH, (n,), generator=g) for n in (5, 11, 2, 7)]
    prompts = [torch.randint(0, V, (n,), generator=g) for n in (4, 0, 9, 1)]
    return phonemes, prompts


def biased_ar(eos_logit: float) -> ARModel:
    """A model whose every step gives eos the logit ``eos_logit`` and token 7 the logit 1."""
    model = ARModel(tiny_config()).eval()
    with torch.no_grad():
        model.transformer.norm.weight.zero_()
        model.transformer.norm.bias.fill_(1.0)  # final hidden state = all ones
        model.head.weight.zero_()
        model.head.weight[model.eos] = eos_logit / model.config.d_model
        model.head.weight[7] = 1.0 / model.config.d_model
    return model


def test_cached_equals_uncached_greedy(ar):
    phonemes, prompts = rows()
    cached = generate_ar(ar, phonemes, prompts, GREEDY, max_frames=40)
    uncached = generate_ar(ar, phonemes, prompts, GREEDY, max_frames=40, use_cache=False)
    assert [c.tolist() for c in cached] == [u.tolist() for u in uncached]
    assert any(len(c) > 10 for c in cached) and len(set(torch.cat(cached).tolist())) > 5
    free = {"text_free": True, "max_frames": 25}
    assert [c.tolist() for c in generate_ar(ar, None, prompts, GREEDY, **free)] == [
        c.tolist() for c in generate_ar(ar, None, prompts, GREEDY, use_cache=False, **free)
    ]


def test_batch_equals_single_rows(ar):
    phonemes, prompts = rows(1)
    batch = generate_ar(ar, phonemes, prompts, GREEDY, max_frames=40)
    assert len(set(torch.cat(batch).tolist())) > 5
    for p, q, out in zip(phonemes, prompts, batch):
        assert generate_ar(ar, [p], [q], GREEDY, max_frames=40)[0].tolist() == out.tolist()


def test_seeded_sampling_is_reproducible(ar):
    phonemes, prompts = rows(2)
    config = SamplingConfig(temperature=1.0, top_k=10)
    a = generate_ar(ar, phonemes, prompts, config, seed=5, max_frames=30)
    b = generate_ar(ar, phonemes, prompts, config, seed=5, max_frames=30)
    c = generate_ar(ar, phonemes, prompts, config, seed=6, max_frames=30)
    assert [x.tolist() for x in a] == [x.tolist() for x in b]
    assert [x.tolist() for x in a] != [x.tolist() for x in c]
    assert all(x.dtype == torch.long and x.min() >= 0 and x.max() < V for x in a)


def test_eos_is_masked_until_the_minimum_length():
    model = biased_ar(eos_logit=30.0)  # wants to stop at once
    phonemes = [torch.full((n,), 3) for n in (1, 5, 9)]
    for sampling in (GREEDY, SamplingConfig(temperature=1.0, top_k=0)):
        out = generate_ar(model, phonemes, None, sampling)
        assert [len(x) for x in out] == [1, 5, 9]  # never empty; min = 1 frame per target phoneme
    out = generate_ar(model, phonemes, None, GREEDY, target_phonemes=[1, 2, 3])
    assert [len(x) for x in out] == [1, 2, 3]
    assert [len(x) for x in generate_ar(model, phonemes, None, GREEDY, min_frames=4)] == [4, 4, 4]
    slow = SamplingConfig(temperature=0, min_frames_per_phoneme=3.0)
    assert [len(x) for x in generate_ar(model, phonemes, None, slow)] == [3, 15, 27]


def test_runaway_generation_is_cut_at_the_maximum():
    model = biased_ar(eos_logit=-30.0)  # never stops by itself
    out = generate_ar(model, [torch.full((1,), 3), torch.full((3,), 3), torch.full((9,), 3)], None, GREEDY)
    assert [len(x) for x in out] == [12 + 25, 3 * 12 + 25, 80]  # per phoneme, then the model's max_frames
    assert all(x.eq(7).all() for x in out)
    capped = generate_ar(model, [torch.full((3,), 3)], None, GREEDY, max_frames=10)
    assert len(capped[0]) == 10
    assert length_limits(3, SamplingConfig(), 1000) == (3, 61)
    assert length_limits(0, SamplingConfig(), 50) == (1, 50)


def test_adversarial_inputs(ar):
    with pytest.raises(LMError, match="empty text"):
        generate_ar(ar, [torch.zeros(0, dtype=torch.long)])
    with pytest.raises(LMError, match="text_free"):
        generate_ar(ar, None, [torch.tensor([1, 2])])
    with pytest.raises(LMError, match="explicit max_frames"):
        generate_ar(ar, None, [torch.tensor([1, 2])], text_free=True)
    with pytest.raises(LMError, match="phonemes were given"):
        generate_ar(ar, [torch.tensor([3])], text_free=True, max_frames=5)
    with pytest.raises(LMError, match="too long"):  # ~2,000 characters of text
        generate_ar(ar, [torch.randint(2, NPH, (1800,))])
    with pytest.raises(LMError, match="out of range"):
        generate_ar(ar, [torch.tensor([3, NPH])])
    with pytest.raises(LMError, match="out of range"):
        generate_ar(ar, [torch.tensor([3])], [torch.tensor([V])])
    with pytest.raises(LMError, match="target_phonemes"):
        generate_ar(ar, [torch.tensor([3, 4])], target_phonemes=[3])
    with pytest.raises(LMError, match="empty batch"):
        generate_ar(ar, [])
    one = generate_ar(ar, [torch.tensor([5])], None, SamplingConfig(temperature=1.0))
    assert 1 <= len(one[0]) <= 12 + 25
    free = generate_ar(
        ar, None, [torch.zeros(0, dtype=torch.long), torch.tensor([1, 2, 3])], text_free=True, max_frames=15
    )
    assert all(1 <= len(x) <= 15 for x in free)


def test_long_text_within_the_limit_is_bounded():
    torch.manual_seed(3)
    model = ARModel(tiny_config(max_phonemes=2048, max_frames=30)).eval()
    out = generate_ar(model, [torch.randint(2, NPH, (1800,))], None, SamplingConfig(temperature=1.0))
    assert 1 <= len(out[0]) <= 30


def test_generation_restores_training_mode(ar):
    model = ARModel(tiny_config()).train()
    generate_ar(model, [torch.tensor([3, 4])], None, GREEDY, max_frames=3)
    assert model.training


def test_nar_fill(nar):
    phonemes, _ = rows(4)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V, (K, n), generator=g) for n in (3, 0, 6, 1)]
    firsts = [torch.randint(0, V, (n,), generator=g) for n in (8, 3, 12, 1)]
    out = nar_fill(nar, phonemes, prompts, firsts)
    assert [tuple(o.shape) for o in out] == [(K, 8), (K, 3), (K, 12), (K, 1)]
    assert all(torch.equal(o[0], f) for o, f in zip(out, firsts))
    assert all(o.min() >= 0 and o.max() < V for o in out)
    assert len(set(torch.cat([o[1:].flatten() for o in out]).tolist())) > 5
    for i in range(4):  # batch == single
        assert torch.equal(nar_fill(nar, [phonemes[i]], [prompts[i]], [firsts[i]])[0], out[i])
    two = nar_fill(nar, phonemes[:1], prompts[:1], firsts[:1], n_codebooks=2)[0]
    assert torch.equal(two, out[0][:2])  # layer k depends only on layers < k
    assert torch.equal(
        nar_fill(nar, phonemes[:1], prompts[:1], firsts[:1], n_codebooks=1)[0], firsts[0][None]
    )
    text_free = nar_fill(nar, [torch.zeros(0, dtype=torch.long)], prompts[:1], firsts[:1])[0]
    assert text_free.shape == (K, 8)
    with pytest.raises(LMError, match="codebooks"):
        nar_fill(nar, phonemes[:1], [prompts[0][:2]], firsts[:1])
    with pytest.raises(LMError, match="n_codebooks"):
        nar_fill(nar, phonemes[:1], prompts[:1], firsts[:1], n_codebooks=K + 1)
    with pytest.raises(LMError, match="empty"):
        nar_fill(nar, phonemes[:1], prompts[:1], [torch.zeros(0, dtype=torch.long)])
    with pytest.raises(LMError, match="out of range"):
        nar_fill(nar, phonemes[:1], prompts[:1], [torch.tensor([V])])


def test_nar_fill_expected_vectors(nar):
    phonemes, _ = rows(5)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, V, (K, n), generator=g) for n in (3, 0, 6, 1)]
    firsts = [torch.randint(0, V, (n,), generator=g) for n in (8, 3, 12, 1)]
    tables = [torch.randn(V, 6, generator=g) for _ in range(K)]
    codes, vectors = nar_fill_expected(nar, phonemes, prompts, firsts, tables, temperature=0.7)
    for c, expected in zip(codes, nar_fill(nar, phonemes, prompts, firsts)):  # the same argmax codes
        assert torch.equal(c, expected)
    assert [tuple(v.shape) for v in vectors] == [(8, 6), (3, 6), (12, 6), (1, 6)]
    # by hand, one row alone: layer 1's vector plus the softmax-weighted mean of each level's table
    target = codes[2][None]
    manual = tables[0][firsts[2]].clone()
    with torch.no_grad():
        for k in range(1, K):
            logits = nar(phonemes[2][None], torch.tensor([len(phonemes[2])]), prompts[2][None], torch.tensor([6]),
                         target, torch.tensor([12]), torch.tensor([k]))[0]
            manual += torch.softmax(logits / 0.7, -1) @ tables[k]
    assert torch.allclose(vectors[2], manual, atol=1e-4)
    assert not torch.allclose(vectors[2], sum(tables[k][codes[2][k]] for k in range(K)), atol=1e-3)
    # a temperature near zero gives the argmax codes' vectors; fewer layers, fewer terms
    cold = nar_fill_expected(nar, phonemes[:1], prompts[:1], firsts[:1], tables, temperature=1e-6)[1][0]
    assert torch.allclose(cold, sum(tables[k][codes[0][k]] for k in range(K)), atol=1e-4)
    one = nar_fill_expected(nar, phonemes[:1], prompts[:1], firsts[:1], tables, n_codebooks=1)[1][0]
    assert torch.equal(one, tables[0][firsts[0]])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(LMError, match="temperature"):
            nar_fill_expected(nar, phonemes[:1], prompts[:1], firsts[:1], tables, temperature=bad)
    with pytest.raises(LMError, match="tables"):
        nar_fill_expected(nar, phonemes[:1], prompts[:1], firsts[:1], tables[:2])
    with pytest.raises(LMError, match="tables"):
        nar_fill_expected(nar, phonemes[:1], prompts[:1], firsts[:1], [t[:, None] for t in tables])


def test_nar_fill_bfloat16_autocast_runs(nar):
    out = nar_fill(
        nar,
        [torch.tensor([3, 4, 5])],
        [torch.randint(0, V, (K, 4))],
        [torch.randint(0, V, (9,))],
        autocast_dtype=torch.bfloat16,
    )[0]
    assert out.shape == (K, 9) and out.dtype == torch.long and 0 <= out.min() and out.max() < V


def test_bench_numbers_with_tiny_models(ar, nar):
    from tokenlm.bench import run_bench

    result = run_bench(ar, nar, seconds=0.5)
    assert result["frames"] == 25 and result["ar_parameters"] == ar.num_parameters()
    assert result["ar_tokens_per_s"] > 0 and result["kv_cache_speedup_at_context"] > 0
    assert result["nar_time_per_layer_s"] > 0 and result["rtf_lm"] > 0


def test_inputs_as_lists_arrays_and_full_prompts(ar):
    import numpy as np

    prompt = torch.randint(0, V, (K, 6), generator=torch.Generator().manual_seed(9))
    reference = generate_ar(ar, [torch.tensor([3, 4, 5])], [prompt[0]], GREEDY, max_frames=20)[0]
    for phonemes, prompts in (
        ([[3, 4, 5]], [prompt]),
        ([np.array([3, 4, 5], np.int32)], [prompt.numpy().astype(np.int16)]),
    ):
        assert torch.equal(generate_ar(ar, phonemes, prompts, GREEDY, max_frames=20)[0], reference)
    with pytest.raises(LMError, match="prompt_codes rows"):
        generate_ar(ar, [[3]], [torch.zeros(1, 2, 3, dtype=torch.long)])


def test_text_guidance_combines_the_text_and_text_free_branches(ar):
    phonemes, prompts = rows(3)
    guided = SamplingConfig(temperature=0, text_guidance=2.5)
    out = generate_ar(ar, phonemes, prompts, guided, max_frames=30)
    # cached == uncached, batch == single rows
    assert [o.tolist() for o in out] == [
        o.tolist() for o in generate_ar(ar, phonemes, prompts, guided, max_frames=30, use_cache=False)
    ]
    for p, q, o in zip(phonemes, prompts, out):
        assert generate_ar(ar, [p], [q], guided, max_frames=30)[0].tolist() == o.tolist()
    # the first tokens equal the argmax of u + w (c - u) from two plain forward passes
    p, q, o = phonemes[0], prompts[0], out[0]
    with torch.no_grad():
        for t in range(3):
            codes = torch.cat([q, o[:t]])[None]
            length = torch.tensor([codes.shape[1]])
            c = ar(p[None], torch.tensor([len(p)]), codes, length)[0, -1].log_softmax(-1)
            u = ar(p[None, :0], torch.tensor([0]), codes, length)[0, -1].log_softmax(-1)
            combined = u + 2.5 * (c - u)
            combined[ar.eos] = float("-inf")  # masked before the minimum length
            assert int(combined.argmax()) == int(o[t])
    unguided = generate_ar(ar, phonemes, prompts, GREEDY, max_frames=30)
    assert [o.tolist() for o in out] != [o.tolist() for o in unguided]
    with pytest.raises(LMError, match="text_guidance"):
        SamplingConfig(text_guidance=0.5)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_scores_are_the_log_probabilities_of_the_sampled_rows(ar, guidance):
    phonemes, prompts = rows(4)
    sampling = SamplingConfig(temperature=1.2, top_k=8, text_guidance=guidance)
    out, scores = generate_ar(ar, phonemes, prompts, sampling, seed=3, max_frames=12, return_scores=True)
    plain = generate_ar(ar, phonemes, prompts, sampling, seed=3, max_frames=12)
    assert [o.tolist() for o in out] == [o.tolist() for o in plain]  # scoring changes nothing
    assert any(len(o) < 12 for o in out) and any(len(o) == 12 for o in out)  # both ways of ending are scored
    assert (scores.unconditional is None) == (guidance == 1.0)
    for i, (p, q, o) in enumerate(zip(phonemes, prompts, out)):
        ended_by_eos = len(o) < 12
        tokens = o.tolist() + ([ar.eos] if ended_by_eos else [])
        assert int(scores.frames[i]) == len(tokens)
        expected_c = expected_u = 0.0
        with torch.no_grad():
            for t, token in enumerate(tokens):
                codes = torch.cat([q, o[:t]])[None]
                length = torch.tensor([codes.shape[1]])
                expected_c += float(ar(p[None], torch.tensor([len(p)]), codes, length)[0, -1].log_softmax(-1)[token])
                expected_u += float(ar(p[None, :0], torch.tensor([0]), codes, length)[0, -1].log_softmax(-1)[token])
        assert float(scores.conditional[i]) == pytest.approx(expected_c, abs=1e-3)
        assert float(scores.mean_log_prob()[i]) == pytest.approx(expected_c / len(tokens), abs=1e-3)
        if guidance != 1.0:
            assert float(scores.unconditional[i]) == pytest.approx(expected_u, abs=1e-3)
            assert float(scores.text_information()[i]) == pytest.approx((expected_c - expected_u) / len(tokens),
                                                                        abs=1e-3)
    if guidance == 1.0:
        with pytest.raises(LMError, match="text_guidance"):
            scores.text_information()
