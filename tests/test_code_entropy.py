"""``tokenwave code-entropy``: held-out bits per code under each context model.

Codes built to be predictable from one context (and not the other) must cost few bits under that
context and about log2 N under the marginal; random codes cost about log2 N under every model."""

import math

import numpy as np
import pytest

from codec.code_entropy import MODELS, code_entropy, report
from codec.errors import TokenwaveError

N = 64


def utterances(rng, count, frames, kind):
    """[4, T] codes: level 1 a slow random walk (predictable from the previous frame); level 2
    uniform noise; level 3 a function of level 2 (predictable from the level above only); level 4
    uniform noise. ``kind`` "noise": every level uniform noise."""
    out = []
    for _ in range(count):
        level2, level4 = rng.integers(0, N, frames), rng.integers(0, N, frames)
        if kind == "structured":
            level1, level3 = np.cumsum(rng.integers(0, 2, frames)) % N, (level2 * 7 + 3) % N
        else:
            level1, level3 = rng.integers(0, N, frames), rng.integers(0, N, frames)
        out.append(np.stack([level1, level2, level3, level4]))
    return out


def test_each_context_finds_the_structure_it_can_see():
    rng = np.random.default_rng(0)
    fit, score = utterances(rng, 40, 200, "structured"), utterances(rng, 10, 200, "structured")
    rows = code_entropy(fit, score, N)
    full = math.log2(N)
    level1, level2, level3, level4 = rows
    assert level1["marginal"] > full - 0.2  # the walk visits every code about equally
    assert level1["previous frame"] < 2.0 < level1["previous level"]  # 1 bit (stay or move) plus smoothing
    # A sure code still costs 1 bit: coding-safe rows give no code more than 1/2, as the coder does.
    assert level3["previous level"] == pytest.approx(1.0) and level3["previous frame"] > full - 0.3
    for row in (level1, level3):
        assert row["mixed"] <= min(row["previous frame"], row["previous level"]) + 0.05
    assert level1["mix"][0] > 0.5 and level3["mix"][1] > 0.5
    for row in (level2, level4):  # nothing predicts noise; the mixture falls back to the marginal
        assert all(row[model] > full - 0.3 for model in MODELS)
        assert row["mixed"] <= row["marginal"] + 0.05 and row["mix"][0] + row["mix"][1] <= 0.5


def test_report_compares_with_plain_packing():
    rng = np.random.default_rng(1)
    rows = code_entropy(utterances(rng, 100, 200, "noise"), utterances(rng, 10, 200, "noise"), N)
    text = report(rows, N, [1, 4], (1000, 400))
    assert "plain packing: 6 bits per code" in text and "| 1..4 |" in text
    level_lines = [line for line in text.splitlines() if line[:4] in ("| 1 ", "| 2 ", "| 3 ", "| 4 ")]
    assert len(level_lines) == 4
    savings = [float(cell.split("%")[0]) for cell in text.splitlines()[-1].split("|")[2:-1]]
    assert len(savings) == len(MODELS) and all(abs(saving) < 6 for saving in savings)  # noise: nothing to save


def test_bad_codes_are_refused():
    good = [np.zeros((2, 5), dtype=np.int64)]
    with pytest.raises(TokenwaveError, match="lie in"):
        code_entropy(good, [np.full((2, 5), N)], N)
    with pytest.raises(TokenwaveError, match="levels"):
        code_entropy(good, [np.zeros((3, 5), dtype=np.int64)], N)
    with pytest.raises(TokenwaveError, match="needs codes"):
        code_entropy([], good, N)


def test_cli_refuses_bad_options_in_one_line(capsys):
    from codec.cli import main

    for extra, message in ((["--limit", "0"], "--limit must be at least 1"),
                           (["--fit-split", "dev"], "--fit-split and --split must differ")):
        assert main(["code-entropy", "--model", "tiny-16k", "--manifest", "m.jsonl", *extra]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
