"""Codec training on a tiny model: the loss goes down, checkpoints resume, a corrupted checkpoint
falls back to the previous one, the export loads as a codec and TensorBoard gets the logged
scalars; the same with adversarial training (a small discriminator), including resuming a
checkpoint that has no discriminator. Two-process (DDP) training: tests/test_train_ddp.py, and
here with adversarial training (this file is then torchrun's driver: ``python
tests/test_train.py MANIFEST OUT``)."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import codec
from codec.config import tiny
from codec.data import AudioCorpus, read_manifest, select_split, step_rng
from codec.errors import TokenwaveError
from codec.files import decode_bytes, encode_audio
from codec.model import CodecModel
from codec.train import (
    TrainConfig,
    _summary_writer,
    discriminator_view,
    draw_batch,
    load_initial,
    lr_at,
    train_codec,
)


def make_manifest(folder, files=6):
    rows = []
    rng = np.random.default_rng(0)
    for i in range(files):
        t = np.arange(16_000) / 16_000
        f0 = 100 + 20 * i
        wav = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8)) * 0.1 + 0.005 * rng.standard_normal(len(t))
        sf.write(folder / f"utt{i}.wav", wav.astype(np.float32), 16_000)
        rows.append({"audio": f"utt{i}.wav", "text": f"utterance {i}", "speaker": "spk", "duration": 1.0,
                     "sample_rate": 16_000})
    rows.append({"audio": "music.wav", "text": "", "speaker": "music", "duration": 1.0, "sample_rate": 16_000})
    sf.write(folder / "music.wav", np.zeros(16_000, dtype=np.float32), 16_000)
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "manifest.jsonl"


def config(tmp_path, manifest, steps):
    codec_config = tiny().to_dict() | {"codebook_size": 64, "num_codebooks": 4}
    return TrainConfig(manifests=[str(manifest)], out_dir=str(tmp_path / "run"), steps=steps, batch_size=4,
                       crop_seconds=0.5, lr=3e-3, warmup_steps=5, checkpoint_every=10, eval_every=10,
                       threads=1, resume=True, codec=codec_config)


def losses(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]


def test_split_keeps_dev_and_non_speech_out_of_training(tmp_path):
    recordings = read_manifest(make_manifest(tmp_path))
    train, dev = select_split(recordings, "train"), select_split(recordings, "dev")
    assert [r.path.name for r in dev] == ["utt0.wav"]
    assert {r.path.name for r in train} == {f"utt{i}.wav" for i in range(1, 6)}
    assert select_split(recordings, "other")[0].path.name == "music.wav"


def test_warmup_then_cosine():
    cfg = TrainConfig(manifests=[], out_dir="", steps=100, lr=1.0, warmup_steps=10)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert lr_at(99, cfg) < 0.2 and lr_at(50, cfg) < 1.0


def test_training_learns_resumes_and_exports(tmp_path):
    manifest = make_manifest(tmp_path)
    train_codec(config(tmp_path, manifest, steps=20))
    log = losses(tmp_path)
    assert log[-1]["step"] == 20
    assert log[-1]["loss"] < log[0]["loss"]  # the optimizer steps
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    assert [p.name for p in checkpoints] == ["step_0000010.pt", "step_0000020.pt"]

    # Resume with the newest checkpoint corrupted: falls back to step 10 and redoes 11..20 exactly.
    checkpoints[-1].write_bytes(b"torn")
    train_codec(config(tmp_path, manifest, steps=20))
    log = losses(tmp_path)
    assert [r["step"] for r in log] == [10, 20, 20]
    assert abs(log[1]["loss"] - log[2]["loss"]) < 1e-4 * abs(log[1]["loss"])  # same data, same randomness
    if (tmp_path / "run" / "tensorboard").exists():  # TensorBoard hides the steps the resumed run redid
        assert tensorboard_scalars(tmp_path / "run" / "tensorboard")["train/loss"] == [10, 20]

    model = codec.load(str(tmp_path / "run" / "export"))
    assert model.max_codebooks == 4 and model.codebook_size == 64
    assert model.code_counts.sum() > 64 * 4  # entropy tables counted on training data
    wav = torch.from_numpy(sf.read(tmp_path / "utt1.wav", dtype="float32")[0])
    assert model.decode(model.encode(wav, 16_000), length=len(wav)).shape[-1] == len(wav)


def tensorboard_scalars(folder) -> dict[str, list[int]]:
    """The steps of each scalar tag logged under ``folder`` (purged steps left out)."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_time_limit_stops_with_a_checkpoint_and_export_then_resume_continues(tmp_path, capsys):
    manifest = make_manifest(tmp_path)
    limited = dataclasses.replace(config(tmp_path, manifest, steps=30), checkpoint_every=25, time_limit_minutes=0)
    export = train_codec(limited)
    assert "time limit of 0 min reached after step 10" in capsys.readouterr().out
    assert [p.name for p in sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))] == ["step_0000010.pt"]
    assert json.loads((export / "config.json").read_text())["training"]["steps"] == 10
    train_codec(dataclasses.replace(limited, time_limit_minutes=None))
    assert [r["step"] for r in losses(tmp_path)] == [10, 20, 30]
    with pytest.raises(TokenwaveError, match="--time-limit"):
        train_codec(dataclasses.replace(limited, time_limit_minutes=-1.0, out_dir=str(tmp_path / "other")))


def test_noise_is_mixed_at_the_drawn_snr_and_repeats_with_the_step(tmp_path):
    from codec.data import mix_noise

    rng = np.random.default_rng(0)
    noise_folder = tmp_path / "noise"
    noise_folder.mkdir()
    sf.write(noise_folder / "hum.wav", (0.1 * rng.standard_normal(16_000)).astype(np.float32), 16_000)
    noise = AudioCorpus(read_manifest(noise_folder), 16_000, progress=False)
    speech = (0.05 * np.sin(np.arange(4 * 800) * 0.05)).astype(np.float32).reshape(4, 1, 800)
    mixed = mix_noise(speech, noise, np.random.default_rng(1), 1.0, (10.0, 10.0))
    for item, clean in zip(mixed, speech, strict=True):
        added = item[0] - clean[0]
        snr = 20 * np.log10(np.sqrt(np.mean(clean[0] ** 2)) / np.sqrt(np.mean(added**2)))
        assert abs(snr - 10.0) < 0.1
    assert np.array_equal(mix_noise(speech, noise, np.random.default_rng(1), 1.0, (10.0, 10.0)), mixed)
    assert np.array_equal(mix_noise(speech, noise, np.random.default_rng(1), 0.0, (10.0, 10.0)), speech)
    some = mix_noise(np.repeat(speech, 25, axis=0), noise, np.random.default_rng(2), 0.5, (5.0, 30.0))
    changed = int((np.abs(some - np.repeat(speech, 25, axis=0)).max(axis=(1, 2)) > 0).sum())
    assert 30 < changed < 70  # about half of 100 items

    corpus = AudioCorpus(select_split(read_manifest(make_manifest(tmp_path)), "train"), 16_000, progress=False)
    first = draw_batch(corpus, 0, 7, 4, 800, noise=noise, noise_probability=1.0)
    assert np.array_equal(first, draw_batch(corpus, 0, 7, 4, 800, noise=noise, noise_probability=1.0))
    assert not np.array_equal(first, draw_batch(corpus, 0, 7, 4, 800))
    halves = [draw_batch(corpus, 0, 7, 4, 800, rank=r, world_size=2, noise=noise, noise_probability=1.0) for r in (0, 1)]
    assert np.array_equal(np.concatenate(halves), first)  # the same mixtures whatever the number of processes


def test_training_with_background_noise_records_it(tmp_path):
    manifest = make_manifest(tmp_path)
    rng = np.random.default_rng(3)
    sf.write(tmp_path / "music.wav", (0.1 * rng.standard_normal(16_000)).astype(np.float32), 16_000)
    noisy = dataclasses.replace(config(tmp_path, manifest, steps=10), noise_probability=0.5, noise_snr_db=(5.0, 20.0))
    export = train_codec(noisy)
    training = json.loads((export / "config.json").read_text())["training"]
    assert training["noise"] == {"probability": 0.5, "snr_db": [5.0, 20.0]}
    for bad, match in (({"noise_probability": 1.5}, "--noise-probability"), ({"noise_snr_db": (20.0, 5.0)}, "--noise-snr")):
        with pytest.raises(TokenwaveError, match=match):
            train_codec(dataclasses.replace(noisy, out_dir=str(tmp_path / "bad"), **bad))
    speech_only = tmp_path / "speech_only.jsonl"
    speech_only.write_text("".join(line + "\n" for line in manifest.read_text().splitlines() if '"music"' not in line))
    with pytest.raises(TokenwaveError, match="non-speech recordings"):
        train_codec(dataclasses.replace(noisy, manifests=[str(speech_only)], out_dir=str(tmp_path / "none")))


def test_tensorboard_gets_the_logged_scalars(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    manifest = make_manifest(tmp_path)
    train_codec(config(tmp_path, manifest, steps=10))
    scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    logged = {key for key in losses(tmp_path)[0] if key != "step"}
    assert {"loss", "mel", "commitment", "lr", "grad_norm", "steps_per_s", "dev_loss_3cb"} <= logged
    assert set(scalars) == {f"dev/{k[4:]}" if k.startswith("dev_") else f"train/{k}" for k in logged}
    assert scalars["train/loss"] == [10] and scalars["dev/loss_3cb"] == [10]


def test_without_tensorboard_one_note_and_no_writer(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    assert _summary_writer(tmp_path / "tensorboard", 0) is None
    assert capsys.readouterr().err.count("tensorboard is not installed") == 1
    assert not (tmp_path / "tensorboard").exists()


def test_each_rank_draws_its_slice_of_the_global_batch(tmp_path):
    corpus = AudioCorpus(select_split(read_manifest(make_manifest(tmp_path)), "train"), 16_000, progress=False)
    whole = corpus.batch(step_rng(0, 7), 4, 800)
    assert np.array_equal(draw_batch(corpus, 0, 7, 4, 800), whole)  # one process: the batch of (seed, step)
    parts = [draw_batch(corpus, 0, 7, 4, 800, rank=r, world_size=2) for r in (0, 1)]
    assert parts[0].shape == (2, 1, 800) and np.array_equal(np.concatenate(parts), whole)
    with pytest.raises(TokenwaveError, match="not divisible"):
        draw_batch(corpus, 0, 7, 4, 800, rank=0, world_size=3)


SMALL_DISCRIMINATOR = {"n_ffts": (512, 256), "channels": 4}  # cheap; the default is EnCodec's 2048/1024/512 x 32


def adversarial_config(tmp_path, manifest, steps, **changes):
    changes = {"adversarial": True, "adversarial_start": 5, "discriminator": SMALL_DISCRIMINATOR} | changes
    return dataclasses.replace(config(tmp_path, manifest, steps), **changes)


def test_adversarial_training_logs_checkpoints_and_resumes_exactly(tmp_path):
    manifest = make_manifest(tmp_path)
    train_codec(adversarial_config(tmp_path, manifest, steps=20))
    log = losses(tmp_path)
    assert [r["step"] for r in log] == [10, 20]
    for record in log:
        assert record["d_loss"] > 0 and record["g_adv"] > 0 and record["g_fm"] > 0
        spectral = record["log_magnitude"] + record["convergence"] + record["mel"]
        assert record["loss"] > spectral + record["commitment"]  # the adversarial terms are in the generator's loss
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))
    first = torch.load(checkpoints[0], map_location="cpu", weights_only=True)
    assert any(k.startswith("scales.") for k in first["discriminator"])
    optimizer_steps = {float(v["step"]) for v in first["discriminator_optimizer"]["state"].values()}
    assert optimizer_steps == {5.0}  # adversarial_start=5: the discriminator trained on steps 5..9 of 0..9
    assert tuple(first["discriminator_optimizer"]["param_groups"][0]["betas"]) == (0.5, 0.9)

    # Resume with the newest checkpoint corrupted: the discriminator and its optimizer come back
    # from step 10 and steps 11..20 repeat exactly.
    checkpoints[-1].write_bytes(b"torn")
    train_codec(adversarial_config(tmp_path, manifest, steps=20))
    log = losses(tmp_path)
    assert [r["step"] for r in log] == [10, 20, 20]
    for key in ("loss", "d_loss", "g_adv", "g_fm"):
        assert abs(log[1][key] - log[2][key]) < 1e-4 * abs(log[1][key]), key
    if (tmp_path / "run" / "tensorboard").exists():
        scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
        assert scalars["train/d_loss"] == scalars["train/g_adv"] == scalars["train/g_fm"] == [10, 20]

    # The export is the codec alone.
    from safetensors.torch import load_file

    (weights,) = (tmp_path / "run" / "export").glob("*.safetensors")
    model = codec.load(str(tmp_path / "run" / "export"))
    assert set(load_file(weights)) == set(model.state_dict()) and model.max_codebooks == 4


def test_discriminator_view_is_one_window_of_the_first_items_for_real_and_fake():
    wav = torch.arange(6 * 100, dtype=torch.float32).reshape(6, 1, 100)
    recon = -wav
    torch.manual_seed(3)
    real, fake = discriminator_view(wav, recon, 2, 40)
    assert real.shape == fake.shape == (2, 1, 40)
    start = int(real[0, 0, 0])
    assert torch.equal(real, wav[:2, :, start : start + 40]) and torch.equal(fake, -real)  # the same window
    torch.manual_seed(3)
    assert torch.equal(discriminator_view(wav, recon, 2, 40)[0], real)  # reseeded per step: resumes draw the same
    starts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        starts.add(int(discriminator_view(wav, recon, None, 40)[0][0, 0, 0]))
    assert len(starts) > 5 and all(0 <= s <= 60 for s in starts)
    whole, _ = discriminator_view(wav, recon, None, 100)
    assert torch.equal(whole, wav)  # defaults: the whole batch


def test_adversarial_training_on_a_smaller_view_logs_resumes_exactly_and_records_it(tmp_path):
    manifest = make_manifest(tmp_path)
    view = {"discriminator_items": 2, "discriminator_crop_seconds": 0.25, "adversarial_start": 0,
            "discriminator_lr_scale": 3.0}
    train_codec(adversarial_config(tmp_path, manifest, steps=20, **view))
    log = losses(tmp_path)
    assert all(r["d_loss"] > 0 and r["g_fm"] > 0 for r in log)
    (tmp_path / "run" / "checkpoints" / "step_0000020.pt").write_bytes(b"torn")
    train_codec(adversarial_config(tmp_path, manifest, steps=20, **view))
    again = losses(tmp_path)
    for key in ("loss", "d_loss", "g_adv", "g_fm"):  # the same windows after the resume
        assert abs(log[1][key] - again[2][key]) < 1e-4 * abs(log[1][key]), key
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "step_0000020.pt", map_location="cpu", weights_only=True)
    codec_lr = checkpoint["optimizer"]["param_groups"][0]["lr"]
    assert checkpoint["discriminator_optimizer"]["param_groups"][0]["lr"] == pytest.approx(3.0 * codec_lr)
    training = json.loads((tmp_path / "run" / "export" / "config.json").read_text())["training"]
    assert training["adversarial"]["items"] == 2 and training["adversarial"]["crop_seconds"] == 0.25
    assert training["adversarial"]["lr_scale"] == 3.0
    assert training["adversarial"]["discriminator"]["channels"] == SMALL_DISCRIMINATOR["channels"]

    with pytest.raises(TokenwaveError, match="at least 512 samples"):  # the largest FFT no longer fits
        train_codec(adversarial_config(tmp_path, manifest, steps=2, discriminator_crop_seconds=0.02,
                                       out_dir=str(tmp_path / "small")))
    with pytest.raises(TokenwaveError, match="--disc-lr-scale"):
        train_codec(adversarial_config(tmp_path, manifest, steps=2, discriminator_lr_scale=0.0,
                                       out_dir=str(tmp_path / "lr")))
    with pytest.raises(TokenwaveError, match="--disc-items"):
        train_codec(adversarial_config(tmp_path, manifest, steps=2, discriminator_items=0,
                                       out_dir=str(tmp_path / "none")))


def test_adversarial_resume_of_a_checkpoint_without_discriminator(tmp_path, capsys):
    manifest = make_manifest(tmp_path)
    train_codec(config(tmp_path, manifest, steps=10))  # reconstruction only: no discriminator state
    assert "discriminator" not in torch.load(tmp_path / "run" / "checkpoints" / "step_0000010.pt", weights_only=True)
    capsys.readouterr()
    train_codec(adversarial_config(tmp_path, manifest, steps=20, adversarial_start=10))
    captured = capsys.readouterr()
    assert "has no discriminator: starting a fresh one" in captured.out + captured.err
    log = losses(tmp_path)
    assert [r["step"] for r in log] == [10, 20] and "d_loss" not in log[0] and log[1]["d_loss"] > 0
    assert "discriminator" in torch.load(tmp_path / "run" / "checkpoints" / "step_0000020.pt", weights_only=True)

    # Resuming that checkpoint without --adversarial: the discriminator is dropped, with a note.
    train_codec(config(tmp_path, manifest, steps=20))
    captured = capsys.readouterr()
    assert "discriminator is not used without --adversarial" in captured.out + captured.err


def test_adversarial_training_with_two_cpu_processes(tmp_path):
    """DDP averages the discriminator's gradients too: both ranks end with the same discriminator."""
    from test_train_ddp import _free_port

    manifest, out = make_manifest(tmp_path), tmp_path / "run"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(manifest), str(out)]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    digests = [(out / f"discriminator{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    checkpoint = torch.load(out / "checkpoints" / "step_0000010.pt", map_location="cpu", weights_only=True)
    assert _digest(checkpoint["discriminator"]) == digests[0]  # no "module." prefix, the ranks' weights
    assert losses(tmp_path)[0]["d_loss"] > 0


def _digest(state_dict: dict) -> str:
    return hashlib.sha256(b"".join(name.encode() + tensor.numpy().tobytes()
                                   for name, tensor in sorted(state_dict.items()))).hexdigest()


def _adversarial_driver(manifest: str, out: str) -> None:
    import codec.train

    discriminators = []

    class RecordedDiscriminator(codec.train.MultiScaleSTFTDiscriminator):  # keeps a handle on this rank's
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            discriminators.append(self)

    codec.train.MultiScaleSTFTDiscriminator = RecordedDiscriminator
    cfg = adversarial_config(Path(out).parent, manifest, steps=10, adversarial_start=3, device="cpu")
    codec.train.train_codec(cfg)
    Path(out, f"discriminator{os.environ['RANK']}.txt").write_text(_digest(discriminators[-1].state_dict()))


if __name__ == "__main__":
    _adversarial_driver(sys.argv[1], sys.argv[2])


def test_decoder_only_run_keeps_the_token_space(tmp_path):
    manifest = make_manifest(tmp_path)
    train_codec(config(tmp_path, manifest, steps=10))
    first = tmp_path / "run" / "export"
    tuned = dataclasses.replace(config(tmp_path, manifest, steps=10), out_dir=str(tmp_path / "tuned"),
                                init=str(first), decoder_only=True, complex_loss_weight=1.0)
    train_codec(tuned)
    before, after = codec.load(str(first)), codec.load(str(tmp_path / "tuned" / "export"))
    old, new = before.state_dict(), after.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("decoder."))  # codebooks, tables too
    assert any(not torch.equal(old[k], new[k]) for k in old if k.startswith("decoder."))
    assert after.fingerprint == before.fingerprint
    training = json.loads((tmp_path / "tuned" / "export" / "config.json").read_text())["training"]
    assert training == {"steps": 10, "init": str(first), "decoder_only": True, "complex_loss_weight": 1.0}
    log = [json.loads(line) for line in (tmp_path / "tuned" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["complex"] > 0

    # Token files written with the first model decode with the tuned one.
    wav, rate = sf.read(tmp_path / "utt1.wav", dtype="float32")
    audio, rate = decode_bytes(after, encode_audio(before, wav, rate, bitrate=None))
    assert rate == 16_000 and audio.shape[-1] == len(wav)

    # The run cannot be resumed as a full training run (its optimizer holds the decoder alone).
    with pytest.raises(TokenwaveError, match="--decoder-only"):
        train_codec(dataclasses.replace(tuned, steps=20, decoder_only=False))


def test_grown_decoder_starts_as_the_initial_model_and_keeps_the_token_space(tmp_path):
    manifest = make_manifest(tmp_path)
    train_codec(config(tmp_path, manifest, steps=4))
    first = tmp_path / "run" / "export"
    initial = codec.load(str(first))
    layers = initial.config.decoder_layers
    grown = CodecModel(dataclasses.replace(initial.config, decoder_layers=layers + 2))
    load_initial(grown, initial)
    grown.prepare_for_inference()
    codes = initial.encode(torch.randn(1, 8_000) * 0.1, 16_000)
    assert torch.equal(grown.decode(codes), initial.decode(codes))  # new blocks: identities
    assert all(not block.gamma.detach().any() for block in grown.decoder.stack.blocks[layers:])

    run = dataclasses.replace(config(tmp_path, manifest, steps=4), out_dir=str(tmp_path / "grown"), init=str(first),
                              decoder_only=True, grow_decoder=layers + 2)
    after = codec.load(str(train_codec(run)))
    assert after.config.decoder_layers == layers + 2 and after.fingerprint == initial.fingerprint
    assert all(block.gamma.detach().any() for block in after.decoder.stack.blocks[layers:])  # they train
    training = json.loads((tmp_path / "grown" / "export" / "config.json").read_text())["training"]
    assert training["grow_decoder"] == layers + 2

    with pytest.raises(TokenwaveError, match="already has"):
        load_initial(CodecModel(dataclasses.replace(initial.config, decoder_layers=layers - 1)), initial)
    with pytest.raises(TokenwaveError, match="needs --init"):
        train_codec(dataclasses.replace(run, init=None, out_dir=str(tmp_path / "other")))


def test_init_must_be_a_tokenwave_codec(tmp_path):
    manifest = make_manifest(tmp_path)
    with pytest.raises(TokenwaveError):
        train_codec(dataclasses.replace(config(tmp_path, manifest, steps=2), init=str(tmp_path / "missing")))
