"""kill -9 acceptance test of ``tokenwave train-codec`` (the codec's twin of the one in
tests/test_lm_train.py): a run on a tiny codec is killed with SIGKILL after its first checkpoint,
part-way to the next, and restarted with ``--resume``. It must reach the same final step with the
same data and randomness as a run never interrupted: every logged step (also those the killed run
logged and the resumed run redid) has the reference's losses exactly, and the final weights,
optimizer state and export are equal bit for bit (exact resume on the CPU: the batch and the
torch generator of step s depend on (seed, s) only). A torn ``.tmp`` left by a save that was
killed midway is ignored and later replaced. The corrupted-newest-checkpoint fallback is tested
in tests/test_train.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_train import make_manifest

from codec.cli import main

REPO = Path(__file__).resolve().parent.parent
STEPS, EVERY = 40, 15  # checkpoints at 15, 30 and 40; the log has steps 10, 20, 30, 40
TINY = {"name": "tiny-16k", "encoder_dim": 16, "encoder_layers": 1, "decoder_dim": 16, "decoder_layers": 1,
        "latent_dim": 8, "num_codebooks": 2, "codebook_size": 16}


def _argv(manifest: Path, out: Path) -> list[str]:
    return ["train-codec", "--manifest", str(manifest), "--out", str(out), "--steps", str(STEPS), "--batch-size", "2",
            "--crop-seconds", "0.2", "--lr", "3e-3", "--checkpoint-every", str(EVERY), "--threads", "1",
            "--device", "cpu", "--resume", "--codec-config", json.dumps(TINY)]


def _log(out: Path) -> list[dict]:
    """The records of ``OUT/log.jsonl``, without the timing (the one value that may differ) and torn lines."""
    records = []
    path = out / "log.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line torn by kill -9
            continue
        record.pop("steps_per_s")
        records.append(record)
    return records


def _checkpoint(out: Path, step: int) -> dict:
    return torch.load(out / "checkpoints" / f"step_{step:07d}.pt", map_location="cpu", weights_only=True)


def _assert_same(a, b, where: str = "") -> None:
    """Nested state dicts equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def test_sigkill_after_the_first_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    manifest = make_manifest(tmp_path)
    reference = tmp_path / "reference"  # in this process (one start-up less): the same argv, code and threads
    assert main(_argv(manifest, reference)) == 0
    capsys.readouterr()
    expected = {r["step"]: r for r in _log(reference)}
    assert sorted(expected) == [10, 20, 30, 40]

    out = tmp_path / "killed"
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "codec.cli", *_argv(manifest, out)]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    # Past the first checkpoint (step 15) and the log of step 20: steps 16..20 will be redone.
    while not (out / "checkpoints" / f"step_{EVERY:07d}.pt").exists() or 20 not in {r["step"] for r in _log(out)}:
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    left = sorted(p.name for p in (out / "checkpoints").glob("step_*.pt"))
    assert f"step_{STEPS:07d}.pt" not in left, "killed too late: the run had finished"
    resumed_from = int(left[-1][5:12])
    killed_log = _log(out)
    # What a kill during torch.save leaves behind: the resumed run must not read it, and replaces it.
    following = min(s for s in (EVERY, 2 * EVERY, STEPS) if s > resumed_from)
    (out / "checkpoints" / f"step_{following:07d}.tmp").write_bytes(b"torn by kill -9")

    done = subprocess.run(command, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from step {resumed_from}" in done.stdout + done.stderr
    assert "unreadable checkpoint" not in done.stdout + done.stderr

    log = _log(out)
    assert log[: len(killed_log)] == killed_log and len(log) > len(killed_log)
    assert max(r["step"] for r in log) == STEPS
    assert [r["step"] for r in log[len(killed_log):]] == [s for s in (10, 20, 30, 40) if s > resumed_from]
    for record in log:  # every step, logged before or after the kill, had the reference's batch and losses
        assert record == expected[record["step"]], record["step"]
    for step in (30, 40):
        ours, theirs = _checkpoint(out, step), _checkpoint(reference, step)
        _assert_same(ours, theirs, f"step {step}")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step_{s:07d}.pt" for s in (15, 30, 40)]
    # The export: byte-identical weights, so the same config with the same hash.
    _assert_same(load_file(out / "export" / "model.safetensors"), load_file(reference / "export" / "model.safetensors"))
    ours, theirs = (json.loads((run / "export" / "config.json").read_text()) for run in (out, reference))
    assert ours == theirs and ours["training"] == {"steps": STEPS}
