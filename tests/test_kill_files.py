"""SIGKILL during ``compress``/``decompress`` never leaves a partial file that looks valid.

A forked copy of this process (torch already imported, so each run takes milliseconds) runs
``compress_file`` or ``decompress_file`` and is killed with SIGKILL, either at a chosen point
(while coding, while writing the output, before the fsync, just before or after the rename or
link that publishes the file) or after a range of delays. Afterwards the output path holds
nothing, or the complete file (byte-identical to an uninterrupted run), or, with ``--force``,
the complete old file; anything else left is a hidden ``.NAME.XXXXXXXX.tmp`` file that folder
walks skip. (Resuming training after SIGKILL is tested with the trainers.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from codec import files
from codec import tokenfile as tf
from codec.audio import files_in_folder
from codec.pretrained import tiny_random

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture(scope="module")
def model():
    return tiny_random(16_000)


@pytest.fixture(scope="module")
def work(tmp_path_factory, model):
    """A 15 s 44.1 kHz input, and its token file and decoded WAV from uninterrupted runs."""
    folder = tmp_path_factory.mktemp("kill")
    rng = np.random.default_rng(0)
    t = np.arange(15 * 44_100) / 44_100
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * np.clip(np.sin(2 * np.pi * 3 * t), 0, None) + 0.01 * rng.standard_normal(len(t))
    source = folder / "in.wav"
    sf.write(source, x.astype(np.float32), 44_100)
    start = time.perf_counter()
    files.compress_file(model, source, folder / "ref.tok", None)
    compress_seconds = time.perf_counter() - start
    start = time.perf_counter()
    files.decompress_file(model, folder / "ref.tok", folder / "ref.wav")
    decompress_seconds = time.perf_counter() - start
    return {"source": source, "tok": (folder / "ref.tok").read_bytes(), "wav": (folder / "ref.wav").read_bytes(),
            "compress_seconds": compress_seconds, "decompress_seconds": decompress_seconds}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def run_forked(action, delay: float | None = None) -> int:
    """Run ``action()`` in a forked child; kill it after ``delay`` s (if given). Returns the wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            import threading

            import torch
            from tqdm import tqdm

            # tqdm's default write lock holds a multiprocessing semaphore that a forked child shares
            # with its parent: a child killed while holding it would block the parent's next progress
            # bar forever. The child gets a lock of its own.
            tqdm.set_lock(threading.RLock())
            torch.set_num_threads(1)
            action()
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(3)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked run did not finish in 120 s")
        time.sleep(0.005)


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def check_output(folder: Path, target: Path, complete: bytes, old: bytes | None = None) -> str:
    """The output is absent, complete, or (with --force) the complete old file; other leftovers are
    hidden temporary files. Returns which, and removes the leftovers."""
    state = "absent"
    if target.exists():
        data = target.read_bytes()
        assert data in (complete, old), f"{target.name} holds {len(data)} bytes: a partial file"
        state = "complete" if data == complete else "old"
    for path in folder.iterdir():
        if path != target:
            assert path.name.startswith(f".{target.name}.") and path.name.endswith(".tmp"), path.name
            assert files_in_folder(folder, {target.suffix}) == ([target] if target.exists() else [])
            path.unlink()
    return state


def patched(obj, name: str, when: str, on_call: int = 1):
    """Replace ``obj.name`` so that its ``on_call``-th call kills the process before or after running."""
    real = getattr(obj, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == on_call and when == "before":
            die()
        result = real(*args, **kwargs)
        if calls[0] == on_call and when == "after":
            die()
        return result

    setattr(obj, name, wrapper)


COMPRESS_POINTS = [  # (object, attribute, before/after, which call, force)
    (tf.StreamPacker, "_spool", "before", 2, False),  # while coding
    (shutil, "copyfileobj", "before", 1, False),  # header written, chunks not yet
    (os, "fsync", "before", 1, False),  # everything written, nothing flushed or renamed
    (os, "link", "before", 1, False),
    (os, "link", "after", 1, False),  # published, the temporary name not yet removed
    (os, "replace", "before", 1, True),  # --force over an existing file
    (os, "replace", "after", 1, True),
]
DECOMPRESS_POINTS = [
    (sf.SoundFile, "write", "before", 3, False),  # while decoding and writing
    (os, "fsync", "before", 1, False),
    (os, "link", "before", 1, False),
    (os, "link", "after", 1, False),
    (os, "replace", "before", 1, True),
    (os, "replace", "after", 1, True),
]


def _ids(points):
    return [f"{getattr(o, '__name__', o)}.{n}-{w}-{c}{'-force' if f else ''}" for o, n, w, c, f in points]


@pytest.mark.parametrize(("obj", "name", "when", "call", "force"), COMPRESS_POINTS, ids=_ids(COMPRESS_POINTS))
def test_compress_killed_at_each_step(tmp_path, model, work, obj, name, when, call, force):
    target = tmp_path / "x.tok"
    old = b"an older token file" if force else None
    if force:
        target.write_bytes(old)

    def action():
        patched(obj, name, when, call)
        files.compress_file(model, work["source"], target, None, force=force)

    assert killed(run_forked(action)), "the kill point was not reached"
    state = check_output(tmp_path, target, work["tok"], old)
    assert state == ("complete" if when == "after" else "old" if force else "absent")


@pytest.mark.parametrize(("obj", "name", "when", "call", "force"), DECOMPRESS_POINTS, ids=_ids(DECOMPRESS_POINTS))
def test_decompress_killed_at_each_step(tmp_path, model, work, obj, name, when, call, force):
    source, target = tmp_path / "in.tok", tmp_path / "x.wav"
    source.write_bytes(work["tok"])
    old = b"an older wav" if force else None
    if force:
        target.write_bytes(old)

    def action():
        patched(obj, name, when, call)
        files.decompress_file(model, source, target, force=force)

    assert killed(run_forked(action))
    source.unlink()
    state = check_output(tmp_path, target, work["wav"], old)
    assert state == ("complete" if when == "after" else "old" if force else "absent")


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_killed_after_any_delay(tmp_path, model, work, command):
    """Kills spread over the whole run (and beyond it): never a partial output."""
    if command == "compress":
        target, complete, seconds = tmp_path / "x.tok", work["tok"], work["compress_seconds"]

        def action():
            files.compress_file(model, work["source"], target, None)
    else:
        source = tmp_path.parent / f"{tmp_path.name}-in.tok"
        source.write_bytes(work["tok"])
        target, complete, seconds = tmp_path / "x.wav", work["wav"], work["decompress_seconds"]

        def action():
            files.decompress_file(model, source, target)

    states = []
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 2.0):
        status = run_forked(action, delay=fraction * seconds)
        states.append(check_output(tmp_path, target, complete))
        if not killed(status):
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and states[-1] == "complete"
        if target.exists():
            target.unlink()
    assert "absent" in states  # some kills did land mid-run


@pytest.mark.slow
def test_cli_processes_killed_after_any_delay(tmp_path, work):
    """The real commands as separate processes (interpreter and torch start-up included)."""
    script = Path(sys.executable).parent / "tokenwave"
    if not script.is_file():
        pytest.skip("the tokenwave console script is not installed")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    tokens = tmp_path.parent / f"{tmp_path.name}-ref.tok"
    tokens.write_bytes(work["tok"])
    for command, source, target, complete in [
        ("compress", work["source"], tmp_path / "x.tok", work["tok"]),
        ("decompress", tokens, tmp_path / "x.wav", work["wav"]),
    ]:
        argv = [str(script), command, str(source), "-o", str(target), "--model", "tiny-16k"]
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        seconds = time.perf_counter() - start
        assert check_output(tmp_path, target, complete) == "complete"
        target.unlink()
        for fraction in (0.6, 0.8, 0.95):
            process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(fraction * seconds)
            process.kill()
            process.wait()
            check_output(tmp_path, target, complete)
            if target.exists():
                target.unlink()
