"""The voice decoder (tts.decoder_tuning): NAR examples, aligned windows, tuning, overlay files, use in synthesis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tts.errors import TTSError


@pytest.fixture(scope="module")
def synth():
    from tokenlm.sampling import SamplingConfig
    from tts.synthesizer import SynthesisConfig, tiny_synthesizer

    config = SynthesisConfig(sampling=SamplingConfig(max_frames_per_phoneme=2.0), retries=0, voice_decoder=None)
    return tiny_synthesizer(config=config)


def make_manifest(folder, files=6):
    """Kathleen-labelled one-second harmonic tones (the speaker of a built-in voice), a digit speaker without one."""
    rows = []
    for i in range(files):
        t = np.arange(16_000) / 16_000
        wav = sum(np.sin(2 * np.pi * k * (110 + 15 * i) * t) / k for k in range(1, 6)) * 0.1
        sf.write(folder / f"k{i}.wav", wav.astype(np.float32), 16_000)
        rows.append({"audio": f"k{i}.wav", "text": f"this is take {i}", "speaker": "kathleen"})
    sf.write(folder / "d.wav", np.zeros(8000, np.float32), 8000)
    rows.append({"audio": "d.wav", "text": "zero", "speaker": "digits"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "manifest.jsonl"


def test_windows_decode_like_the_whole_recording(synth):
    from tts.decoder_tuning import CONTEXT, decode_windows, draw_windows

    codec = synth.codec
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(3 * 16_000)).astype(np.float32)
    codes = codec.encode(torch.from_numpy(wav), 16_000)
    vectors = codec.code_vectors(codes)[0].float()
    frames = vectors.shape[0]
    examples = [(vectors.half(), np.arange(frames * codec.hop, dtype=np.float32))]
    # each window's target is the recording's samples under its frames
    inputs, targets = draw_windows(examples, 20, 5, torch.Generator().manual_seed(1), codec.overlap)
    span = (20 - codec.overlap + 1) * codec.hop
    assert inputs.shape == (5, CONTEXT + 20, vectors.shape[1]) and targets.shape == (5, 1, span)
    for x, y in zip(inputs, targets):
        start = int(y[0, 0]) // codec.hop
        assert torch.equal(y[0], torch.arange(start * codec.hop, start * codec.hop + span, dtype=torch.float32))
        lead = min(start, CONTEXT)
        assert torch.equal(x[CONTEXT - lead :], vectors.half()[start - lead : start + 20].float())
        assert not x[: CONTEXT - lead].any()  # zero padding before the recording's start
    # the decoded window is the whole decode's samples (the decoder is causal; CONTEXT frames warm it up)
    whole = codec.decode_vectors(vectors[None].half().float())[0, 0]
    start = 30
    with torch.no_grad():
        part = decode_windows(codec, vectors[None, start - CONTEXT : start + 20].half().float(), 20)[0, 0]
    reference = whole[start * codec.hop : start * codec.hop + span]
    assert part.shape == reference.shape
    assert float((part - reference).abs().max()) < 0.05 * float(reference.abs().max()) + 1e-6
    with pytest.raises(TTSError, match="window"):
        draw_windows(examples, frames + 1, 1, torch.Generator())


def test_tuning_writes_an_overlay_that_only_changes_the_tuned_tensors(synth, tmp_path):
    from tts.decoder_tuning import TuneConfig, load_examples, load_voice_decoder, tune, tuned_names

    manifest = make_manifest(tmp_path)
    config = TuneConfig(manifest=str(manifest), out=str(tmp_path / "run"), blocks=1, steps=4, batch_size=2,
                        window_seconds=0.3, lr=1e-3, warmup_steps=1, checkpoint_every=2)
    export = tune(config, synth, progress=False)
    saved = json.loads((export / "config.json").read_text())
    assert saved["codec_fingerprint"] == synth.codec.fingerprint and saved["blocks"] == 1
    assert saved["training"]["speakers"] == ["kathleen"] and saved["training"]["steps_done"] == 4
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 2, 4] and all(np.isfinite(r["dev_loss"]) for r in log)
    # the examples: the NAR's vectors under each recording's real first layer, with its samples
    examples = load_examples(tmp_path / "run" / "examples.safetensors", synth.hop, synth.codec.config.latent_dim)
    assert len(examples) == 5  # the digit speaker has no built-in voice; one kathleen file is cut by the hop
    assert all(v.shape[0] * synth.hop == w.shape[0] for v, w in examples)
    # the overlay: proj_in and block 0 changed, everything else the codec's own
    tuned = load_voice_decoder(synth.codec, export)
    names = set(tuned_names(synth.codec, 1))
    assert names and all(n.startswith(("decoder.proj_in.", "decoder.stack.blocks.0.")) for n in names)
    plain, new = synth.codec.state_dict(), tuned.state_dict()
    changed = {n for n in plain if not torch.equal(plain[n].float(), new[n].float())}
    assert changed and changed <= names
    # a second run on the same folder reads the cached examples
    config.steps = 2
    tune(config, synth, progress=False)


def test_overlay_refuses_another_codec_and_damaged_files(synth, tmp_path):
    import codec as codec_package
    from tts.decoder_tuning import load_voice_decoder, save_voice_decoder

    save_voice_decoder(synth.codec, 2, tmp_path / "vd", {"note": "test"})
    load_voice_decoder(synth.codec, tmp_path / "vd")
    other = codec_package.load("tiny-16k")
    with torch.no_grad():
        other.decoder.head.parameters().__next__().add_(1.0)  # a tensor the overlay does not replace
    with pytest.raises(TTSError, match="made for codec"):
        load_voice_decoder(other, tmp_path / "vd")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "vd" / "model.safetensors"))
    name = min(tensors)
    save_file({**tensors, name: torch.full_like(tensors[name], float("nan"))}, str(tmp_path / "vd" / "model.safetensors"))
    with pytest.raises(TTSError, match="do not fit"):
        load_voice_decoder(synth.codec, tmp_path / "vd")
    (tmp_path / "vd" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(TTSError, match="not a voice decoder"):
        load_voice_decoder(synth.codec, tmp_path / "vd")
    with pytest.raises(TTSError, match="not a voice decoder"):
        load_voice_decoder(synth.codec, tmp_path / "missing")


def test_synthesizer_renders_expected_vectors_with_the_voice_decoder(synth, tmp_path):
    import dataclasses

    from tts.decoder_tuning import save_voice_decoder
    from tts.synthesizer import Synthesizer

    tuned = dataclasses.replace(synth.config, voice_decoder=str(tmp_path / "vd"))
    changed = synth.codec.__class__(synth.codec.config)
    changed.load_state_dict(synth.codec.state_dict())
    with torch.no_grad():
        changed.decoder.proj_in.weight.mul_(1.5)
    save_voice_decoder(changed, 0, tmp_path / "vd", {})
    with_vd = Synthesizer(synth.ar, synth.nar, synth.codec, synth.vocab, tuned)
    assert synth.renderer is synth.codec and with_vd.renderer is not synth.codec
    codes = torch.randint(0, synth.codec.codebook_size, (4, 30), generator=torch.Generator().manual_seed(0))
    vectors = synth.codec.code_vectors(codes[None])[0]
    assert not np.allclose(with_vd.render(codes, vectors), synth.render(codes, vectors), atol=1e-5)
    assert np.array_equal(with_vd.render(codes, None), synth.render(codes, None))  # argmax codes: the codec's decoder
    # "auto" skips a voice decoder made for another codec
    auto = Synthesizer(synth.ar, synth.nar, synth.codec, synth.vocab, dataclasses.replace(synth.config,
                                                                                          voice_decoder="auto"))
    assert auto.renderer is synth.codec


def test_command_line_errors_are_one_line(tmp_path, capsys):
    from codec.cli import main as cli_main

    tiny = ["--ar", "tiny", "--nar", "tiny"]
    assert cli_main(["tune-voice-decoder", "--out", str(tmp_path / "r"), "--blocks", "-1"]) == 2
    assert "--blocks must be >= 0" in capsys.readouterr().err
    assert cli_main(["tune-voice-decoder", "--out", str(tmp_path / "r"), "--manifest", str(tmp_path / "no.jsonl")]) == 2
    assert "no such manifest" in capsys.readouterr().err
    assert cli_main(["speak", "Hi.", "-o", str(tmp_path / "a.wav"), "--voice-decoder", str(tmp_path / "none"), *tiny]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a voice decoder" in err and "Traceback" not in err
    assert cli_main(["speak", "Hi.", "-o", str(tmp_path / "b.wav"), "--voice-decoder", "none", *tiny]) == 0
    assert (tmp_path / "b.wav").stat().st_size > 0
