"""Devices and torchrun jobs, shared by the training loops (codec, token LMs).

``resolve_device("auto")`` picks CUDA when torch sees a GPU, else the CPU. Under torchrun
(``WORLD_SIZE`` > 1) :func:`setup_distributed` joins the process group (``nccl`` on CUDA,
``gloo`` on the CPU) and returns a :class:`Distributed` that says where this process stands;
without torchrun it is rank 0 of 1 and every collective below is a no-op. Each process of a job
takes GPU ``LOCAL_RANK``.
"""

from __future__ import annotations

import datetime
import inspect
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from codec.errors import TokenwaveError


@dataclass
class Distributed:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The mean of each value over the processes (the values themselves without a job)."""
        if not self.enabled or not values:
            return dict(values)
        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world_size).tolist()))

    def past_time_limit(self, start: float, minutes: float, device: torch.device) -> bool:
        """Whether any process has spent ``minutes`` since ``start`` (``time.time()``); every
        process gets the same answer, so all stop at the same step."""
        late = float(time.time() - start >= 60.0 * minutes)
        return self.mean({"late": late}, device)["late"] > 0

    def check_same_step(self, step: int, device: torch.device) -> None:
        """Raise unless every process resumed from the same step."""
        if not self.enabled:
            return
        steps = torch.tensor([step, -step], dtype=torch.int64, device=device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        if steps.tolist() != [step, -step]:
            raise TokenwaveError("the training processes resumed from different checkpoints")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: CUDA when torch sees a GPU, else the CPU. Each process of a job takes GPU ``local_rank``."""
    if name not in ("auto", "cpu", "cuda"):
        raise TokenwaveError(f"unknown device {name!r} (auto, cpu or cuda)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TokenwaveError("--device cuda: torch sees no CUDA GPU")
    if local_rank >= torch.cuda.device_count():
        raise TokenwaveError(f"process {local_rank} needs GPU {local_rank}, but torch sees {torch.cuda.device_count()}")
    return torch.device("cuda", local_rank)


def setup_distributed(device: torch.device) -> Distributed:
    """Join the torchrun job described by ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    owns_group = not dist.is_initialized()
    if owns_group:
        backend = "nccl" if device.type == "cuda" else "gloo"
        # Rank 0 evaluates and exports while the others wait: allow for a slow export.
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, owns_group)


def setup_device_and_job(device_name: str) -> tuple[torch.device, Distributed]:
    """The device of this process (``LOCAL_RANK``'s GPU on CUDA) and its place in the job."""
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device, setup_distributed(device)


def run_training_job(train, config):
    """``train(config, device, distributed)`` in this process's place of the job (torch threads from
    ``config.threads``, device from ``config.device``); the process group is closed afterwards."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device, distributed = setup_device_and_job(config.device)
    try:
        return train(config, device, distributed)
    finally:
        distributed.close()


def no_buffer_broadcast() -> dict:
    """DDP option that stops it copying rank 0's buffers to the others before every forward pass
    (for buffers that every process updates identically itself, e.g. the codec's codebooks; newer
    torch renames ``broadcast_buffers`` to ``forward_sync_buffers``; buffers are still synced once
    at start, which does no harm)."""
    parameters = inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in parameters else {"broadcast_buffers": False}


def wrap_ddp(model: torch.nn.Module, device: torch.device, distributed: Distributed, **options) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under a job (gradients averaged), else ``model`` itself."""
    if not distributed.enabled:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **options
    )
