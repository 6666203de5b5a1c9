"""The LMs can learn: tiny AR and NAR models overfit three synthetic utterances.

Random phonemes + random codes ``[K=4, T=40]``; a plain Adam loop on :func:`ar_loss` /
:func:`nar_loss`. Then free-running generation must reproduce the training codes: the AR
continues each utterance from its phonemes and first frames, the NAR fills layers 1..3 from
the true first layer.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenlm.ar import ARModel, ar_loss
from tokenlm.batch import collate
from tokenlm.config import LMConfig
from tokenlm.generate import generate_ar, nar_fill
from tokenlm.nar import NARModel, nar_loss
from tokenlm.sampling import SamplingConfig

V, K, T, NPH, PROMPT = 128, 4, 40, 30, 5


@pytest.fixture(scope="module")
def utterances():
    rng = np.random.default_rng(0)
    return [
        SimpleNamespace(
            id=f"u{i}",
            phonemes=rng.integers(2, NPH, 12).astype(np.int32),
            codes=rng.integers(0, V, (K, T)).astype(np.int16),
        )
        for i in range(3)
    ]


def config() -> LMConfig:
    return LMConfig(
        d_model=64,
        n_layers=2,
        n_heads=4,
        ff_mult=4,
        dropout=0.0,
        n_phonemes=NPH,
        codebook_size=V,
        n_codebooks=K,
        max_phonemes=64,
        max_frames=100,
    )


def train(
    model, loss_fn, budget_s: float = 20.0, max_steps: int = 1500, target: float = 0.99
) -> tuple[int, float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    start, accuracy, step = time.perf_counter(), 0.0, 0
    model.train()
    for step in range(1, max_steps + 1):
        loss, metrics = loss_fn(step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = 0.9 * accuracy + 0.1 * metrics["accuracy"] if step > 1 else metrics["accuracy"]
        if (accuracy > target and step > 50) or time.perf_counter() - start > budget_s:
            break
    return step, accuracy


def test_ar_overfits_and_continues_prompts(utterances):
    torch.manual_seed(0)
    model = ARModel(config())
    batch = collate(utterances, n_codebooks=1)
    train(model, lambda step: ar_loss(model, batch))
    model.eval()
    with torch.no_grad():
        _, metrics = ar_loss(model, batch)
    assert metrics["accuracy"] > 0.9 and metrics["eos_accuracy"] == 1.0
    phonemes = [torch.from_numpy(u.phonemes).long() for u in utterances]
    prompts = [torch.from_numpy(u.codes[0, :PROMPT]).long() for u in utterances]
    out = generate_ar(model, phonemes, prompts, SamplingConfig(temperature=0))
    for u, o in zip(utterances, out):
        truth = torch.from_numpy(u.codes[0, PROMPT:]).long()
        assert o[:10].tolist() == truth[:10].tolist()
        n = min(len(o), len(truth))
        assert (o[:n] == truth[:n]).float().mean() > 0.9 and abs(len(o) - len(truth)) <= 2


def test_nar_overfits_and_fills_layers(utterances):
    torch.manual_seed(0)
    model = NARModel(config())
    batch = collate(utterances)
    rng = torch.Generator().manual_seed(0)
    train(model, lambda step: nar_loss(model, batch, rng))
    model.eval()
    with torch.no_grad():
        for stage in range(1, K):
            _, metrics = nar_loss(model, batch, torch.Generator().manual_seed(stage), stage=stage)
            assert metrics["accuracy"] > 0.9, (stage, metrics)
    phonemes = [torch.from_numpy(u.phonemes).long() for u in utterances]
    codes = [torch.from_numpy(u.codes).long() for u in utterances]
    out = nar_fill(model, phonemes, [c[:, :10] for c in codes], [c[0, 10:] for c in codes])
    accuracy = torch.stack([(o[1:] == c[1:, 10:]).float().mean() for o, c in zip(out, codes)]).mean()
    assert accuracy > 0.9
