"""Token LM training on tiny shards: bucketed batches with a frame budget, both stages train and
export, a resumed run (also from a corrupted newest checkpoint) ends with exactly the weights of
an uninterrupted one, and a run killed with SIGKILL after its first checkpoint and restarted with
``--resume`` reaches the same step with the same data and the same weights. Two processes (DDP):
tests/test_lm_train_ddp.py."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.errors import TokenwaveError
from tokenlm.data import LMCorpus, batch_digest, rank_slice, split_utterances, training_utterances
from tokenlm.errors import LMError
from tokenlm.train import TrainLMConfig, train_lm

CODEC_INFO = {"name": "tiny-16k", "fingerprint": "0123456789abcdef", "sample_rate": 16000, "frame_rate": 50.0,
              "num_codebooks": 4, "codebook_size": 64}
TINY_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.1}
REPO = Path(__file__).resolve().parent.parent


def make_utterances(count: int = 24, seed: int = 0, codebook_size: int = 64, K: int = 4):
    """Utterances with learnable codes (each layer counts up by its own stride) and random phonemes;
    every 8th is dev, every 6th has no text (music), one with text is too long (25 s)."""
    from tokenlm.shards import Utterance
    from tokenlm.text import default_vocab

    vocab = default_vocab()
    rng = np.random.default_rng(seed)
    utterances = []
    for i in range(count):
        frames = 1250 if i == 3 else int(rng.integers(20, 90))
        text = "" if i % 6 == 5 else f"utterance {i}"
        first = int(rng.integers(0, codebook_size))
        steps = np.arange(frames)[None, :] * np.arange(1, K + 1)[:, None]
        codes = ((first + steps) % codebook_size).astype(np.int16)
        phonemes = rng.integers(3, len(vocab), int(rng.integers(3, 12)) if text else 0).astype(np.int32)
        split = "dev" if i % 8 == 0 else ("train" if text else "other")
        utterances.append(Utterance(id=f"utt{i:03d}", speaker=f"spk{i % 3}", text=text, duration=frames / 50,
                                    split=split, codes=codes, phonemes=phonemes))
    return utterances, vocab


def make_shards(folder: Path, count: int = 24) -> Path:
    from tokenlm.shards import write_shard

    utterances, vocab = make_utterances(count)
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(folder / "shard_00000.safetensors", utterances[: count // 2], CODEC_INFO, vocab)
    write_shard(folder / "shard_00001.safetensors", utterances[count // 2 :], CODEC_INFO, vocab)
    return folder


def config(shards: Path, out: Path, stage: str, steps: int, **changes) -> TrainLMConfig:
    options = {"stage": stage, "shards": shards, "out_dir": str(out), "steps": steps, "batch_frames": 300,
               "lr": 3e-3, "warmup_steps": 3, "checkpoint_every": 5, "eval_every": 5, "log_every": 1, "threads": 1,
               "resume": True, "model": dict(TINY_MODEL)}
    return TrainLMConfig(**(options | changes))


def read_log(out: Path) -> list[dict]:
    records = []
    for line in (out / "log.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by kill -9
            pass
    return records


def final_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / f"step_{step:07d}.pt", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


# -- data -------------------------------------------------------------------------------------


def test_splits_cap_and_bucketed_batches_within_the_frame_budget():
    utterances, _ = make_utterances()
    groups = split_utterances(utterances)
    assert {u.id for u in groups["dev"]} == {f"utt{i:03d}" for i in range(0, 24, 8)}
    train = training_utterances(utterances)
    assert all(u.split != "dev" for u in train) and any(u.split == "other" for u in train)  # music: text-free only

    corpus = LMCorpus(train, frame_rate=50, max_seconds=20, n_buckets=4)
    assert corpus.skipped_long == 1 and "utt003" not in {u.id for u in corpus.utterances}  # 25 s with text
    assert corpus.lengths.max() <= 1000 and len(corpus.buckets) == 4
    assert corpus.frames < 2400  # too few frames for 4 buckets of two 300-frame batches each: fewer buckets
    assert len(LMCorpus(train, 50, 20, n_buckets=4, batch_frames=300).buckets) == corpus.frames // 600
    rows = corpus.step_batch(seed=0, step=7, batch_frames=300, text_free_prob=0.1)
    assert len(rows) >= 1 and len(rows) * max(r.codes.shape[1] for r in rows) <= 300
    assert batch_digest(rows) == batch_digest(corpus.step_batch(0, 7, 300, 0.1))  # (seed, step) decides
    assert any(batch_digest(corpus.step_batch(0, s, 300, 0.1)) != batch_digest(rows) for s in range(8, 12))
    # every row of a batch comes from one length bucket
    bucket_of = {int(i): b for b, bucket in enumerate(corpus.buckets) for i in bucket}
    index_of = {u.id: i for i, u in enumerate(corpus.utterances)}
    for step in range(20):
        assert len({bucket_of[index_of[r.id]] for r in corpus.step_batch(0, step, 300, 0.0)}) == 1

    # text-free: utterances without text always, the others with probability text_free_prob
    free = [r.text_free for step in range(200) for r in corpus.step_batch(0, step, 300, 0.0)]
    no_text = {u.id for u in corpus.utterances if len(u.phonemes) == 0}
    assert free and all(r.text_free == (r.id in no_text) for step in range(50) for r in corpus.step_batch(0, step, 300))
    rows = [r for step in range(200) for r in corpus.step_batch(0, step, 300, 0.5) if r.id not in no_text]
    assert 0.35 < np.mean([r.text_free for r in rows]) < 0.65
    assert all(r.text_free for r in corpus.step_batch(0, 3, 300, 1.0))

    # processes: at least one row each, slices that partition the global batch
    rows = corpus.step_batch(0, 5, 10, 0.0, min_rows=2)
    assert len(rows) >= 2
    parts = [rank_slice(rows, r, 2) for r in (0, 1)]
    assert all(parts) and sorted(r.id for p in parts for r in p) == sorted(r.id for r in rows)


def test_the_dev_batches_spread_over_the_corpus_order():
    utterances, _ = make_utterances(40)
    corpus = LMCorpus([u for u in utterances if u.text and u.id != "utt003"], frame_rate=50, max_seconds=20)
    everything = {row.id for rows in corpus.fixed_batches(10_000) for row in rows}
    assert everything == {u.id for u in corpus.utterances}
    chosen = [row.id for rows in corpus.fixed_batches(10_000, limit=4) for row in rows]
    positions = sorted(u.id for u in corpus.utterances).index
    spots = sorted(positions(i) for i in chosen)
    gaps = np.diff(spots)
    assert len(spots) == 4 and spots[0] == 0 and spots[-1] == len(corpus.utterances) - 1 and gaps.max() - gaps.min() <= 1


def test_text_free_utterances_longer_than_the_cap_are_cropped_to_a_random_window():
    from tokenlm.shards import Utterance

    codes = (np.arange(2000) % 64).astype(np.int16)[None].repeat(2, 0)
    long_music = Utterance(id="music", speaker="", text="", duration=40.0, split="other", codes=codes,
                           phonemes=np.zeros(0, np.int32))
    corpus = LMCorpus([long_music], frame_rate=50, max_seconds=10)
    assert corpus.skipped_long == 0 and corpus.lengths.tolist() == [500]
    starts = {corpus.step_batch(0, s, 1000)[0].start for s in range(10)}
    assert len(starts) > 1 and all(0 <= s <= 1500 for s in starts)
    row = corpus.step_batch(0, 0, 1000)[0]
    assert row.codes.shape == (2, 500) and np.array_equal(row.codes, codes[:, row.start : row.start + 500])


# -- training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["ar", "nar"])
def test_training_learns_exports_and_resumes_exactly(tmp_path, stage):
    from tokenlm.pretrained import load_lm

    shards = make_shards(tmp_path / "shards")
    out = tmp_path / "run"
    train_lm(config(shards, out, stage, steps=10))
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 11))
    assert log[-1]["steps_per_s"] > 0 and log[-1]["tokens_per_s"] > 0 and log[-1]["batch_frames"] <= 300
    dev_keys = {"dev_accuracy_1", "dev_accuracy_1_text_free"} if stage == "ar" else {
        "dev_accuracy_2", "dev_accuracy_3", "dev_accuracy_4"}
    assert dev_keys <= set(log[4]) and dev_keys <= set(log[9]) and not dev_keys & set(log[3])
    assert [p.name for p in sorted((out / "checkpoints").glob("*.pt"))] == ["step_0000005.pt", "step_0000010.pt"]
    checkpoint = torch.load(out / "checkpoints" / "step_0000010.pt", weights_only=True)
    assert checkpoint["step"] == 10 and checkpoint["stage"] == stage and checkpoint["optimizer"]["state"]
    model, vocab = load_lm(out / "export", kind=stage)
    assert model.info["codec"]["fingerprint"] == CODEC_INFO["fingerprint"] and model.info["extra"]["training"]["steps"] == 10
    assert model.config.n_codebooks == 4 and model.config.codebook_size == 64 and len(vocab) > 10

    # The newest checkpoint is corrupted: the run falls back to step 5 and redoes 6..10 exactly.
    uninterrupted = final_weights(out, 10)
    (out / "checkpoints" / "step_0000010.pt").write_bytes(b"torn")
    train_lm(config(shards, out, stage, steps=10))
    assert_same_weights(final_weights(out, 10), uninterrupted)
    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, 11)) + list(range(6, 11))
    assert [r["data"] for r in log[5:10]] == [r["data"] for r in log[10:]]  # the same batches
    assert [r["loss"] for r in log[5:10]] == [r["loss"] for r in log[10:]]


def test_the_ar_learns_patterned_codes(tmp_path):
    shards = make_shards(tmp_path / "shards")
    out = tmp_path / "run"
    train_lm(config(shards, out, "ar", steps=60, lr=1e-2, checkpoint_every=60, eval_every=60, log_every=10,
                    model=TINY_MODEL | {"d_model": 64, "dropout": 0.0}))
    log = read_log(out)
    assert log[-1]["loss"] < log[0]["loss"] - 0.5
    assert log[-1]["dev_accuracy_1"] > 0.2  # chance: 1/65


def test_time_limit_stops_with_a_checkpoint_and_export_then_resume_continues(tmp_path, capsys):
    from tokenlm.pretrained import read_lm_info

    shards = make_shards(tmp_path / "shards")
    out = tmp_path / "run"
    limited = config(shards, out, "nar", steps=20, checkpoint_every=15, eval_every=15, time_limit_minutes=0)
    train_lm(limited)
    assert "time limit of 0 min reached after step 10" in capsys.readouterr().out
    assert [p.name for p in sorted((out / "checkpoints").glob("*.pt"))] == ["step_0000010.pt"]
    assert read_lm_info(out / "export")["extra"]["training"]["steps"] == 10
    train_lm(dataclasses.replace(limited, time_limit_minutes=None))
    assert [r["step"] for r in read_log(out)] == list(range(1, 21))
    with pytest.raises(LMError, match="--time-limit"):
        config(shards, tmp_path / "other", "ar", steps=5, time_limit_minutes=-1.0)


def test_several_shard_folders_merge_and_best_keeps_the_lowest_dev_loss_across_resumes(tmp_path):
    from tokenlm.pretrained import read_lm_info
    from tokenlm.shards import write_shard

    utterances, vocab = make_utterances()
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, part in ((first, utterances[:12]), (second, utterances[12:])):
        folder.mkdir()
        write_shard(folder / "shard_00000.safetensors", part, CODEC_INFO, vocab)
    out = tmp_path / "run"
    train_lm(config([first, second], out, "ar", steps=12, eval_every=2, checkpoint_every=6))
    train_lm(config(make_shards(tmp_path / "one"), tmp_path / "one_run", "ar", steps=12, eval_every=2,
                    checkpoint_every=6))
    log = read_log(out)
    assert [r["data"] for r in log] == [r["data"] for r in read_log(tmp_path / "one_run")]  # the same corpus

    evaluations = [(r["step"], r["dev_loss_1"]) for r in log if "dev_loss_1" in r]
    assert len(evaluations) == 6
    kept = read_lm_info(out / "best")["extra"]["training"]
    assert kept["best"]["step"] == min(evaluations, key=lambda e: e[1])[0] == kept["steps"]
    assert kept["best"]["dev_loss"] == pytest.approx(min(loss for _, loss in evaluations))
    assert kept["shards"] == [str(first), str(second)]

    # A resumed run only replaces best/ with a lower dev loss than the one it recorded.
    path = out / "best" / "config.json"
    info = json.loads(path.read_text())
    info["extra"]["training"]["best"]["dev_loss"] = 0.0
    path.write_text(json.dumps(info))
    train_lm(config([first, second], out, "ar", steps=16, eval_every=2, checkpoint_every=6))
    assert read_lm_info(out / "best")["extra"]["training"]["best"]["step"] == kept["steps"]


def test_init_starts_a_new_run_from_exported_weights_on_another_codecs_shards(tmp_path):
    from safetensors.torch import load_file

    from tokenlm.pretrained import read_lm_info
    from tokenlm.shards import write_shard

    train_lm(config(make_shards(tmp_path / "shards"), tmp_path / "first", "ar", steps=4, checkpoint_every=4))
    # The same corpus coded by another codec (a refitted one): the fingerprint differs.
    utterances, vocab = make_utterances()
    other = tmp_path / "other"
    other.mkdir()
    write_shard(other / "shard_00000.safetensors", utterances, CODEC_INFO | {"fingerprint": "fedcba9876543210"}, vocab)
    with pytest.raises(TokenwaveError, match="come from another codec"):  # --resume refuses it ...
        train_lm(config(other, tmp_path / "first", "ar", steps=8))
    init = tmp_path / "first" / "export"
    assert "sampling" not in read_lm_info(init)
    recommended = {"temperature": 0.5, "top_k": 10, "text_guidance": 3.0}  # as added by hand after an evaluation
    (init / "config.json").write_text(json.dumps(read_lm_info(init) | {"sampling": recommended}))
    out = tmp_path / "tuned"  # ... --init starts from the weights: one step at a negligible rate keeps them
    train_lm(config(other, out, "ar", steps=1, lr=1e-12, warmup_steps=0, checkpoint_every=1, init=str(init),
                    model=TINY_MODEL | {"d_model": 64}))  # model options come from the weights
    before, after = load_file(init / "model.safetensors"), load_file(out / "export" / "model.safetensors")
    assert_same_weights(before, after)
    info = read_lm_info(out / "export")
    assert info["codec"]["fingerprint"] == "fedcba9876543210" and info["extra"]["training"]["init"] == str(init)
    assert info["lm"]["d_model"] == TINY_MODEL["d_model"]
    # The fine-tune keeps the decoding its start was tuned for (speak / eval-tts read it).
    assert info["sampling"] == recommended and info["extra"]["training"]["sampling_from"] == str(init)
    # ... also after a resume that no longer names --init (the entry travels in the checkpoints)
    train_lm(config(other, out, "ar", steps=2, lr=1e-12, warmup_steps=0, checkpoint_every=1))
    resumed = read_lm_info(out / "export")
    assert resumed["extra"]["training"]["steps"] == 2 and resumed["sampling"] == recommended
    assert resumed["extra"]["training"]["sampling_from"] == str(init)
    # A bad starting point is a one-line error.
    with pytest.raises(TokenwaveError, match="a nar model is needed"):
        train_lm(config(other, tmp_path / "nar", "nar", steps=1, init=str(init)))
    three = tmp_path / "three"
    three.mkdir()
    write_shard(three / "shard_00000.safetensors", make_utterances(K=3)[0], CODEC_INFO | {"num_codebooks": 3}, vocab)
    with pytest.raises(TokenwaveError, match="the shards have 3 of 64"):
        train_lm(config(three, tmp_path / "k3", "ar", steps=1, init=str(init)))


def test_bad_requests_are_one_line_errors(tmp_path):
    shards = make_shards(tmp_path / "shards")
    with pytest.raises(TokenwaveError, match="--stage"):
        config(shards, tmp_path / "run", "tts", steps=1)
    train_lm(config(shards, tmp_path / "run", "ar", steps=2, checkpoint_every=2))
    with pytest.raises(TokenwaveError, match="holds a run of --stage ar"):
        train_lm(config(shards, tmp_path / "run", "nar", steps=4))
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        path.write_bytes(b"torn")
    with pytest.raises(TokenwaveError, match="no readable checkpoint"):
        train_lm(config(shards, tmp_path / "run", "ar", steps=4))


# -- kill -9 ----------------------------------------------------------------------------------


def _train_command(shards: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "codec.cli", "train-lm", "--stage", "ar", "--shards", str(shards), "--out", str(out),
            "--steps", str(steps), "--batch-frames", "300", "--warmup", "3", "--lr", "3e-3",
            "--checkpoint-every", "10", "--eval-every", "1000", "--log-every", "1", "--threads", "1",
            "--d-model", "32", "--layers", "1", "--heads", "2", "--device", "cpu", "--resume"]


def test_sigkill_after_the_first_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Acceptance criterion of the reliability issue: kill -9 mid-run, restart with --resume: the
    same final step count, the same data order and the same weights as a run never interrupted."""
    shards = make_shards(tmp_path / "shards")
    steps = 60
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"  # in this process (one start-up less): the same code, the same thread count
    train_lm(config(shards, reference, "ar", steps, checkpoint_every=10, eval_every=1000, device="cpu",
                    model={"d_model": 32, "n_layers": 1, "n_heads": 2}))

    out = tmp_path / "killed"
    process = subprocess.Popen(_train_command(shards, out, steps), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step_0000010.pt").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "checkpoints" / f"step_{steps:07d}.pt").exists(), "killed too late: the run had finished"
    killed_at = max(r["step"] for r in read_log(out))

    done = subprocess.run(_train_command(shards, out, steps), check=False, env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step" in done.stdout + done.stderr
    assert_same_weights(final_weights(out, steps), final_weights(reference, steps))
    expected = {r["step"]: r["data"] for r in read_log(reference)}
    assert sorted(expected) == list(range(1, steps + 1))
    log = read_log(out)
    assert max(r["step"] for r in log) == steps and killed_at < steps
    for record in log:  # every step, logged before or after the kill, trained on the reference's batch
        assert record["data"] == expected[record["step"]], record["step"]
