"""``tokenwave eval-tts``: the word error rate, the shipped sentence list, and an end-to-end run
on two sentences with tiny random models (pocketsphinx and Resemblyzer on tiny audio)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from codec.cli import main as cli_main
from tts.errors import TTSError
from tts.evaluate import SENTENCES_FILE, cosine, edit_ops, normalize_words, read_sentences, wer

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# WER


def test_edit_ops_counts_substitutions_deletions_insertions():
    assert edit_ops(list("abcd"), list("abcd")) == (0, 0, 0)
    assert edit_ops(list("abcd"), list("axcde")) == (1, 0, 1)
    assert edit_ops(list("abcd"), list("ad")) == (0, 2, 0)
    assert edit_ops(list("ab"), []) == (0, 2, 0)
    assert edit_ops([], list("ab")) == (0, 0, 2)
    assert edit_ops(["the", "cat", "sat"], ["cat", "sat", "down"]) == (0, 1, 1)
    assert sum(edit_ops(["kitten", "sitting", "on", "mat"], ["sitting", "kitten", "on", "the", "mat"])) == 3


def test_wer_values():
    assert wer("the cat sat on the mat", "the cat sat on the mat") == 0.0
    assert wer("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(1 / 6)
    assert wer("the cat sat", "") == 1.0
    assert wer("one two", "one two three four") == 1.0  # insertions can exceed 100% ...
    assert wer("a", "b c d") == 3.0  # ... as in every WER definition
    assert wer("", "") == 0.0 and math.isinf(wer("", "word"))
    assert wer(["a", "b"], ["a", "c"]) == 0.5  # lists are taken as given


def test_normalisation_for_wer():
    assert normalize_words("Hello, World!  It's the end.") == ["hello", "world", "it's", "the", "end"]
    assert normalize_words("He was 25 years old.") == ["he", "was", "twenty", "five", "years", "old"]
    assert normalize_words("Dr. Smith's well-known co-worker") == ["doctor", "smith's", "well", "known", "co", "worker"]
    # the same sentence said and recognised
    assert wer("In 1828, Mr. Jones left.", "in eighteen twenty eight mister jones left") == 0.0


def test_cosine():
    a = np.array([1.0, 0.0]), np.array([0.0, 2.0])
    assert cosine(a[0], a[0]) == pytest.approx(1.0) and cosine(*a) == pytest.approx(0.0)
    assert math.isnan(cosine(None, a[0]))


# ---------------------------------------------------------------------------------------------
# The sentence list


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def test_shipped_sentences_were_never_seen_in_training():
    sentences = read_sentences()
    assert len(sentences) == 100 and len(set(sentences)) == 100
    assert all(6 <= len(s.split()) <= 16 and s[0].isupper() and s.endswith(".") for s in sentences)
    manifests = [SHARED / "manifest.jsonl", Path("/work/synth/manifest.jsonl")]
    if not all(m.is_file() for m in manifests):
        pytest.skip("the training manifests are not available here")
    seen = {_key(json.loads(line).get("text", "")) for m in manifests for line in m.read_text().splitlines()
            if line.strip()}
    assert not seen & {_key(s) for s in sentences}


def test_read_sentences_skips_comments_and_rejects_empty_files(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("# comment\n\nOne.\n  Two.  \n")
    assert read_sentences(path) == ["One.", "Two."]
    path.write_text("# only a comment\n")
    with pytest.raises(TTSError, match="no sentences"):
        read_sentences(path)
    assert SENTENCES_FILE.is_file()


# ---------------------------------------------------------------------------------------------
# End to end


def _scorers_or_skip():
    try:
        import pocketsphinx  # noqa: F401

        from tts.evaluate import _import_resemblyzer

        _import_resemblyzer()
    except ImportError as error:
        pytest.skip(f"eval-tts needs pocketsphinx and resemblyzer: {error}")


def test_eval_tts_end_to_end_with_tiny_models(tmp_path, capsys):
    _scorers_or_skip()
    manifest = SHARED / "manifest.jsonl"
    out = tmp_path / "eval"
    args = ["eval-tts", "--ar", "tiny", "--nar", "tiny", "--codec", "tiny-16k", "--sentences", "2",
            "--references", "1", "--max-frames-per-phoneme", "2", "--retries", "0", "--threads", "1",
            "--manifest", str(manifest), "--out", str(out)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "| kathleen | TTS (tiny-16k) | 2 |" in printed and "Targets" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    tts_rows = [r for r in rows if r["type"] == "utterance" and r["system"] == "tts"]
    assert len(tts_rows) == 2
    for row in tts_rows:
        assert row["words"] > 0 and row["wer"] >= 0 and row["rtf"] > 0 and row["seconds"] > 0
        assert row["failure"] in (None, "max_length", "empty", "silence")
        assert row["similarity"] is None or -1.0 <= row["similarity"] <= 1.0
    assert (out / "audio" / "kathleen" / "000.flac").is_file()
    summaries = {r["system"]: r for r in rows if r["type"] == "summary"}
    assert summaries["tts"]["utterances"] == 2 and "rtf" in summaries["tts"] and "failed" in summaries["tts"]
    if manifest.is_file():
        assert summaries["real"]["utterances"] == 1 and summaries["roundtrip"]["utterances"] == 1
        assert 0.5 < summaries["real"]["similarity"] <= 1.0  # a real Kathleen recording vs her prompt
    targets = [r for r in rows if r["type"] == "target"]
    assert {t["target"] for t in targets} == {"WER / real WER", "failed generations", "similarity / real-real", "RTF"}
    speed = next(r for r in rows if r["type"] == "scorer_speed")
    assert speed["utterances"] == (4 if manifest.is_file() else 2)
    assert (out / "results.md").read_text().startswith("# TTS evaluation")
    assert cli_main(args) == 2  # results exist: refused without --force
    assert "use --force" in capsys.readouterr().err
