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
from tts.evaluate import (
    DEV_SENTENCES_FILE,
    SENTENCES_FILE,
    char_edits,
    cosine,
    edit_ops,
    normalize_words,
    parse_layer_rows,
    read_sentences,
    wer,
)

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


def test_character_errors_grade_what_the_word_errors_cannot():
    assert char_edits(["the", "cat"], ["the", "cat"]) == (0, 7)
    assert char_edits(["the", "cat"], ["the", "hat"]) == (1, 7)  # one word wrong = one letter wrong
    assert char_edits(["practiced"], ["practice"]) == (1, 9)  # 100% WER, 11% CER
    assert char_edits(["ab"], []) == (2, 2) and char_edits([], ["ab"]) == (2, 0)


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
    # The real training speech; synthetic corpora cannot contain them (synth-speech leaves them out).
    manifests = [SHARED / "manifest.jsonl"]
    if not all(m.is_file() for m in manifests):
        pytest.skip("the shared manifest is not available here")
    seen = {_key(json.loads(line).get("text", "")) for m in manifests for line in m.read_text().splitlines()
            if line.strip()}
    assert not seen & {_key(s) for s in sentences}


def test_recognition_does_not_depend_on_what_was_decoded_before():
    _scorers_or_skip()
    from codec.audio import load_audio
    from tts.asr import Recognizer

    # Before each utterance got a fresh feature state, this recording came out three ways.
    files = [SHARED / "speech" / "kathleen" / f"arctic_a{n:04d}.flac" for n in (301, 1, 41, 101)]
    if not all(f.is_file() for f in files):
        pytest.skip("the shared Kathleen recordings are not available here")
    wavs = [load_audio(f, 16_000)[0][0] for f in files]
    recognizer = Recognizer()
    first = recognizer.transcribe(wavs[0], 16_000)
    for wav in wavs[1:]:
        recognizer.transcribe(wav, 16_000)
    assert recognizer.transcribe(wavs[0], 16_000) == first == Recognizer().transcribe(wavs[0], 16_000)


def test_dev_sentences_are_the_documented_pick_and_apart_from_the_test_set():
    from codec.synthetic import pick_sentences, sentence_key

    dev = read_sentences(DEV_SENTENCES_FILE)
    test_set = {sentence_key(s) for s in read_sentences(SENTENCES_FILE)}
    assert len(dev) == 60 and not {sentence_key(s) for s in dev} & test_set
    texts = sorted((SHARED / "text").glob("*.txt"))
    if not texts or not (SHARED / "manifest.jsonl").is_file():
        pytest.skip("the shared sentences are not available here")
    from codec.synthetic import read_sentences as read_text_files

    rows = [json.loads(line) for line in (SHARED / "manifest.jsonl").read_text().splitlines()]
    spoken = {sentence_key(row.get("text") or "") for row in rows}
    order = pick_sentences(read_text_files(texts), None, seed=0, exclude=read_text_files([SENTENCES_FILE]))
    rebuilt = [s for s in order[3000:] if 6 <= len(s.split()) <= 20 and sentence_key(s) not in spoken]
    assert rebuilt[:60] == dev


def test_layer_rows_option():
    assert parse_layer_rows(None) == [] and parse_layer_rows("4, 1,2,2") == [1, 2, 4]
    for bad in ("one", "0,2", ","):
        with pytest.raises(TTSError, match="--layer-rows"):
            parse_layer_rows(bad)


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
            "--layer-rows", "1,9", "--manifest", str(manifest), "--out", str(out)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "| kathleen | TTS (tiny-16k) | 2 |" in printed and "Targets" in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    tts_rows = [r for r in rows if r["type"] == "utterance" and r["system"] == "tts"]
    assert len(tts_rows) == 2
    for row in tts_rows:
        assert row["words"] > 0 and row["wer"] >= 0 and row["rtf"] > 0 and row["seconds"] > 0
        assert row["chars"] > row["words"] and row["cer"] == row["char_errors"] / row["chars"]
        assert row["failure"] in (None, "max_length", "empty", "silence")
        assert row["similarity"] is None or -1.0 <= row["similarity"] <= 1.0
    assert (out / "audio" / "kathleen" / "000.flac").is_file()
    summaries = {r["system"]: r for r in rows if r["type"] == "summary"}
    assert summaries["tts"]["utterances"] == 2 and "rtf" in summaries["tts"] and "failed" in summaries["tts"]
    assert summaries["tts"]["cer"] == sum(r["char_errors"] for r in tts_rows) / sum(r["chars"] for r in tts_rows)
    if manifest.is_file():
        assert summaries["real"]["utterances"] == 1 and summaries["roundtrip"]["utterances"] == 1
        assert summaries["nar_fill"]["utterances"] == 1
        assert summaries["layers_1"]["utterances"] == 1 and "layers_9" not in summaries  # the tiny NAR has 4
        layer_1 = next(r for r in rows if r["type"] == "utterance" and r["system"] == "layers_1")
        roundtrip = next(r for r in rows if r["type"] == "utterance" and r["system"] == "roundtrip")
        assert layer_1["seconds"] == roundtrip["seconds"] and layer_1["file"] == roundtrip["file"]
        assert 0.5 < summaries["real"]["similarity"] <= 1.0  # a real Kathleen recording vs her prompt
    targets = [r for r in rows if r["type"] == "target"]
    assert {t["target"] for t in targets} == {"WER / real WER", "failed generations", "similarity / real-real", "RTF"}
    speed = next(r for r in rows if r["type"] == "scorer_speed")
    assert speed["utterances"] == (6 if manifest.is_file() else 2)  # 2 TTS + real, round trip, 1 layer, NAR fill
    assert (out / "results.md").read_text().startswith("# TTS evaluation")
    assert cli_main(args) == 2  # results exist: refused without --force
    assert "use --force" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Zero-shot prompts: --prompt and --unseen-speaker


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _voiced(seconds: float, rate: int, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """Speech-like test audio ``[N]``: harmonics of ``f0`` with a 4 Hz syllable envelope."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wav = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.3)) / h for h in range(1, 12) if f0 * h < rate / 2)
    envelope = 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t)
    return (0.1 * wav * envelope).astype(np.float32)


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unseen_prompt_is_built_from_the_unseen_speakers_digits(tmp_path):
    from codec.audio import load_audio, write_audio
    from tts.evaluate import DIGIT_ORDER, build_unseen_prompt, unseen_speaker
    from tts.synthesizer import sound_frames

    assert unseen_speaker() == "fsdd_yweweler"
    rows = []
    for digit, word in enumerate(DIGITS):
        for take in range(2):  # 0.1 s silence, 0.4 s of sound, 0.1 s silence, at 8 kHz
            wav = np.concatenate([np.zeros(800), _voiced(0.4, 8000, 100 + 10 * digit), np.zeros(800)])
            name = f"{digit}_yweweler_{take}.wav"
            write_audio(tmp_path / name, wav[None], 8000)
            rows.append({"audio": name, "text": word, "speaker": "fsdd_yweweler"})
        write_audio(tmp_path / f"{digit}_other_0.wav", _voiced(0.6, 8000)[None], 8000)
        rows.append({"audio": f"{digit}_other_0.wav", "text": word, "speaker": "fsdd_other"})
    manifest = _write_manifest(tmp_path / "manifest.jsonl", rows)
    built = build_unseen_prompt(manifest, tmp_path / "prompts", references=5)
    path, transcript, files = built.path, built.transcript, built.files
    wav, rate = load_audio(path)
    seconds = wav.shape[1] / rate
    assert rate == 16000 and 3.5 <= seconds <= 5.0
    words = transcript.split()
    # digit order fixed, one take of each digit; each 0.44 s piece (trimmed to 20 ms margins) + 0.15 s gaps
    assert words == list(DIGIT_ORDER[: len(words)]) and len(words) == 7
    assert seconds == pytest.approx(7 * 0.44 + 6 * 0.15, abs=0.03)
    assert [f.name for f in files] == [f"{DIGITS.index(w)}_yweweler_0.wav" for w in words]
    silent = ~sound_frames(wav[0], rate)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(int), [0]]))))[::2]
    assert (runs >= 5).sum() == 6  # the six gaps (>= 100 ms of silence), nothing else
    info = json.loads(path.with_suffix(".json").read_text())
    assert info["transcript"] == transcript and info["speaker"] == "fsdd_yweweler" and len(info["files"]) == 7
    # the one reference: take 1 of each digit (no recording shared with the prompt), order rotated by 3
    (ref,) = built.references
    ref_words = ref.text.split()
    assert ref_words == list(DIGIT_ORDER[3:] + DIGIT_ORDER[:3])[: len(ref_words)] and len(ref_words) == 7
    assert ref.speaker == "fsdd_yweweler" and ref.path.name == "unseen-fsdd_yweweler-ref-01.flac"
    assert ref.path.is_file() and [r["file"] for r in info["references"]] == [ref.path.name]
    assert info["references"][0]["files"] == [str(tmp_path / f"{DIGITS.index(w)}_yweweler_1.wav")
                                              for w in ref_words]
    with pytest.raises(TTSError, match="no digit recordings"):
        build_unseen_prompt(manifest, tmp_path / "prompts", speaker="nobody")


def test_eval_tts_zero_shot_prompt_with_tiny_models(tmp_path, capsys):
    _scorers_or_skip()
    from codec.audio import write_audio

    # a 3 s stereo 22.05 kHz prompt and two more recordings of its "speaker" in a manifest
    prompt = tmp_path / "me.wav"
    write_audio(prompt, np.stack([_voiced(3.0, 22050), _voiced(3.0, 22050, seed=1)]), 22050)
    rows = [{"audio": "me.wav", "text": "hello there my friend", "speaker": "me"}]
    for i in range(2):
        write_audio(tmp_path / f"me{i}.wav", _voiced(0.8, 16000, 125, seed=i)[None], 16000)
        rows.append({"audio": f"me{i}.wav", "text": "good morning", "speaker": "me"})
    manifest = _write_manifest(tmp_path / "manifest.jsonl", rows)
    out = tmp_path / "eval"
    base = ["eval-tts", "--ar", "tiny", "--nar", "tiny", "--codec", "tiny-16k", "--sentences", "1",
            "--max-frames-per-phoneme", "2", "--retries", "0", "--threads", "1", "--manifest", str(manifest),
            "--out", str(out)]
    args = base + ["--prompt", str(prompt), "--prompt-text", "hello there my friend", "--prompt-name", "me",
                   "--reference-speaker", "me", "--references", "5"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "| prompt: me (zero-shot) | TTS (tiny-16k) | 1 |" in printed and "kathleen" not in printed
    assert "| prompt: me (zero-shot) | real recordings | 2 |" in printed and "Targets" not in printed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    tts_row = next(r for r in rows if r["type"] == "utterance" and r["system"] == "tts")
    assert tts_row["voice"] == "prompt: me (zero-shot)" and tts_row["rtf"] > 0 and tts_row["words"] > 0
    assert tts_row["failure"] in (None, "max_length", "empty", "silence")
    real = [r for r in rows if r["type"] == "utterance" and r["system"] == "real"]
    assert sorted(Path(r["file"]).name for r in real) == ["me0.wav", "me1.wav"]  # the prompt's own file left out
    summaries = [r for r in rows if r["type"] == "summary"]
    assert {s["system"] for s in summaries} == {"tts", "real", "roundtrip", "nar_fill"} and all(s["zero_shot"] for s in summaries)
    assert not [r for r in rows if r["type"] == "target"]  # no target yet for zero-shot prompts
    assert (out / "audio" / "prompt-me" / "000.flac").is_file()
    markdown = (out / "results.md").read_text()
    assert "## Rows" in markdown and f"zero-shot prompt recording `{prompt}`" in markdown
    assert 'transcript: "hello there my friend"' in markdown and "2 recording(s) of manifest speaker `me`" in markdown
    # bad input: one-line errors, exit 2
    for extra, message in ((["--prompt", str(tmp_path / "missing.wav")], "not found"),
                           (["--prompt-text", "hi"], "go with --prompt"),
                           (["--prompt", str(prompt), "--reference-speaker", "nobody"], "no such speaker")):
        assert cli_main(base + ["--force"] + extra) == 2
        assert message in capsys.readouterr().err


def test_eval_tts_unseen_speaker_with_tiny_models(tmp_path, capsys):
    _scorers_or_skip()
    manifest = SHARED / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"--unseen-speaker needs the shared data manifest ({manifest} is absent)")
    out = tmp_path / "eval"
    args = ["eval-tts", "--ar", "tiny", "--nar", "tiny", "--codec", "tiny-16k", "--sentences", "1",
            "--references", "1", "--max-frames-per-phoneme", "2", "--retries", "0", "--threads", "1",
            "--manifest", str(manifest), "--out", str(out), "--unseen-speaker", "--no-audio"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    label = "unseen: fsdd_yweweler (zero-shot)"
    assert f"| {label} | TTS (tiny-16k) | 1 |" in printed and f"| {label} | real recordings | 1 |" in printed
    info = json.loads((out / "prompts" / "unseen-fsdd_yweweler.json").read_text())
    assert 3.5 <= info["seconds"] <= 5.0 and set(info["transcript"].split()) <= set(DIGITS)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    real = [r for r in rows if r["type"] == "utterance" and r["system"] == "real"]
    assert [Path(r["file"]).name for r in real] == [r["file"] for r in info["references"]]
    used = [Path(f).name for f in info["files"] + [f for r in info["references"] for f in r["files"]]]
    assert len(used) == len(set(used)) and all("_yweweler_" in name for name in used)  # no recording twice
    for r in real:  # digit sequences, long enough for a speaker embedding
        assert set(r["text"].split()) <= set(DIGITS) and r["seconds"] >= 3.0 and r["similarity"] > 0.5
    assert all(r["voice"] == label for r in rows if r["type"] in ("utterance", "summary"))
    assert not [r for r in rows if r["type"] == "target"]
    markdown = (out / "results.md").read_text()
    assert f"- **{label}**: zero-shot prompt of speaker `fsdd_yweweler`, the codec's unseen split" in markdown
    assert f'transcript: "{info["transcript"]}"' in markdown
