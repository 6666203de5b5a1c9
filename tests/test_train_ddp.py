"""Codec training with two CPU processes (torchrun, gloo): the job finishes, rank 0 alone writes the
log, TensorBoard events, checkpoint and export, and both ranks end with the same codebooks; a
second job resumes from the checkpoint.

This file is also the driver that torchrun runs in each process (``python tests/test_train_ddp.py
MANIFEST OUT STEPS``): it trains a tiny model and writes ``OUT/rank{r}.json`` with the digest of
its quantizer buffers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

TINY_CODEC = {"codebook_size": 64, "num_codebooks": 4}


def _driver(manifest: str, out: str, steps: int) -> None:
    import codec.train
    from codec.config import tiny

    models = []

    class RecordedModel(codec.train.CodecModel):  # keeps a handle on this rank's model
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            models.append(self)

    codec.train.CodecModel = RecordedModel
    config = codec.train.TrainConfig(
        manifests=[manifest], out_dir=out, steps=steps, batch_size=4, crop_seconds=0.5, lr=3e-3, warmup_steps=5,
        checkpoint_every=10, eval_every=10, threads=1, resume=True, device="cpu",
        codec=tiny().to_dict() | TINY_CODEC,
    )
    codec.train.train_codec(config)
    rank = int(os.environ["RANK"])
    result = {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]),
              "quantizer": codec.train.quantizer_digest(models[-1]),
              "initialized": [float(b.initialized) for b in models[-1].quantizer.codebooks]}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(manifest: Path, out: Path, steps: int) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               __file__, str(manifest), str(out), str(steps)]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_cpu_processes_train_with_identical_codebooks_and_resume(tmp_path):
    from test_train import make_manifest

    import codec
    from codec.train import quantizer_digest

    manifest = make_manifest(tmp_path)
    out = tmp_path / "run"
    _torchrun(manifest, out, steps=10)

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["initialized"] == [1.0] * 4  # the codebooks were trained (k-means, EMA) ...
    assert ranks[0]["quantizer"] == ranks[1]["quantizer"]  # ... identically on both ranks

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10]  # rank 0 alone logs
    assert log[0]["loss"] > 0 and "dev_loss_3cb" in log[0]
    if importlib.util.find_spec("tensorboard") is not None:
        assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # rank 0 alone

    checkpoint = torch.load(out / "checkpoints" / "step_0000010.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 10 and not any(k.startswith("module.") for k in checkpoint["model"])
    model = codec.CodecModel(codec.CodecConfig.from_dict(checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    assert quantizer_digest(model) == ranks[0]["quantizer"]  # the checkpoint holds the ranks' codebooks
    assert codec.load(str(out / "export")).max_codebooks == 4

    _torchrun(manifest, out, steps=20)  # --resume: continues from step 10
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["quantizer"] == ranks[1]["quantizer"]
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["step_0000010.pt", "step_0000020.pt"]


if __name__ == "__main__":
    _driver(sys.argv[1], sys.argv[2], int(sys.argv[3]))
