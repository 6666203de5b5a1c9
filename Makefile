# Set-up and everyday commands. Everything installs into .venv/ (created on first use).
# constraints.txt pins torch to the CPU wheel available on our machines; it is not a
# requirement of the package itself.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: install install-dev demo demo-web test test-slow bench lint strip-notebooks clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e ".[hf]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e ".[dev,hf]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

DEMO_INPUT ?= weights/samples/kathleen_arctic_a0001.flac

DEMO_TEXT ?= Tokenwave turns audio into tokens, and tokens back into speech.

## The main jobs on the shipped defaults: compress a recording to a token file and back, and
## speak a sentence with a built-in voice. Offline: everything comes from weights/.
demo: install
	mkdir -p out
	$(VENV)/bin/tokenwave compress $(DEMO_INPUT) -o out/demo.tok --bitrate 6 --force
	$(VENV)/bin/tokenwave info out/demo.tok
	$(VENV)/bin/tokenwave decompress out/demo.tok -o out/demo.wav --force
	$(VENV)/bin/tokenwave speak "$(DEMO_TEXT)" --voice kathleen --seed 0 -o out/speak.wav --force
	@echo "listen: out/demo.wav (original: $(DEMO_INPUT)) and out/speak.wav (text to speech)"

$(VENV)/.installed-demo: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e ".[demo,hf]"
	touch $@

## The web demo (Gradio) on http://127.0.0.1:7860: codec round trip and text to speech.
demo-web: $(VENV)/.installed-demo
	$(VENV)/bin/tokenwave demo

## The test suite (what CI runs).
test: install-dev
	$(PY) -m pytest -q

## Slow tests, kept out of `make test`.
test-slow: install-dev
	$(PY) -m pytest -q -m slow

bench: install
	$(VENV)/bin/tokenwave bench

lint: install-dev
	$(PY) -m ruff check codec tokenlm tts tests

## Clear the notebooks' outputs before committing (tests/test_notebooks.py checks it).
define STRIP_NOTEBOOKS
import sys, nbformat
for path in sys.argv[1:]:
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, path)
endef
export STRIP_NOTEBOOKS

strip-notebooks: install-dev
	$(PY) -c "$$STRIP_NOTEBOOKS" notebooks/*.ipynb

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .hypothesis
