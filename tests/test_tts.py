"""Text to speech: sentence splitting, the synthesizer's plumbing with tiny random models
(tiny-16k codec + tiny AR/NAR), prompts of every kind, streaming, ``tokenwave speak``, and a
smoke test of the shipped LM weights (skipped while weights/lm-ar is absent)."""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.cli import main as cli_main
from codec.errors import TokenwaveError
from tts.errors import TTSError
from tts.sentences import PAUSES, split_long, split_text

REPO = Path(__file__).resolve().parent.parent
TINY = ["--ar", "tiny", "--nar", "tiny", "--codec", "tiny-16k", "--retries", "0"]


# ---------------------------------------------------------------------------------------------
# Sentences


def test_split_text_sentences_abbreviations_and_pauses():
    text = "Mr. Smith met Dr. J. Watson at 3.30 p.m. on Baker St. today. Did he? Yes!\n\nA new paragraph."
    chunks = split_text(text)
    assert [c.text for c in chunks] == [
        "Mr. Smith met Dr. J. Watson at 3.30 p.m. on Baker St. today.", "Did he?", "Yes!", "A new paragraph."]
    assert [c.pause for c in chunks] == [PAUSES["sentence"], PAUSES["sentence"], PAUSES["paragraph"], 0.0]
    assert [c.kind for c in chunks] == ["sentence", "sentence", "paragraph", "paragraph"]


def test_split_text_single_line_breaks_are_spaces_and_symbols_are_dropped():
    chunks = split_text("This sentence goes\nover two lines. ...\n\n--- \n\nEnd.")
    assert [c.text for c in chunks] == ["This sentence goes over two lines. ...", "End."]


def test_long_sentences_are_cut_at_clauses_then_between_words():
    sentence = ("One two three four five six, seven eight nine ten eleven twelve; thirteen fourteen fifteen "
                "sixteen seventeen eighteen nineteen twenty twentyone twentytwo.")
    pieces = split_long(sentence, 8)
    assert all(len(p.split()) <= 8 for p in pieces)
    assert " ".join(pieces) == sentence
    assert pieces[0].endswith("six,") and pieces[1].endswith("twelve;")
    chunks = split_text(sentence + " Short one.", max_words=8)
    assert [c.kind for c in chunks][:-2] == ["clause"] * (len(chunks) - 2)
    assert chunks[0].pause == PAUSES["clause"] and chunks[-2].pause == PAUSES["sentence"]
    words = " ".join(f"w{i}" for i in range(45))  # no punctuation at all: equal parts
    assert [len(p.split()) for p in split_long(words, 20)] == [15, 15, 15]


def test_short_sentences_are_joined_to_a_neighbour_in_their_paragraph():
    text = "End quote. As she said these words, she pointed to her elbow. Did he? Yes!\n\nNo.\n\nIt was late. Fine."
    chunks = split_text(text, min_words=3)
    assert [c.text for c in chunks] == ["End quote. As she said these words, she pointed to her elbow.",
                                        "Did he? Yes!", "No.", "It was late. Fine."]
    assert [c.kind for c in chunks] == ["sentence", "paragraph", "paragraph", "paragraph"]
    assert [c.text for c in split_text("One two. Three four five six.", max_words=5, min_words=3)] == [
        "One two.", "Three four five six."]  # together they would be too long
    assert split_text(text) == split_text(text, min_words=1)  # the default joins nothing
    assert len(split_text(text)) == 7


@pytest.mark.parametrize("text", ["", "   ", "... !!! ---", "\n\n"])
def test_split_text_without_words_is_an_error(text):
    with pytest.raises(TTSError, match="no text to speak"):
        split_text(text)


# ---------------------------------------------------------------------------------------------
# Synthesizer with tiny random models


@pytest.fixture(scope="module")
def synth():
    from tokenlm.sampling import SamplingConfig
    from tts.synthesizer import SynthesisConfig, tiny_synthesizer

    # untrained AR: eos is improbable, so rows run to the length guard; keep it short
    config = SynthesisConfig(sampling=SamplingConfig(max_frames_per_phoneme=2.0), retries=0)
    return tiny_synthesizer(config=config)


def _speech_like(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Noise bursts shaped like syllables ``[channels, n]`` (sound in most frames)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    wav = 0.1 * envelope * (rng.standard_normal(t.size) + np.sin(2 * np.pi * 180 * t))
    return np.stack([wav * (1 - 0.3 * c) for c in range(channels)]).astype(np.float32)


def test_synthesize_returns_float_audio_made_of_chunks_and_pauses(synth):
    text = "Hello there, everyone. This is the second sentence! And a third one?"
    result = synth.run(text, voice="kathleen", seed=0)
    assert result.sample_rate == 16_000 and result.audio.dtype == np.float32 and result.audio.ndim == 1
    assert [c.text for c in result.chunks] == ["Hello there, everyone.", "This is the second sentence!", "And a third one?"]
    pauses = [round(c.pause * 16_000) for c in result.chunks]
    assert len(result.audio) == sum(len(c.audio) for c in result.chunks) + sum(pauses)
    assert pauses[-1] == 0 and pauses[0] == round(PAUSES["sentence"] * 16_000)
    start = len(result.chunks[0].audio)
    assert not result.audio[start : start + pauses[0]].any()  # the pause is silence
    for chunk in result.chunks:
        assert chunk.frames >= chunk.phonemes  # the AR's minimum length: one frame per phoneme
        assert 0 < len(chunk.audio) <= chunk.frames * 320
    audio, _ = synth.synthesize(text, voice="kathleen", seed=0)
    np.testing.assert_array_equal(audio, result.audio)  # same seed, same audio
    other, _ = synth.synthesize(text, voice="kathleen", seed=1)
    assert other.shape != audio.shape or not np.array_equal(other, audio)


def test_batch_synthesis_of_many_texts(synth):
    texts = ["One.", "Two sentences here. Yes, there are.", "The third text is a little longer than the others."]
    outputs = synth.synthesize_batch(texts, voice="ljspeech", seed=3)
    assert len(outputs) == 3 and all(rate == 16_000 for _, rate in outputs)
    results = synth.run_batch(texts, voice="ljspeech", seed=3)
    assert [len(r.chunks) for r in results] == [1, 2, 1]
    for (audio, _), result in zip(outputs, results):
        np.testing.assert_array_equal(audio, result.audio)
        assert len(audio) > 0
    with pytest.raises(TTSError, match="list of texts"):
        synth.run_batch("not a list")


def test_long_text_is_split_and_joined_with_pauses(synth):
    text = " ".join(f"Sentence number {i} is here." for i in range(1, 5)) + "\n\n" + "Next paragraph."
    result = synth.run(text, voice="kathleen")
    assert len(result.chunks) == 5
    assert [c.pause for c in result.chunks] == [PAUSES["sentence"]] * 3 + [PAUSES["paragraph"], 0.0]


def test_prompt_without_transcript_never_crashes(synth, tmp_path):
    from tts import asr

    path = tmp_path / "me.wav"
    sf.write(path, _speech_like(4.0, 16_000)[0], 16_000)
    synth.config.no_transcript = "acoustic"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prompt = synth.prepare_prompt(prompt=path)
            audio, rate = synth.synthesize("Speak in my voice.", prompt=path)
        assert prompt.transcript_source == "none" and prompt.phonemes.numel() == 0
        assert len(audio) > 0 and rate == 16_000
        if asr.available():
            synth.config.no_transcript = "asr"
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                prompt = synth.prepare_prompt(prompt=str(path))
                audio, _ = synth.synthesize("Speak in my voice.", prompt=str(path))
            assert prompt.transcript_source in ("asr", "none")  # noise may hold no words
            assert any("pocketsphinx" in str(w.message) for w in caught)
            assert len(audio) > 0
    finally:
        synth.config.no_transcript = "auto"


def test_stereo_44k_prompt_is_downmixed_and_resampled(synth, tmp_path):
    path = tmp_path / "stereo.flac"
    sf.write(path, _speech_like(4.0, 44_100, channels=2).T, 44_100)
    prompt = synth.prepare_prompt(prompt=path, prompt_text="Some words I said.")
    assert prompt.transcript_source == "given" and prompt.phonemes.numel() > 5
    assert prompt.wav.ndim == 1 and abs(len(prompt.wav) / 16_000 - 4.0) < 0.25
    assert prompt.codes.shape[0] == synth.n_codebooks and abs(prompt.codes.shape[1] - 200) <= 12
    audio, rate = synth.synthesize("Hello.", prompt=path, prompt_text="Some words I said.")
    assert rate == 16_000 and len(audio) > 0
    array_prompt = synth.prepare_prompt(prompt=(_speech_like(4.0, 22_050, channels=2), 22_050), prompt_text="Hi.")
    assert abs(array_prompt.codes.shape[1] - 200) <= 12


def test_bad_prompts_give_clear_errors(synth, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is not audio")
    with pytest.raises(TokenwaveError, match="notes.wav.*cannot read as audio"):
        synth.prepare_prompt(prompt=not_audio)
    with pytest.raises(TokenwaveError, match="no such file"):
        synth.prepare_prompt(prompt=tmp_path / "missing.wav")
    short = tmp_path / "short.wav"
    sf.write(short, _speech_like(0.5, 16_000)[0], 16_000)
    with pytest.raises(TTSError, match="3-10 s"):
        synth.prepare_prompt(prompt=short)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16_000 * 4, np.float32), 16_000)
    with pytest.raises(TTSError, match="sound"):
        synth.prepare_prompt(prompt=silent)
    with pytest.raises(TTSError, match="no voice named 'nobody'.*kathleen"):
        synth.prepare_prompt(voice="nobody")
    with pytest.raises(TTSError, match="not both"):
        synth.prepare_prompt(voice="kathleen", prompt=short)
    with pytest.raises(TTSError, match="goes with a prompt recording"):
        synth.prepare_prompt(voice="kathleen", prompt_text="Words.")


def test_long_prompt_is_cut_and_loud_prompt_levelled(synth, tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, _speech_like(13.0, 16_000)[0] * 0.05, 16_000)  # 13 s, very quiet
    synth.config.no_transcript = "acoustic"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prompt = synth.prepare_prompt(prompt=path, prompt_text="A transcript of thirteen seconds.")
    finally:
        synth.config.no_transcript = "auto"
    messages = " ".join(str(w.message) for w in caught)
    assert "longer than 10 s" in messages and "transcript no longer matches" in messages and "dBFS" in messages
    assert 9.0 <= len(prompt.wav) / 16_000 <= 10.0 and prompt.transcript_source == "none"


def test_stream_yields_small_pieces_first_chunk_short(synth):
    text = "Hello there my dear friend, how are you doing on this fine and sunny day? Very well indeed."
    pieces = list(synth.stream(text, voice="kathleen", seed=0))
    chunks = synth.last_chunks
    assert len(chunks[0].text.split()) <= synth.config.first_chunk_words
    assert [c.text for c in chunks][-1] == "Very well indeed."
    assert all(len(p) <= synth.config.stream_frames * 320 or not p.any() for p in pieces)
    total = sum(len(c.audio) + round(c.pause * 16_000) for c in chunks)
    assert sum(len(p) for p in pieces) == total


def test_check_chunk_failures():
    from tts.synthesizer import check_chunk

    rate = 16_000
    speech = _speech_like(2.0, rate)[0]
    assert check_chunk(speech, rate, 20, hit_max=False) is None
    assert check_chunk(speech, rate, 20, hit_max=True) == "max_length"
    assert check_chunk(np.zeros(rate * 2, np.float32), rate, 20, False) == "empty"
    assert check_chunk(speech[: rate // 5], rate, 3, False) == "empty"  # 0.2 s of sound
    assert check_chunk(speech, rate, 200, False) == "empty"  # 2 s for 200 phonemes: too little
    mostly_quiet = np.concatenate([speech[: rate // 2], np.zeros(rate * 3, np.float32)])
    assert check_chunk(mostly_quiet, rate, 5, False) == "silence"


def test_output_level_is_set_on_sounding_frames_with_a_peak_limit(synth):
    from tts.synthesizer import set_level, speech_level

    rate = 16_000
    quiet = _speech_like(2.0, rate)[0] * 0.02
    assert speech_level(set_level(quiet, rate, -20.0), rate) == pytest.approx(-20.0, abs=0.01)
    spiky = quiet.copy()
    spiky[100] = 0.9  # one loud sample limits the gain
    assert np.abs(set_level(spiky, rate, -10.0)).max() == pytest.approx(0.95, abs=1e-4)
    silence = np.zeros(rate, np.float32)
    assert not set_level(silence, rate, -20.0).any()
    result = synth.run("Hello there.", voice="kathleen")
    assert speech_level(result.audio, rate) == pytest.approx(-20.0, abs=1.5) or np.abs(result.audio).max() > 0.94


def test_failed_chunks_are_retried_with_other_seeds(synth, monkeypatch):
    import tts.synthesizer as module

    calls = []
    real = module.check_chunk

    def fail_first(raw, rate, phonemes, hit_max):
        calls.append(len(raw))
        return "silence" if len(calls) == 1 else real(raw, rate, phonemes, False)

    monkeypatch.setattr(module, "check_chunk", fail_first)
    monkeypatch.setattr(synth.config, "retries", 2)
    result = synth.run("Just one sentence.", voice="kathleen")
    chunk = result.chunks[0]
    assert chunk.attempts == 2 and chunk.first_failure == "silence" and chunk.failure is None
    assert len(calls) == 2


def test_load_and_saved_tiny_models(tmp_path):
    import tts
    from tokenlm.pretrained import save_lm
    from tts.synthesizer import tiny_models

    with pytest.raises(TTSError, match="does not exist"):
        tts.load(ar=str(tmp_path / "nothing"), nar=str(tmp_path / "nothing"))
    ar, nar, vocab = tiny_models()
    save_lm(ar, tmp_path / "ar", vocab)
    save_lm(nar, tmp_path / "nar", vocab)
    synth = tts.load(ar=str(tmp_path / "ar"), nar=str(tmp_path / "nar"), codec="tiny-16k")
    assert synth.n_codebooks == 4 and synth.sample_rate == 16_000
    audio, rate = synth.synthesize("Hi.", seed=0)
    assert rate == 16_000 and audio.ndim == 1 and len(audio) > 0


# ---------------------------------------------------------------------------------------------
# tokenwave speak


def _wav(path: Path) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(path, dtype="float32")
    return audio, rate


def test_speak_text_from_argument_file_and_stdin(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a.wav"
    assert cli_main(["speak", "Hello world.", "-o", str(out), *TINY]) == 0
    audio, rate = _wav(out)
    assert rate == 16_000 and len(audio) > 1000
    assert "1 chunk(s)" in capsys.readouterr().out

    text_file = tmp_path / "story.txt"
    text_file.write_text("The first sentence. The second sentence.\n\nThird, in a new paragraph.\n", encoding="utf-8")
    assert cli_main(["speak", "-f", str(text_file), "-o", str(tmp_path / "b.wav"), *TINY]) == 0
    assert "3 chunk(s)" in capsys.readouterr().out

    monkeypatch.setattr("sys.stdin", io.StringIO("Read from standard input."))
    assert cli_main(["speak", "-o", str(tmp_path / "c.wav"), *TINY]) == 0
    assert (tmp_path / "c.wav").is_file()


def test_speak_errors_are_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "a.wav"
    out.write_bytes(b"")
    assert cli_main(["speak", "Hi.", "-o", str(out), *TINY]) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert cli_main(["speak", "   ", "-o", str(tmp_path / "x.wav"), *TINY]) == 2
    assert "text is empty" in capsys.readouterr().err
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    assert cli_main(["speak", "Hi.", "--prompt", str(bad), "-o", str(tmp_path / "y.wav"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.wav" in err and "Traceback" not in err
    assert cli_main(["speak", "-f", str(tmp_path / "none.txt"), "-o", str(tmp_path / "z.wav"), *TINY]) == 2
    assert "cannot read text file" in capsys.readouterr().err
    assert cli_main(["speak", "Hi.", "-f", str(tmp_path / "none.txt"), "-o", str(tmp_path / "z.wav"), *TINY]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli_main(["speak", "Hi.", "--voice", "nobody", "-o", str(tmp_path / "z.wav"), *TINY]) == 2
    assert "no voice named" in capsys.readouterr().err
    assert cli_main(["speak", "Hi.", "-o", str(tmp_path / "z.mp3"), *TINY]) == 2
    assert ".wav or .flac" in capsys.readouterr().err
    try:
        import sounddevice  # noqa: F401

        has_audio_device = True  # a machine with a sound card: not tested here
    except (ImportError, OSError):
        has_audio_device = False
    if not has_audio_device:
        assert cli_main(["speak", "Hi.", "--play", *TINY]) == 2
        assert "--play needs sounddevice" in capsys.readouterr().err


class _Stdout(io.TextIOWrapper):
    def __init__(self):
        super().__init__(io.BytesIO(), encoding="utf-8")


def test_speak_stream_to_file_and_stdout(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.wav"
    assert cli_main(["speak", "First part. Second part.", "--stream", "-o", str(out), *TINY]) == 0
    captured = capsys.readouterr()
    assert "time to first audio" in captured.err
    audio, rate = _wav(out)
    assert rate == 16_000 and len(audio) > 0

    fake = _Stdout()
    monkeypatch.setattr("sys.stdout", fake)
    assert cli_main(["speak", "To standard output.", "--stream", "-o", "-", *TINY]) == 0
    data = fake.buffer.getvalue()
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt " and struct.unpack("<I", data[24:28])[0] == 16_000
    assert len(data) > 44 and (len(data) - 44) % 2 == 0


# ---------------------------------------------------------------------------------------------
# Shipped weights


def test_shipped_weights_speak_speech_length_audio_that_is_not_silence():
    if not (REPO / "weights" / "lm-ar").is_dir() or not (REPO / "weights" / "lm-nar").is_dir():
        pytest.skip("weights/lm-ar and weights/lm-nar are not shipped yet (trained LM weights come later)")
    import tts
    from tts.synthesizer import sound_frames

    torch.manual_seed(0)
    synth = tts.load()
    text = "The weather was fine, and the children played in the garden until dark."
    result = synth.run(text, voice="kathleen", seed=0)
    # 13 words: real speech takes about 3-6 s
    assert 1.5 <= result.seconds <= 10.0, result.seconds
    assert result.failures == 0, [c.failure for c in result.chunks]
    active = sound_frames(result.audio, result.sample_rate)
    assert active.mean() > 0.5
    rms = 10 * np.log10(np.mean(result.audio**2) + 1e-12)
    assert rms > -45.0


def test_sampling_comes_from_the_ar_weights_with_overrides_on_top():
    import codec as codec_package
    from tokenlm.sampling import SamplingConfig
    from tts.synthesizer import SynthesisConfig, Synthesizer, tiny_models

    ar, nar, vocab = tiny_models()
    ar.info = {"sampling": {"temperature": 0.5, "text_guidance": 3.0}}
    codec = codec_package.load("tiny-16k")
    assert Synthesizer(ar, nar, codec, vocab).sampling.text_guidance == 3.0
    tuned = Synthesizer(ar, nar, codec, vocab, SynthesisConfig(sampling={"temperature": 0.8}))
    assert (tuned.sampling.temperature, tuned.sampling.text_guidance) == (0.8, 3.0)
    exact = SamplingConfig(temperature=1.0)
    assert Synthesizer(ar, nar, codec, vocab, SynthesisConfig(sampling=exact)).sampling is exact
    with pytest.raises(TTSError, match="temperature"):
        Synthesizer(ar, nar, codec, vocab, SynthesisConfig(sampling={"temperature": -1.0}))
    with pytest.raises(TTSError, match="sampling must be"):
        SynthesisConfig(sampling="hot")


def test_length_guards_follow_the_prompt_pace():
    from tokenlm.sampling import SamplingConfig
    from tts.synthesizer import TYPICAL_FRAMES_PER_PHONEME, Prompt, SynthesisConfig, tiny_synthesizer

    def prompt(frames, phonemes, source="given", pause_frames=0):
        sound = np.random.default_rng(0).standard_normal(frames * 320).astype(np.float32) * 0.1
        wav = np.concatenate([sound[: len(sound) // 2], np.zeros(pause_frames * 320, np.float32), sound[len(sound) // 2 :]])
        return Prompt("p", wav, torch.zeros(4, frames + pause_frames, dtype=torch.long), "x",
                      source, torch.ones(phonemes, dtype=torch.long))

    synth = tiny_synthesizer()
    paced = synth.paced_sampling(prompt(200, 50))  # 4 frames per phoneme
    assert paced.min_frames_per_phoneme == pytest.approx(0.7 * 4)
    assert paced.max_frames_per_phoneme == pytest.approx(1.8 * 4)
    # a pause in the prompt does not make its speaker slower
    assert synth.paced_sampling(prompt(200, 50, pause_frames=100)) == paced
    fast = synth.paced_sampling(prompt(100, 100))  # 1 frame per phoneme: clamped to 2.5
    assert fast.min_frames_per_phoneme == pytest.approx(0.7 * 2.5)
    untranscribed = synth.paced_sampling(prompt(200, 0, source="none"))
    assert untranscribed.min_frames_per_phoneme == pytest.approx(0.7 * TYPICAL_FRAMES_PER_PHONEME)
    # explicit user limits stay when stricter, and the pair stays ordered
    strict = tiny_synthesizer(config=SynthesisConfig(sampling=SamplingConfig(min_frames_per_phoneme=9.0,
                                                                              max_frames_per_phoneme=12.0)))
    both = strict.paced_sampling(prompt(200, 50))
    assert both.min_frames_per_phoneme == 9.0 and both.max_frames_per_phoneme == 9.0
    off = tiny_synthesizer(config=SynthesisConfig(pace=None))
    assert off.paced_sampling(prompt(200, 50)) == off.sampling
    with pytest.raises(TTSError, match="pace"):
        SynthesisConfig(pace=(2.0, 1.0))


def test_a_paced_ar_takes_the_prompt_pace_with_its_long_pauses_capped():
    from lm_helpers import tiny_config

    import codec as codec_package
    from tokenlm.ar import ARModel
    from tts.synthesizer import PAUSE_ALLOWANCE, Prompt, Synthesizer, tiny_models

    _, nar, vocab = tiny_models()
    ar = ARModel(tiny_config(n_phonemes=len(vocab), codebook_size=1024, n_codebooks=4, text_pace=4.0,
                                max_frames=600, max_phonemes=256)).eval()
    synth = Synthesizer(ar, nar, codec_package.load("tiny-16k"), vocab)

    def prompt(sound_frames, pause_frames, phonemes):
        sound = np.random.default_rng(0).standard_normal(sound_frames * 320).astype(np.float32) * 0.1
        wav = np.concatenate([sound[: len(sound) // 2], np.zeros(pause_frames * 320, np.float32), sound[len(sound) // 2 :]])
        return Prompt("p", wav, torch.zeros(4, sound_frames + pause_frames, dtype=torch.long), "x", "given",
                      torch.ones(phonemes, dtype=torch.long))

    assert synth.text_pace(prompt(200, 0, 50)) == pytest.approx(4.0)  # no pause: frames / phonemes
    assert synth.text_pace(prompt(200, 20, 50)) == pytest.approx(220 / 50)  # a short pause counts
    assert synth.text_pace(prompt(200, 150, 50)) == pytest.approx(PAUSE_ALLOWANCE * 200 / 50)  # a long one is capped
    audio = synth.synthesize("Hello there.", prompt=(prompt(150, 100, 20).wav, 16000), prompt_text="one two three")
    assert audio[0].size > 0


def test_nar_decoding_expected_vectors_or_argmax_codes():
    import dataclasses

    import codec as codec_package
    from tokenlm.sampling import SamplingConfig
    from tts.synthesizer import DECODE_CONTEXT, SynthesisConfig, Synthesizer, tiny_models

    ar, nar, vocab = tiny_models()
    codec = codec_package.load("tiny-16k")
    config = SynthesisConfig(sampling=SamplingConfig(max_frames_per_phoneme=2.0), retries=0, output_dbfs=None)
    expected = Synthesizer(ar, nar, codec, vocab, config)
    argmax = Synthesizer(ar, nar, codec, vocab, dataclasses.replace(config, nar_decoding="argmax"))
    assert (expected.nar_decoding, argmax.nar_decoding) == ("expected", "argmax")
    prompt = expected.prepare_prompt("kathleen")
    phonemes = [torch.cat([prompt.phonemes, expected._ids("Say this.")])]
    first = [torch.randint(0, codec.codebook_size, (30,), generator=torch.Generator().manual_seed(0))]
    (codes, vectors), = expected.fill(prompt, phonemes, first)
    (same_codes, none), = argmax.fill(prompt, phonemes, first)
    assert torch.equal(codes, same_codes) and none is None and vectors.shape == (30, codec.config.latent_dim)
    # argmax rendering is the codec decoding the prompt's last frames then the codes, context cut off
    both = torch.cat([prompt.codes[:, -DECODE_CONTEXT:], codes], dim=1)[None]
    full = codec.decode(both).numpy().reshape(-1)[DECODE_CONTEXT * expected.hop:]
    assert np.array_equal(argmax.render(codes, None, prompt), full)
    # expected vectors go through the same decoder, with the prompt's code vectors as context
    soft = expected.render(codes, vectors, prompt)
    assert soft.shape == full.shape and np.isfinite(soft).all() and not np.allclose(soft, full, atol=1e-4)
    assert np.array_equal(expected.render(codes, vectors, length=100), expected.render(codes, vectors)[:100])
    # the synthesizers share the AR's codes (same seed) and differ in the decoder input only
    a, b = expected.run("Say this.", seed=3), argmax.run("Say this.", seed=3)
    assert a.chunks[0].frames == b.chunks[0].frames and not np.array_equal(a.audio, b.audio)
    for bad in ({"nar_decoding": "soft"}, {"nar_temperature": 0.0}, {"nar_temperature": float("nan")}):
        with pytest.raises(TTSError, match="nar_"):
            SynthesisConfig(**bad)


def test_a_paced_nar_is_told_where_the_text_starts(tmp_path, monkeypatch):
    """Phonemes begin with the prompt's transcript when it has one (text from frame 0), else with
    the target's (text from the prompt's end): the paced NAR must be given that frame."""
    import dataclasses

    import codec as codec_package
    from tokenlm import generate
    from tokenlm.nar import NARModel
    from tokenlm.sampling import SamplingConfig
    from tts.synthesizer import SynthesisConfig, Synthesizer, tiny_models

    ar, nar, vocab = tiny_models()
    paced = NARModel(dataclasses.replace(nar.config, text_pace=3.0)).eval()
    paced.load_state_dict(nar.state_dict())
    config = SynthesisConfig(sampling=SamplingConfig(max_frames_per_phoneme=2.0), retries=0, no_transcript="acoustic")
    synth = Synthesizer(ar, paced, codec_package.load("tiny-16k"), vocab, config)
    seen = []
    real = generate._nar_passes
    monkeypatch.setattr(generate, "_nar_passes", lambda *a, **k: seen.append(k["text_starts"]) or real(*a, **k))
    path = tmp_path / "me.wav"
    sf.write(path, _speech_like(3.0, 16_000)[0], 16_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = synth.prepare_prompt(prompt=path)
        synth.synthesize("Speak.", prompt=path)
    synth.synthesize("Speak.", voice="kathleen")
    assert bare.transcript_source == "none"
    assert seen == [[bare.codes.shape[1]], [0]]


def test_a_codec_without_vector_decoding_falls_back_to_argmax_with_a_warning():
    import codec as codec_package
    from tts.synthesizer import Synthesizer, TTSWarning, tiny_models

    class CodesOnly:  # a codec that decodes codes only (as the transformers codecs do)
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            if name == "decode_vectors":
                raise AttributeError(name)
            return getattr(self._inner, name)

    ar, nar, vocab = tiny_models()
    with pytest.warns(TTSWarning, match="argmax"):
        synth = Synthesizer(ar, nar, CodesOnly(codec_package.load("tiny-16k")), vocab)
    assert synth.nar_decoding == "argmax"


@pytest.mark.parametrize("score", ["text", "likelihood"])
def test_candidates_keep_the_sample_the_ar_scores_best(score):
    from tokenlm.generate import generate_ar
    from tokenlm.sampling import SamplingConfig
    from tts.synthesizer import SynthesisConfig, tiny_synthesizer

    sampling = SamplingConfig(temperature=1.5, top_k=20, text_guidance=2.0, min_frames_per_phoneme=0.0,
                              max_frames_per_phoneme=2.0)
    synth = tiny_synthesizer(config=SynthesisConfig(sampling=sampling, candidates=3, candidate_score=score, pace=None))
    targets = [synth._ids("Say this."), synth._ids("And that one, too.")]
    rows = [t for t in targets for _ in range(3)]
    # the same batch generate_ar would draw for three copies of each row, and what the AR thinks of them
    drawn, scores = generate_ar(synth.ar, rows, [torch.zeros(0, dtype=torch.long)] * 6, sampling, seed=4,
                                max_frames=40, return_scores=True)
    assert len({tuple(d.tolist()) for d in drawn[:3]}) > 1  # the candidates differ
    values = scores.text_information() if score == "text" else scores.mean_log_prob()
    chosen = synth._sample_first_layer(targets, torch.zeros(0, dtype=torch.long), [len(t) for t in targets],
                                       sampling, 4, 40, None)
    for i in range(2):
        best = int(values[3 * i : 3 * i + 3].argmax())
        assert chosen[i].tolist() == drawn[3 * i + best].tolist()
    # one candidate is the plain sample; and the end-to-end path runs with several
    single = tiny_synthesizer(config=SynthesisConfig(sampling=sampling, pace=None))
    assert [c.tolist() for c in single._sample_first_layer(targets, torch.zeros(0, dtype=torch.long),
                                                           [len(t) for t in targets], sampling, 4, 40, None)] == [
        d.tolist() for d in generate_ar(single.ar, targets, [torch.zeros(0, dtype=torch.long)] * 2, sampling, seed=4,
                                        max_frames=40)]
    result = synth.run("Say this. And that one, too.", seed=1)
    assert result.audio.size > 0 and np.isfinite(result.audio).all()
    for bad in ({"candidates": 0}, {"candidates": 2.5}, {"candidate_score": "wer"}):
        with pytest.raises(TTSError, match="candidate"):
            SynthesisConfig(**bad)
