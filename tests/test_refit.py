"""Tests of ``tokenwave refit-codes`` (codec.refit): unused codes refitted by k-means with the
used ones held fixed, and the refitted model written with consistent tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.cli import main as cli_main
from codec.config import tiny
from codec.errors import TokenwaveError
from codec.model import CodecModel
from codec.pretrained import load_pretrained, save_pretrained
from codec.refit import nearest, refit_codebooks, refit_level


def clustered(generator, centres: torch.Tensor, per_centre: int, spread: float = 0.05) -> torch.Tensor:
    """``per_centre`` points around each of ``centres [C, D]`` -> ``[C * per_centre, D]``."""
    points = centres.repeat_interleave(per_centre, dim=0)
    return points + spread * torch.randn(points.shape, generator=generator)


def test_refit_level_revives_dead_codes_and_keeps_live_ones():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(32, 4, generator=g)
    data = clustered(g, centres, 50)  # [1600, 4]
    # 16 codes sit on half of the clusters; 16 are far away and never chosen (dead).
    codebook = torch.cat([centres[:16], 100 + torch.randn(16, 4, generator=g)])
    before = nearest(data, codebook)
    assert torch.bincount(before, minlength=32)[16:].sum() == 0
    new, freed, assignment = refit_level(data, codebook, min_share=0.5, iters=10, generator=g)
    assert freed.tolist() == [False] * 16 + [True] * 16
    torch.testing.assert_close(new[:16], codebook[:16], rtol=0, atol=0)  # live codes unchanged
    assert (torch.bincount(assignment, minlength=32) > 0).all()  # every code used now
    assert torch.equal(assignment, nearest(data, new))
    error = lambda cb, a: float((data - cb[a]).pow(2).sum(-1).mean())
    assert error(new, assignment) < 0.1 * error(codebook, before)  # the missing clusters are covered


def test_refit_level_with_nothing_to_free_changes_nothing():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(8, 3, generator=g) * 4
    data = clustered(g, centres, 40)
    new, freed, assignment = refit_level(data, centres, min_share=0.5, iters=5, generator=g)
    assert not freed.any() and torch.equal(new, centres) and torch.equal(assignment, nearest(data, centres))


def test_refit_level_when_most_frames_sit_exactly_on_codes():
    g = torch.Generator().manual_seed(3)
    codebook = torch.randn(16, 2, generator=g)
    data = torch.cat([codebook[:2].repeat(40, 1), torch.randn(3, 2, generator=g)])  # 3 frames off the codes
    new, freed, assignment = refit_level(data, codebook, min_share=0.5, iters=4, generator=g)
    assert int(freed.sum()) == 14 and torch.isfinite(new).all()
    assert torch.equal(assignment, nearest(data, new))


def test_refit_codebooks_balances_usage_over_levels():
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(4000, 6, generator=g)
    # Level 1 uses one code out of 64, level 2 a few: most codes dead, as after a short training run.
    codebooks = [torch.cat([torch.zeros(1, 6), 50 + torch.randn(63, 6, generator=g)]),
                 torch.cat([0.5 * torch.randn(4, 6, generator=g), 50 + torch.randn(60, 6, generator=g)])]
    new, counts, reports = refit_codebooks(latents, codebooks, min_share=0.5, iters=12, seed=0, progress=False)
    assert counts.shape == (2, 64) and counts.sum(1).tolist() == [4000.0, 4000.0]
    assert reports[0].used_before == pytest.approx(1 / 64)
    for report, level_counts in zip(reports, counts):
        assert report.used_after == 1.0 and (level_counts > 0).all()
        assert level_counts.min() >= 0.1 * 4000 / 64  # balanced: no starved code
        assert report.error_after < report.error_before
    # The counts are those of encoding the latents with the new codebooks in order.
    residual = latents.clone()
    for level, codebook in enumerate(new):
        index = nearest(residual, codebook)
        assert torch.equal(torch.bincount(index, minlength=64).double(), counts[level])
        residual = residual - codebook[index]
    # Same seed, same result.
    again, _, _ = refit_codebooks(latents, codebooks, min_share=0.5, iters=12, seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(new, again))
    with pytest.raises(TokenwaveError):
        refit_codebooks(latents, codebooks, min_share=0.0, progress=False)
    with pytest.raises(TokenwaveError):
        refit_codebooks(latents, codebooks, iters=0, progress=False)


@pytest.fixture()
def speech_manifest(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(25):  # one speaker: every 20th recording is dev, the rest train
        t = np.arange(16_000) / 16_000
        f0 = 100 + 10 * i
        wav = sum(0.1 / h * np.sin(2 * np.pi * h * f0 * t * (1 + 0.1 * np.sin(3 * t))) for h in range(1, 6))
        wav = wav * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2) + 0.01 * rng.standard_normal(len(t))
        sf.write(tmp_path / f"u{i}.wav", wav.astype(np.float32), 16_000)
        rows.append({"audio": f"u{i}.wav", "text": f"utterance {i}", "speaker": "s"})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "manifest.jsonl"


def small_codec() -> CodecModel:
    """A random tiny codec with 4 levels of 32 codes (enough frames per code in a test)."""
    import dataclasses

    torch.manual_seed(0)
    return CodecModel(dataclasses.replace(tiny(), num_codebooks=4, codebook_size=32)).prepare_for_inference()


def test_refit_codes_command(tmp_path, speech_manifest, capsys):
    save_pretrained(small_codec(), tmp_path / "src", extra={"training": {"steps": 7}})
    source = load_pretrained(tmp_path / "src")
    out = tmp_path / "refit"
    args = ["refit-codes", "--model", str(tmp_path / "src"), "--manifest", str(speech_manifest),
            "--min-share", "0.5", "--iters", "4", "--name", "small-refit", "--out", str(out)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    refit = load_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    record = config["refit_codes"]
    assert config["training"] == {"steps": 7} and config["context_levels"] == 0 and refit.name == "small-refit"
    assert record["frames"] == 23 * 51 and record["split"] == "train" and len(record["levels"]) == 4
    assert refit.codes_fingerprint != source.codes_fingerprint and refit.codes_fingerprint in printed
    # Only the codebooks (with their EMA state) and the tables change; codes used often keep their vectors.
    old, new = source.state_dict(), refit.state_dict()
    for name, value in old.items():
        if "quantizer" not in name and name != "code_counts":
            torch.testing.assert_close(new[name], value, rtol=0, atol=0)
    for level, report in enumerate(record["levels"]):
        assert report["used_after"] >= max(report["used_before"], 0.9)
        assert report["error_after"] < report["error_before"]
        old_embed = old[f"quantizer.codebooks.{level}.embed"]
        new_embed = new[f"quantizer.codebooks.{level}.embed"]
        changed = (old_embed != new_embed).any(-1)
        assert int(changed.sum()) == report["freed"] > 0
    # The tables are the refit frames' code counts (+ 1 each), and the model codes audio.
    assert float(refit.code_counts.sum()) == 4 * (23 * 51 + 32)
    wav = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 8000)).astype(np.float32) * 0.1)
    assert refit.decode(refit.encode(wav, 16_000), length=8000).shape == (1, 1, 8000)
    # count-codes on the refitted model keeps its record.
    counted = tmp_path / "counted"
    assert cli_main(["count-codes", "--model", str(out), "--manifest", str(speech_manifest),
                     "--context-levels", "2", "--out", str(counted)]) == 0
    assert json.loads((counted / "config.json").read_text())["refit_codes"] == record
    assert load_pretrained(counted).codes_fingerprint == refit.codes_fingerprint
    # Errors: an existing model without --force, bad numbers, no recordings.
    assert cli_main(args) == 2
    assert cli_main(args[:-2] + ["--out", str(tmp_path / "x"), "--min-share", "0"]) == 2
    assert cli_main(args[:-2] + ["--out", str(tmp_path / "x"), "--max-frames", "0"]) == 2
    assert cli_main(args[:-2] + ["--out", str(tmp_path / "x"), "--split", "unseen"]) == 2
