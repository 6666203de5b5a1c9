# Set-up and everyday commands. Everything installs into .venv/ (created on first use).
# constraints.txt pins torch to the CPU wheel available on our machines; it is not a
# requirement of the package itself.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: install install-dev demo test test-slow bench lint clean

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

## The main job on the shipped defaults: compress a recording to a token file and back.
demo: install
	$(VENV)/bin/tokenwave demo-codec

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

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .hypothesis
