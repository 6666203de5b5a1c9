"""Token LM training with two CPU processes (torchrun, gloo): rank 0 alone logs, checkpoints and
exports, both ranks end with the same weights, and those weights match a one-process run on the
same global batches (each process trains on its slice, its loss weighted by its share of the
tokens), up to float summation order.

This file is also the driver that torchrun runs in each process (``python
tests/test_lm_train_ddp.py SHARDS OUT``): it trains the tiny AR and writes ``OUT/rank{r}.json``
with a digest of its weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

STEPS = 6


def _config(shards: str, out: str, device: str = "cpu"):
    from test_lm_train import config

    return config(Path(shards), Path(out), "ar", steps=STEPS, checkpoint_every=3, eval_every=3, device=device,
                  model={"d_model": 32, "n_layers": 1, "n_heads": 2, "dropout": 0.0})


def _digest(state: dict) -> str:
    return hashlib.sha256(b"".join(k.encode() + v.detach().cpu().numpy().tobytes() for k, v in sorted(state.items()))
                          ).hexdigest()


def _driver(shards: str, out: str) -> None:
    import tokenlm.train

    models = []

    class RecordedAR(tokenlm.train.ARModel):  # keeps a handle on this rank's model
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            models.append(self)

    tokenlm.train.MODELS = {"ar": RecordedAR}
    tokenlm.train.train_lm(_config(shards, out))
    rank = int(os.environ["RANK"])
    Path(out, f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world_size": int(os.environ["WORLD_SIZE"]), "weights": _digest(models[-1].state_dict())}))


def _torchrun(shards: Path, out: Path) -> None:
    from test_train_ddp import _free_port

    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, str(shards), str(out)]
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_cpu_processes_train_the_same_model_as_one(tmp_path):
    from test_lm_train import make_shards, read_log

    from tokenlm.pretrained import load_lm
    from tokenlm.train import train_lm

    shards = make_shards(tmp_path / "shards")
    out = tmp_path / "ddp"
    _torchrun(shards, out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP kept the processes in step

    log = read_log(out)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))  # rank 0 alone logs
    assert "dev_accuracy_1" in log[2] and min(r["batch_rows"] for r in log) >= 2
    checkpoint = torch.load(out / "checkpoints" / f"step_{STEPS:07d}.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert _digest(checkpoint["model"]) == ranks[0]["weights"]
    model, _ = load_lm(out / "export", kind="ar")
    assert model.info["extra"]["training"]["steps"] == STEPS

    # One process on the same global batches: the same data, the same weights up to rounding.
    single = tmp_path / "single"
    train_lm(_config(str(shards), str(single)))
    assert [r["data"] for r in read_log(single)] == [r["data"] for r in log]
    reference = torch.load(single / "checkpoints" / f"step_{STEPS:07d}.pt", map_location="cpu", weights_only=True)
    for name, tensor in reference["model"].items():
        assert torch.allclose(tensor, checkpoint["model"][name], atol=1e-5, rtol=1e-4), name


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _driver(sys.argv[1], sys.argv[2])
