"""``tokenwave tokenize`` end to end on a tiny manifest with the random ``tiny-16k`` codec:
codes and phonemes as computed directly, splits, bad files skipped, resume, stale shards."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import codec
from codec.audio import load_audio
from codec.cli import main as cli_main
from tokenlm.errors import LMError
from tokenlm.shards import read_corpus, read_shard, read_shards
from tokenlm.text import text_to_ids
from tokenlm.tokenize import plan_work, tokenize_corpus

ROWS = [  # (file, speaker, text, seconds, sample rate, channels)
    ("alice/a1.wav", "alice", "Hello there, Bob.", 0.30, 16000, 1),
    ("alice/a2.wav", "alice", "It costs $5.", 0.25, 22050, 2),
    ("alice/a3.flac", "alice", "Third one!", 0.20, 8000, 1),
    ("bob/b1.wav", "bob", "Hi.", 0.15, 16000, 1),
    ("music/m1.wav", "music", "", 0.40, 44100, 1),
    ("fsdd_yweweler/y1.wav", "fsdd_yweweler", "seven", 0.20, 8000, 1),
    ("bob/broken.wav", "bob", "Never read.", None, None, None),
]


@pytest.fixture
def manifest(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for name, speaker, text, seconds, rate, channels in ROWS:
        path = tmp_path / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if seconds is None:
            path.write_bytes(b"this is not audio at all")
        else:
            n = int(seconds * rate)
            wav = 0.3 * np.sin(2 * np.pi * 220 * np.arange(n) / rate) + 0.05 * rng.standard_normal(n)
            sf.write(path, np.repeat(wav[:, None], channels, axis=1).astype(np.float32), rate)
        lines.append(json.dumps({"audio": name, "speaker": speaker, "text": text}))
    manifest = tmp_path / "data" / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def test_plan_is_sorted_with_the_codec_split(manifest):
    items = plan_work([manifest, manifest])  # a manifest given twice lists each file once
    assert [i.id for i in items] == sorted(i.id for i in items) and len(items) == len(ROWS)
    split = {i.id: i.split for i in items}
    assert split["fsdd_yweweler/y1"] == "unseen" and split["music/m1"] == "other"
    assert split["alice/a1"] == "dev" and split["alice/a2"] == split["alice/a3"] == "train"  # every 20th, from 0
    assert [i.id for i in plan_work([manifest], limit=3)] == [i.id for i in items[:3]]
    with pytest.raises(LMError, match="no such manifest"):
        plan_work([manifest.parent / "missing.jsonl"])


def test_tokenize_end_to_end_and_resume(manifest, tmp_path, capsys):
    out = tmp_path / "shards"
    summary = tokenize_corpus([manifest], out, model="tiny-16k", shard_size=3, codebooks=4, progress=False)
    err = capsys.readouterr().err
    assert "warning: skipped bob/broken" in err and "broken.wav" in err
    assert summary["utterances"] == 6 and len(summary["skipped"]) == 1 and summary["complete"]
    assert {k: v["utterances"] for k, v in summary["splits"].items()} == {"dev": 2, "other": 1, "train": 2, "unseen": 1}
    assert json.loads((out / "index.json").read_text()) == summary
    files = sorted(p.name for p in out.glob("shard_*"))
    assert files == ["shard_00000.safetensors", "shard_00001.safetensors", "shard_00002.safetensors"]

    corpus = read_corpus(out)
    assert corpus.codec_info["num_codebooks"] == 4 and corpus.codec_info["name"] == "tiny-16k"
    assert [s["id"] for s in corpus.skipped] == ["bob/broken"]
    model = codec.load("tiny-16k")
    rows = {f"{speaker}/{Path(name).stem}": (name, text) for name, speaker, text, *_ in ROWS}
    for u in corpus.utterances:  # exactly what encoding and phonemizing each file directly gives
        name, text = rows[u.id]
        wav, rate = load_audio(manifest.parent / name, 16000)
        expected = model.encode(torch.from_numpy(wav)[None], rate)[0, :4].numpy()
        assert u.codes.dtype == np.int16 and np.array_equal(u.codes, expected)
        assert u.phonemes.tolist() == text_to_ids(text) and (len(u.phonemes) > 0) == bool(text)
        assert u.duration == pytest.approx(wav.shape[1] / 16000) and u.text == text
        assert Path(u.source) == (manifest.parent / name).resolve()
    assert summary["frames"] == sum(u.num_frames for u in corpus.utterances)

    # Resume: nothing is redone, files untouched.
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*")}
    again = tokenize_corpus([manifest], out, model="tiny-16k", shard_size=3, codebooks=4, progress=False)
    assert again["run"]["reused_shards"] == 3 and again["run"]["skipped_this_run"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*")} == stamps
    assert "resuming: 3 of 3" in capsys.readouterr().err

    # A damaged shard is redone, and comes out the same.
    damaged = out / "shard_00001.safetensors"
    before = read_shard(damaged)
    damaged.write_bytes(damaged.read_bytes()[:-10])
    again = tokenize_corpus([manifest], out, model="tiny-16k", shard_size=3, codebooks=4, progress=False)
    assert again["run"]["reused_shards"] == 2 and "redoing shard_00001" in capsys.readouterr().err
    after = read_shard(damaged)
    assert [u.id for u in after.utterances] == [u.id for u in before.utterances]
    assert all(np.array_equal(a.codes, b.codes) for a, b in zip(after.utterances, before.utterances))

    # A smaller work list: shard 0 is still valid, the others are stale and removed.
    small = tokenize_corpus([manifest], out, model="tiny-16k", shard_size=3, codebooks=4, limit=3, progress=False)
    assert small["run"]["reused_shards"] == 1 and sorted(p.name for p in out.glob("shard_*")) == files[:1]
    assert len(read_shards(out)) + len(read_corpus(out).skipped) == 3

    # Another codec setting in the same folder is refused.
    with pytest.raises(LMError, match="another codec"):
        tokenize_corpus([manifest], out, model="tiny-16k", shard_size=3, codebooks=2, progress=False)


def test_unfinished_folder_is_refused_by_read_shards(manifest, tmp_path):
    out = tmp_path / "shards"
    tokenize_corpus([manifest], out, model="tiny-16k", shard_size=3, codebooks=2, progress=False)
    os.remove(out / "shard_00002.safetensors")  # as if the run had been interrupted
    with pytest.raises(LMError, match="do not match index.json"):
        read_shards(out)


def test_cli(manifest, tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["tokenize", "--manifest", str(manifest), "--model", "tiny-16k", "--out", str(out),
                     "--codebooks", "2", "--shard-size", "4"])
    captured = capsys.readouterr()
    assert code == 1  # one file was skipped
    assert "6 utterances in 2 shards" in captured.out and "1 file(s) skipped" in captured.err
    assert cli_main(["tokenize", "--manifest", str(tmp_path / "nope.jsonl"), "--model", "tiny-16k",
                     "--out", str(out)]) == 2
    assert "error: " in capsys.readouterr().err
    assert cli_main(["tokenize", "--manifest", str(manifest), "--model", "tiny-16k", "--out", str(out),
                     "--codebooks", "13"]) == 2
    assert "--codebooks must be in 1..12" in capsys.readouterr().err


def test_workers_give_the_same_shards(manifest, tmp_path):
    one = tokenize_corpus([manifest], tmp_path / "one", model="tiny-16k", shard_size=4, codebooks=3, progress=False)
    two = tokenize_corpus([manifest], tmp_path / "two", model="tiny-16k", shard_size=4, codebooks=3, workers=2,
                          progress=False)
    assert one["frames"] == two["frames"] and one["splits"] == two["splits"]
    for a, b in zip(read_shards(tmp_path / "one"), read_shards(tmp_path / "two")):
        assert a.id == b.id and np.array_equal(a.codes, b.codes) and np.array_equal(a.phonemes, b.phonemes)
