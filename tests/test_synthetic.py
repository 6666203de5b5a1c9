"""Tests of ``tokenwave synth-speech`` (``codec.synthetic``).

Rendering needs the TTS engines from Debian/Ubuntu (see ``codec.synthetic.APT_INSTALL``); CI
machines may not have them, so those tests are skipped with the reason. Sentence selection,
trimming and the missing-engine paths run everywhere. Each render is a few short sentences.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from codec import synthetic
from codec.cli import main
from codec.data import read_manifest
from codec.errors import TokenwaveError

SENTENCES = [
    "The cat sat on the mat.",
    "Please call me back this evening.",
    "A small boat drifted across the quiet lake.",
    "We will meet again tomorrow morning.",
    "Hi.",  # too short
    " ".join(["word"] * 30) + ".",  # too long
]
PREFERRED = ["espeak_en-us", "flite_slt", "espeak_en-gb+f4", "flite_kal16", "festival_kal_diphone"]


@pytest.fixture(scope="module")
def installed():
    return synthetic.list_voices()


def _two_voices(installed):
    names = [v.speaker for v in installed]
    chosen = [n for n in PREFERRED if n in names][:2]
    chosen += [n for n in names if n not in chosen][: 2 - len(chosen)]
    if len(chosen) < 2:
        pytest.skip(f"needs two TTS voices installed ({synthetic.APT_INSTALL}); found {names or 'none'}")
    return chosen


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return path


def test_pick_sentences_filters_and_is_deterministic():
    sentences = synthetic.read_sentences([]) + SENTENCES
    picked = synthetic.pick_sentences(sentences, None, seed=0)
    assert sorted(picked) == sorted(SENTENCES[:4])
    assert synthetic.pick_sentences(sentences, None, seed=0) == picked
    assert synthetic.pick_sentences(sentences, 2, seed=0) == picked[:2]  # a larger run extends a smaller one
    orders = {tuple(synthetic.pick_sentences(sentences, None, seed=s)) for s in range(6)}
    assert len(orders) > 1


def test_excluded_sentences_are_never_picked_and_the_others_keep_their_order():
    picked = synthetic.pick_sentences(SENTENCES, None, seed=0)
    banned = picked[1].upper().replace(" ", "  ") + "!"  # case, spacing and punctuation do not matter
    kept = synthetic.pick_sentences(SENTENCES, None, seed=0, exclude=[banned])
    assert kept == picked[:1] + picked[2:]
    assert synthetic.pick_sentences(SENTENCES, 1, seed=0, exclude=picked[:1]) == [picked[1]]


def test_the_cli_always_excludes_the_tts_evaluation_sentences():
    import argparse

    from tts.evaluate import SENTENCES_FILE, read_sentences

    parser = argparse.ArgumentParser()
    synthetic.add_arguments(parser)
    assert parser.parse_args(["--exclude", "mine.txt"]).exclude == [str(SENTENCES_FILE), "mine.txt"]
    evaluation = read_sentences(SENTENCES_FILE)
    assert not synthetic.pick_sentences(evaluation, None, exclude=synthetic.read_sentences([SENTENCES_FILE]))
    assert synthetic.EVAL_SENTENCES == SENTENCES_FILE


def test_read_sentences_dedups_and_reports_missing(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one two  three\n\none two three\nfour five six\n", encoding="utf-8")
    assert synthetic.read_sentences([path]) == ["one two three", "four five six"]
    with pytest.raises(TokenwaveError, match="cannot read"):
        synthetic.read_sentences([tmp_path / "missing.txt"])


def test_trim_silence_keeps_padding():
    sr = 16_000
    tone = 0.5 * np.sin(2 * np.pi * 200 * np.arange(sr) / sr)
    wav = np.concatenate([np.zeros(sr), tone, np.zeros(sr)])[None].astype(np.float32)
    trimmed = synthetic.trim_silence(wav, sr)
    assert abs(trimmed.shape[-1] - (sr + 2 * int(synthetic.TRIM_PAD_S * sr))) <= sr // 100
    assert synthetic.trim_silence(np.zeros((1, sr), np.float32), sr).shape[-1] == 0


def test_unknown_engine_and_voice(text_file, tmp_path):
    with pytest.raises(TokenwaveError, match="unknown engine"):
        synthetic.render_corpus([text_file], tmp_path / "out", engines=["say"])
    with pytest.raises(TokenwaveError, match="not available"):
        synthetic.render_corpus([text_file], tmp_path / "out", voices=["nobody_there"])


def test_no_engine_installed_is_a_clear_error(text_file, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(TokenwaveError, match="apt-get install"):
        synthetic.render_corpus([text_file], tmp_path / "out")
    err = capsys.readouterr().err
    for engine in synthetic.ENGINES:
        assert f"skipping {engine}" in err


def _check_corpus(out: Path, voices: list[str]) -> list[dict]:
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert {r["speaker"] for r in rows} == set(voices)
    assert len({r["text"] for r in rows}) == 4  # every voice speaks different sentences
    for row in rows:
        assert set(row) == {"audio", "text", "speaker", "duration", "sample_rate", "source", "license"}
        assert row["text"] in SENTENCES[:4]
        info = sf.info(str(out / row["audio"]))
        assert info.samplerate == row["sample_rate"] == 16_000 and info.channels == 1
        assert row["duration"] == pytest.approx(info.frames / info.samplerate, abs=1e-3)
        assert 0.8 < row["duration"] < 8.0, row
        wav, _ = sf.read(str(out / row["audio"]))
        assert np.sqrt(np.mean(wav ** 2)) > 0.01 and np.abs(wav).max() <= synthetic.MAX_PEAK + 1e-3
        assert row["source"] and row["license"]
    recordings = read_manifest(out / "manifest.jsonl")
    assert [r.path for r in recordings] == [out / r["audio"] for r in rows]
    assert all(r.is_speech for r in recordings)
    return rows


def test_render_two_voices_and_resume(installed, text_file, tmp_path, capsys):
    voices = _two_voices(installed)
    out = tmp_path / "synth"
    summary = synthetic.render_corpus([text_file], out, voices=voices, max_sentences=4, workers=2, progress=False)
    assert (summary.rows, summary.rendered, summary.reused, summary.failed) == (4, 4, 0, 0)
    rows = _check_corpus(out, voices)
    mtimes = {r["audio"]: os.stat(out / r["audio"]).st_mtime_ns for r in rows}

    # Re-running reuses every file, and the CLI writes the same manifest.
    (out / "manifest.jsonl").unlink()
    code = main(["synth-speech", "--text", str(text_file), "--out", str(out), "--voices", ",".join(voices),
                 "--sentences", "4", "--workers", "1"])
    assert code == 0
    assert "4 reused" in capsys.readouterr().out
    assert _check_corpus(out, voices) == rows
    assert {r["audio"]: os.stat(out / r["audio"]).st_mtime_ns for r in rows} == mtimes


def test_missing_engine_is_skipped_with_a_note(text_file, tmp_path, monkeypatch, capsys):
    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.skip(f"needs espeak-ng ({synthetic.APT_INSTALL})")
    bin_dir = tmp_path / "bin"  # a PATH with espeak-ng only: festival and flite are "not installed"
    bin_dir.mkdir()
    (bin_dir / "espeak-ng").symlink_to(binary)
    monkeypatch.setenv("PATH", str(bin_dir))
    summary = synthetic.render_corpus([text_file], tmp_path / "out", voices=["espeak_en-us", "espeak_en-gb"],
                                      max_sentences=2, progress=False)
    err = capsys.readouterr().err
    assert "skipping festival" in err and "skipping flite" in err
    assert summary.skipped_engines == ["festival", "flite"]
    assert summary.rows == 2 and set(summary.per_speaker) == {"espeak_en-us", "espeak_en-gb"}


def test_list_voices_cli(capsys):
    assert main(["synth-speech", "--list-voices"]) == 0
    captured = capsys.readouterr()
    for voice in synthetic.list_voices():
        assert voice.speaker in captured.out
    with pytest.raises(TokenwaveError, match="needs --text"):
        synthetic.main_synth(type("Args", (), {"list_voices": False, "text": None, "out": None})())
