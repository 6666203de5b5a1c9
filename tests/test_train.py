"""Codec training on a tiny model: the loss goes down, checkpoints resume, a corrupted checkpoint
falls back to the previous one, the export loads as a codec and TensorBoard gets the logged
scalars. Two-process (DDP) training: tests/test_train_ddp.py."""

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

import codec
from codec.config import tiny
from codec.data import AudioCorpus, read_manifest, select_split, step_rng
from codec.errors import TokenwaveError
from codec.train import TrainConfig, _summary_writer, draw_batch, lr_at, train_codec


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
