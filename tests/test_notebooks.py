"""The research notebooks in notebooks/ run top to bottom on the shipped weights, and are committed
with their outputs stripped.

Each notebook is executed in a fresh ``python3`` kernel (nbclient, as ``pytest --nbmake`` does) with
notebooks/ as its working folder. The kernel gets as many torch threads as the tests
(``TOKENWAVE_TEST_THREADS``, 1 by default): on a busy 2-core machine two threads are several times
slower than one. The executed copy is written under the test's tmp folder for inspection.
A notebook whose weights are not there (``NEEDS``; looked up as the code does, ``$TOKENWAVE_WEIGHTS``
first, then ``weights/``) is skipped, saying which.
"""

from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 600  # per cell
NEEDS = {"tts_tour.ipynb": ["lm-ar", "lm-nar"]}  # weights folders a notebook runs on (beyond speech-16k)


def missing_weights(name: str) -> list[str]:
    from codec.pretrained import weights_dirs

    return [w for w in NEEDS.get(name, []) if not any((base / w).is_dir() for base in weights_dirs())]


def test_there_are_notebooks():
    assert {"codec_tour.ipynb", "tts_tour.ipynb"} <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [i for i, cell in enumerate(notebook.cells) if "execution" in cell.metadata
             or cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; run `make strip-notebooks` before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    missing = missing_weights(path.name)
    if missing:
        pytest.skip(f"{path.name} runs on the shipped token LMs: weights/{', weights/'.join(missing)} not found")
    threads = str(torch.get_num_threads())  # tests/conftest.py set it
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, threads)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    finally:
        nbformat.write(notebook, tmp_path / path.name)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook drew no figure"
