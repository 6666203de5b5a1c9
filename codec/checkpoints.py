"""The run folder of a training loop (codec, token LMs): checkpoints, logs, learning-rate schedule.

Checkpoints are ``OUT/checkpoints/step_XXXXXXX.pt``: a dict of state dicts and plain values
(model, optimizer, step, config) written with ``torch.save`` to a temporary file, flushed to disk
and renamed, so a crash (even SIGKILL) leaves either the old set or the new one complete; the
newest ``keep`` are kept. They are our own files and are read back with
``torch.load(weights_only=True)``, which cannot run code. :func:`load_latest_checkpoint` returns
the newest one that loads and has the expected keys, reporting and skipping corrupted ones.

:class:`RunLog` appends one JSON object per record to ``OUT/log.jsonl`` and writes the same
scalars for TensorBoard under ``OUT/tensorboard/`` (``train/...``; keys ``dev_x`` as ``dev/x``; values
that are not numbers stay in the JSON log), skipped with one note when the ``tensorboard`` package
is missing. After a resume, TensorBoard
hides the events the interrupted run logged beyond the checkpoint (``purge_step``).

:func:`warmup_cosine`: linear warm-up, then cosine decay to 10% of the peak.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from codec.errors import TokenwaveError

CHECKPOINT_DIR = "checkpoints"


def warmup_cosine(step: int, lr: float, warmup_steps: int, total_steps: int, floor: float = 0.1) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine decay
    to ``floor * lr`` at ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """The checkpoints of a run folder, oldest first."""
    return sorted((Path(out_dir) / CHECKPOINT_DIR).glob("step_*.pt"))


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not possible on every platform / file system
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def save_checkpoint(out_dir: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``state`` (plus ``step``) atomically as the checkpoint of ``step``; keep the newest ``keep``."""
    folder = Path(out_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step_{step:07d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(dict(state) | {"step": step}, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_folder(folder)
    for old in list_checkpoints(out_dir)[:-keep]:
        old.unlink()
    return path


def load_latest_checkpoint(out_dir: str | Path, required: tuple[str, ...] = ("step",)) -> dict | None:
    """The newest checkpoint that loads and holds the ``required`` keys; corrupted ones are reported
    and skipped. None when there is none."""
    for path in reversed(list_checkpoints(out_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or any(key not in state for key in required):
                raise ValueError("missing keys")
            return state
        except Exception as error:  # noqa: BLE001 - any torn or corrupted file: fall back to the previous one
            tqdm.write(f"warning: skipping unreadable checkpoint {path.name}: {type(error).__name__}", file=sys.stderr)
    return None


def resume_checkpoint(out_dir: str | Path, resume: bool, required: tuple[str, ...] = ("step",)) -> dict | None:
    """With ``resume``: the newest readable checkpoint, None for a fresh run folder, and an error when
    checkpoints exist but none is readable. Without: None."""
    if not resume:
        return None
    checkpoint = load_latest_checkpoint(out_dir, required)
    if checkpoint is None and list_checkpoints(out_dir):
        raise TokenwaveError(f"no readable checkpoint in {Path(out_dir) / CHECKPOINT_DIR}")
    return checkpoint


def summary_writer(folder: str | Path, resumed_step: int):
    """A TensorBoard SummaryWriter, or None (with one note) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        tqdm.write("note: tensorboard is not installed; logging to log.jsonl only (pip install tensorboard)",
                   file=sys.stderr)
        return None
    # Steps after the checkpoint may have been logged by the interrupted run: hide those events.
    return SummaryWriter(str(folder), purge_step=resumed_step + 1 if resumed_step else None)


def tensorboard_tag(key: str) -> str:
    """``dev_x`` -> ``dev/x``, anything else -> ``train/x``."""
    return f"dev/{key[4:]}" if key.startswith("dev_") else f"train/{key}"


class RunLog:
    """``OUT/log.jsonl`` + TensorBoard scalars; a no-op when not ``enabled`` (ranks other than 0).
    Use with ``contextlib.closing``."""

    def __init__(self, out_dir: str | Path, resumed_step: int, enabled: bool = True):
        path = Path(out_dir) / "log.jsonl"
        if enabled and path.is_file() and path.stat().st_size:
            with open(path, "rb+") as handle:  # a line torn by a killed run: end it, so ours start on their own
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
        self.file = open(path, "a") if enabled else None  # noqa: SIM115 - closed in close()
        self.writer = summary_writer(Path(out_dir) / "tensorboard", resumed_step) if enabled else None

    def write(self, record: dict) -> None:
        """Append ``record`` (with a ``step`` key; the other values numbers) to both logs."""
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(tensorboard_tag(key), value, record["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()
