"""Saving and loading token LMs: ``save_lm(model, folder, vocab)`` / ``load_lm(folder)``.

A saved LM is a folder with ``model.safetensors`` (float16 weights) and ``config.json``::

    {"format": "tokenwave-lm", "kind": "ar" | "nar", "lm": {LMConfig fields},
     "vocab": {phoneme vocabulary}, "codec": {codec info, may be empty},
     "weights_sha256": "...", "extra": {anything JSON}[, "sampling": {SamplingConfig fields}]}

``sampling`` (optional, AR): the decoding the weights were evaluated with, which ``tokenwave
speak``, ``tts.load()`` and ``eval-tts`` start from (:func:`tokenlm.sampling.model_sampling`).

The hash is checked on load, so a tampered or truncated weights file is refused with an
:class:`LMError`; nothing is unpickled. Weights are loaded back as float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from codec.pretrained import file_sha256, write_weights
from tokenlm.ar import ARModel
from tokenlm.config import LMConfig
from tokenlm.errors import LMError
from tokenlm.nar import NARModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "tokenwave-lm"
MODELS = {"ar": ARModel, "nar": NARModel}


def _vocab_dict(vocab) -> dict:
    if isinstance(vocab, dict):
        return vocab
    if hasattr(vocab, "to_dict"):
        return vocab.to_dict()
    raise LMError("vocab must be a PhonemeVocab or its to_dict()")


def save_lm(
    model: ARModel | NARModel, folder: str | Path, vocab, extra: dict | None = None, codec: dict | None = None,
    sampling: dict | None = None,
) -> Path:
    """Write ``model.safetensors`` (float16) and ``config.json`` into ``folder`` (atomically per file).

    ``vocab``: a :class:`tokenlm.text.PhonemeVocab` or its ``to_dict()``; ``codec``: the codec
    info of the training shards (name, fingerprint, sample_rate, ...); ``extra``: JSON-able;
    ``sampling``: the recommended decoding (:class:`tokenlm.sampling.SamplingConfig` fields).
    """
    if getattr(model, "kind", None) not in MODELS:
        raise LMError("save_lm needs an ARModel or a NARModel")
    config = {
        "format": FORMAT,
        "kind": model.kind,
        "lm": model.config.to_dict(),
        "vocab": _vocab_dict(vocab),
        "codec": dict(codec or {}),
        "extra": dict(extra or {}),
    }
    if sampling is not None:
        from tokenlm.sampling import SamplingConfig

        SamplingConfig.from_dict(sampling)  # validates
        config["sampling"] = dict(sampling)
    return write_weights(model, folder, config)


def read_lm_info(folder: str | Path) -> dict:
    """The validated ``config.json`` of a saved LM (no weights are read)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise LMError(f"{folder} is not a tokenwave LM folder (needs {WEIGHTS_FILE} and {CONFIG_FILE})")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LMError(f"cannot read {path}: {error}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise LMError(f"{path} is not a tokenwave LM config")
    if info.get("kind") not in MODELS:
        raise LMError(f"{path}: kind must be 'ar' or 'nar', got {info.get('kind')!r}")
    for key in ("lm", "vocab", "codec", "extra"):
        if not isinstance(info.get(key), dict):
            raise LMError(f"{path}: {key!r} must be a JSON object")
    if not isinstance(info.get("weights_sha256"), str):
        raise LMError(f"{path}: missing weights_sha256")
    LMConfig.from_dict(info["lm"])  # validates
    if "sampling" in info:
        from tokenlm.sampling import SamplingConfig

        try:
            SamplingConfig.from_dict(info["sampling"])
        except LMError as error:
            raise LMError(f"{path}: {error}") from None
    return info


def load_lm(folder: str | Path, kind: str | None = None, device: str | torch.device = "cpu"):
    """Load a folder written by :func:`save_lm` -> ``(model, vocab)``, model in eval mode.

    ``vocab`` is a :class:`tokenlm.text.PhonemeVocab`; ``model.info`` holds the whole
    ``config.json`` (codec info, extra). ``kind`` ("ar"/"nar") makes a wrong model an error.
    """
    from tokenlm.text import PhonemeVocab

    folder = Path(folder)
    info = read_lm_info(folder)
    if kind is not None and info["kind"] != kind:
        raise LMError(f"{folder} holds a {info['kind']} model, a {kind} model is needed")
    weights = folder / WEIGHTS_FILE
    if file_sha256(weights) != info["weights_sha256"]:
        raise LMError(
            f"{weights} does not match the sha256 in {folder / CONFIG_FILE}: "
            "the file is corrupted or was changed"
        )
    config = LMConfig.from_dict(info["lm"])
    vocab = PhonemeVocab.from_dict(info["vocab"])  # raises LMError for a bad vocabulary
    if len(vocab) > config.n_phonemes:
        raise LMError(f"{folder}: vocab has {len(vocab)} symbols, the model only {config.n_phonemes}")
    model = MODELS[info["kind"]](config)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise LMError(f"cannot read {weights}: {error}") from None
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise LMError(f"{weights} does not fit its config: {first}") from None
    model.info = info
    return model.to(device).eval(), vocab
