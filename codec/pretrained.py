"""Saving and loading codecs: ``codec.load(name_or_path)``.

A saved codec is a folder with ``model.safetensors`` (float16 weights) and ``config.json``
(the :class:`CodecConfig` fields plus ``weights_sha256``). Loading reads only JSON and
safetensors (nothing is unpickled) and checks the weights file's SHA-256 against the config
before parsing it, so a tampered, truncated or swapped weights file is refused with a
:class:`ModelError` naming both hashes; a config without a well-formed ``weights_sha256`` is
refused too.

Names resolve in this order: a folder path; a folder of that name under ``$TOKENWAVE_WEIGHTS``
or the repository's ``weights/``; the built-in random test models ``tiny-16k`` and
``tiny-24k``; ``owner/name``, a hub repository already in the local Hugging Face cache;
``hf:<id or folder>`` for EnCodec, DAC or Mimi through ``transformers``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from codec.atomic import atomic_write_text
from codec.config import CodecConfig, tiny
from codec.errors import ModelError
from codec.interface import AudioCodec
from codec.model import CodecModel

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DEFAULT_MODEL = "speech-16k"
MAX_CONFIG_BYTES = 1 << 20
REPO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


#: config.json keys that describe how the weights were made (not model settings).
RECORD_KEYS = ("training", "refit_codes", "entropy_tables")


def weights_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("TOKENWAVE_WEIGHTS", "").split(os.pathsep) if p]
    return dirs + [REPO_WEIGHTS]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_weights(model: torch.nn.Module, directory: str | Path, config: dict) -> Path:
    """Write ``model``'s state as ``model.safetensors`` (float16) and ``config`` plus the weights'
    ``weights_sha256`` as ``config.json`` into ``directory``, each file atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = directory / (WEIGHTS_FILE + ".tmp")
    # One metadata key: safetensors writes several in a per-process order (hash not reproducible).
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)  # safetensors creates the file readable by its owner only
    os.replace(tmp, directory / WEIGHTS_FILE)
    config = config | {"weights_sha256": file_sha256(directory / WEIGHTS_FILE)}
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n", "model config", ModelError)
    return directory


def save_pretrained(model: CodecModel, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``model.safetensors`` (float16) and ``config.json`` into ``directory``."""
    return write_weights(model, directory, model.config.to_dict() | (extra or {}))


def verify_weights(weights: Path, expected, config_path: Path) -> None:
    """Raise :class:`ModelError` unless ``weights`` hashes to ``expected`` (from ``config_path``)."""
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise ModelError(
            f"{config_path} has no valid weights_sha256 (64 lower-case hex digits), so {weights.name} cannot be "
            "verified; re-export the model with codec.save_pretrained"
        )
    try:
        actual = file_sha256(weights)
        size = weights.stat().st_size
    except OSError as error:
        raise ModelError(f"cannot read {weights}: {error.strerror or error}") from None
    if actual != expected:
        raise ModelError(
            f"{weights} ({size} bytes) has SHA-256 {actual[:16]}..., but {config_path.name} expects "
            f"{expected[:16]}...: the file is truncated, corrupted or was changed; restore or re-export it"
        )


def load_pretrained(directory: str | Path) -> CodecModel:
    """Load a folder written by :func:`save_pretrained`, ready for inference (hash checked first)."""
    directory = Path(directory)
    weights, config_path = directory / WEIGHTS_FILE, directory / CONFIG_FILE
    if not weights.is_file() or not config_path.is_file():
        raise ModelError(f"{directory} is not a tokenwave codec folder (needs {WEIGHTS_FILE} and {CONFIG_FILE})")
    try:
        if config_path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelError(f"{config_path} is over {MAX_CONFIG_BYTES} bytes: not a codec config")
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"cannot read {config_path}: {reason}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{config_path} must hold a JSON object")
    verify_weights(weights, data.pop("weights_sha256", None), config_path)
    for record in RECORD_KEYS:
        data.pop(record, None)
    config = CodecConfig.from_dict(data)
    model = CodecModel(config)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"cannot read {weights}: {reason}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise ModelError(f"{weights} does not fit its config: {first}") from None
    return model.prepare_for_inference()


def tiny_random(sample_rate: int = 16_000, seed: int = 0) -> CodecModel:
    """An untrained tiny model (random weights, fixed seed): for tests, not for listening."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CodecModel(tiny(sample_rate))
    return model.prepare_for_inference()


def load(name_or_path: str = DEFAULT_MODEL) -> AudioCodec:
    """A codec by name or path (see the module docstring)."""
    if name_or_path.startswith("hf:"):
        from codec.hf_codecs import load_hf_codec

        return load_hf_codec(name_or_path[3:])
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return load_pretrained(path)
    if "/" not in name_or_path and name_or_path not in ("", ".", ".."):
        for folder in weights_dirs():
            if (folder / name_or_path).is_dir():
                return load_pretrained(folder / name_or_path)
    builtin = {"tiny-16k": 16_000, "tiny-24k": 24_000}
    if name_or_path in builtin:
        return tiny_random(builtin[name_or_path])
    if name_or_path.count("/") == 1 and not path.exists():
        return load_pretrained(_from_hub_cache(name_or_path))
    names = sorted(available_models())
    raise ModelError(f"no codec named {name_or_path!r}; available: {', '.join(names)} (or a folder, or hf:<id>)")


def _from_hub_cache(repo_id: str) -> Path:
    """The folder of a Hugging Face hub repository already in the local cache (never downloads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(
            repo_id, local_files_only=True, allow_patterns=[WEIGHTS_FILE, CONFIG_FILE],
            cache_dir=os.environ.get("HF_HUB_CACHE"),  # read at call time, not at import
        )
        return Path(folder)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        raise ModelError(
            f"{repo_id!r} is neither a folder nor a hub repository in the local Hugging Face cache "
            f"(tokenwave never downloads: fetch it first with `huggingface-cli download {repo_id}`)"
        ) from None


def available_models() -> list[str]:
    """Names :func:`load` resolves without a path: shipped weights and the tiny test models."""
    names = {"tiny-16k", "tiny-24k"}
    for folder in weights_dirs():
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file())
    return sorted(names)
