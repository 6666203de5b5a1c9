"""The AR's guided-attention term: its value, its masking, and that it trains a head towards the
text/audio diagonal."""

from __future__ import annotations

import torch
from lm_helpers import NPH, V, tiny_config
from test_lm_models import make_batch

from tokenlm.ar import ARModel, ar_loss, guided_attention_penalty
from tokenlm.batch import LMBatch


def mean_penalty(scores, phoneme_lengths, query_lengths, sigma):
    """The mean penalty over the real queries of rows with text."""
    penalty = guided_attention_penalty(scores, phoneme_lengths, query_lengths, sigma)
    count = sum(int(q) for p, q in zip(phoneme_lengths, query_lengths) if p > 0)
    return penalty.sum() / max(count, 1)


def diagonal_scores(T: int, P: int, sharpness: float = 5000.0) -> torch.Tensor:
    """``[1, 1, T, P]`` scores peaked on j/P = t/T."""
    t = (torch.arange(T) + 0.5) / T
    j = (torch.arange(P) + 0.5) / P
    return (-sharpness * (t[:, None] - j[None, :]) ** 2)[None, None]


def test_penalty_of_uniform_diagonal_and_anti_diagonal_attention():
    lengths = torch.tensor([40]), torch.tensor([160])
    uniform = mean_penalty(torch.zeros(1, 1, 160, 40), *lengths, sigma=0.2)
    diagonal = mean_penalty(diagonal_scores(160, 40), *lengths, sigma=0.2)
    anti = mean_penalty(diagonal_scores(160, 40).flip(-1), *lengths, sigma=0.2)
    assert 0.5 < float(uniform) < 0.65
    assert float(diagonal) < 0.01
    assert float(anti) > float(uniform)


def test_padding_and_text_free_rows_do_not_count():
    alone = mean_penalty(diagonal_scores(30, 10).flip(-1), torch.tensor([10]), torch.tensor([30]), 0.2)
    padded = torch.full((3, 1, 50, 16), 7.0)  # padding with large scores must be ignored
    padded[0, :, :30, :10] = diagonal_scores(30, 10).flip(-1)[0]
    batched = mean_penalty(padded, torch.tensor([10, 0, 0]), torch.tensor([30, 50, 20]), 0.2)
    torch.testing.assert_close(batched, alone)
    per_query = guided_attention_penalty(padded, torch.tensor([10, 0, 0]), torch.tensor([30, 50, 20]), 0.2)
    assert per_query.shape == (3, 50) and per_query[0, 30:].abs().sum() == 0 and per_query[1:].abs().sum() == 0
    none = mean_penalty(torch.zeros(2, 1, 5, 3), torch.tensor([0, 0]), torch.tensor([5, 5]), 0.2)
    assert float(none) == 0.0


def test_ar_loss_adds_the_weighted_term_and_reports_it():
    torch.manual_seed(0)
    model = ARModel(tiny_config()).train()
    batch = make_batch()
    plain, plain_metrics = ar_loss(model, batch)
    guided, metrics = ar_loss(model, batch, guided_weight=0.5)
    assert "guided" not in plain_metrics and 0.0 < metrics["guided"] < 1.0
    assert metrics["loss"] == plain_metrics["loss"]  # the reported loss is the cross-entropy alone
    torch.testing.assert_close(guided, plain + 0.5 * metrics["guided"])


def test_guidance_makes_head_zero_diagonal_while_training():
    """Random codes carry no alignment, so only the guidance can make head 0 diagonal: its penalty
    falls well below the uniform 0.58 (without guidance it stays at 0.58)."""
    torch.manual_seed(0)
    model = ARModel(tiny_config(n_layers=2, d_model=32, n_heads=2)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    B, P, T = 8, 12, 48
    batch = LMBatch(
        torch.randint(2, NPH, (B, P), generator=g),
        torch.full((B,), P),
        torch.randint(0, V, (B, 1, T), generator=g),
        torch.full((B,), T),
    )
    _, first = ar_loss(model, batch, guided_weight=1.0)
    for _ in range(80):
        loss, metrics = ar_loss(model, batch, guided_weight=1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert first["guided"] > 0.55
    assert metrics["guided"] < 0.45
