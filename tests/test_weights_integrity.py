"""Codec weights are loaded without pickle, and a tampered, truncated, swapped or unverifiable
weights file is refused with one clear line (codec/pretrained.py: ``weights_sha256`` in config.json)."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

import codec
from codec.cli import main
from codec.errors import ModelError
from codec.pretrained import REPO_WEIGHTS, file_sha256, load_pretrained, save_pretrained, tiny_random


@pytest.fixture
def folder(tmp_path):
    save_pretrained(tiny_random(16_000), tmp_path / "m")
    return tmp_path / "m"


def weights(folder):
    return folder / "model.safetensors"


def edit_config(folder, **changes):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def refused(folder, *fragments) -> str:
    with pytest.raises(ModelError) as info:
        codec.load(str(folder))
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_intact_folder_loads_without_pickle(folder, monkeypatch):
    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle used while loading weights")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    model = codec.load(str(folder))
    assert model.name == "tiny-16k"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda b: b[: len(b) // 2], id="truncated-half"),
        pytest.param(lambda b: b[:-1], id="truncated-last-byte"),
        pytest.param(lambda b: b"", id="emptied"),
        pytest.param(lambda b: b + b"\0", id="byte-appended"),
        pytest.param(lambda b: b[:-100] + bytes([b[-100] ^ 1]) + b[-99:], id="one-bit-in-a-weight"),
        pytest.param(lambda b: b[:20] + bytes([b[20] ^ 0x20]) + b[21:], id="one-bit-in-the-safetensors-header"),
    ],
)
def test_tampered_weights_are_refused(folder, tamper):
    expected = json.loads((folder / "config.json").read_text())["weights_sha256"]
    weights(folder).write_bytes(tamper(weights(folder).read_bytes()))
    message = refused(folder, "model.safetensors", "truncated, corrupted or was changed", expected[:16])
    assert file_sha256(weights(folder))[:16] in message


def test_weights_of_another_model_are_refused(folder, tmp_path):
    save_pretrained(tiny_random(16_000, seed=1), tmp_path / "other")
    shutil.copy(weights(tmp_path / "other"), weights(folder))  # a valid safetensors file, other weights
    refused(folder, "was changed")


@pytest.mark.parametrize("value", [None, "", "abc", 12, "G" * 64, "A" * 64])
def test_config_without_a_valid_hash_is_refused(folder, value):
    edit_config(folder, weights_sha256=value if value is not None else None)
    refused(folder, "no valid weights_sha256")


def test_hostile_configs_are_one_line_errors(folder):
    (folder / "config.json").write_text("[" * 100_000)
    refused(folder, "cannot read")
    (folder / "config.json").write_text("x" * (2 << 20))
    refused(folder, "over")
    (folder / "config.json").write_bytes(b"\xff\xfe")
    refused(folder, "cannot read")


def test_matching_hash_of_a_broken_file_still_fails_cleanly(folder):
    """A file whose hash was recomputed after tampering passes the hash check; parsing then refuses it."""
    weights(folder).write_bytes(b"garbage, not safetensors")
    edit_config(folder, weights_sha256=file_sha256(weights(folder)))
    refused(folder, "cannot read")


def test_cli_reports_tampered_weights_in_one_line(folder, tmp_path, capsys):
    weights(folder).write_bytes(weights(folder).read_bytes()[:-10])
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16_000)
    assert main(["compress", str(wav), "-o", str(tmp_path / "a.tok"), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err and "corrupted" in err
    assert not (tmp_path / "a.tok").exists()


def test_shipped_weights_verify():
    shipped = REPO_WEIGHTS / "speech-16k"
    if not (shipped / "model.safetensors").is_file():
        pytest.skip("no shipped speech-16k weights")
    config = json.loads((shipped / "config.json").read_text())
    assert file_sha256(shipped / "model.safetensors") == config["weights_sha256"]
    assert load_pretrained(shipped).name == "speech-16k"


@pytest.mark.parametrize("overrides", [
    {"decoder_dim": 8192, "decoder_layers": 64},
    {"encoder_dim": 100_000},
    {"num_codebooks": 1000},
    {"codebook_size": 2**20},
    {"sample_rate": 10**9},
])
def test_config_with_huge_sizes_is_refused_before_building(overrides):
    from codec.config import CodecConfig

    data = CodecConfig().to_dict() | overrides
    with pytest.raises(ModelError, match="invalid codec config"):
        CodecConfig.from_dict(data)


def _from_history(commit: str, path: str) -> bytes:
    import subprocess

    return subprocess.run(["git", "-C", str(REPO_WEIGHTS.parent), "show", f"{commit}:{path}"],
                          capture_output=True, check=True, timeout=60).stdout


def test_retired_weights_are_in_the_history_and_not_installed(tmp_path):
    """Every row of weights/retired.json names a folder that is gone from weights/ and a commit that
    still holds its files, whose weights match their config's sha256 and give the fingerprint its
    token files carry (checked where git and the history are at hand, as in a clone)."""
    import hashlib
    import subprocess

    from codec.retired import retired_codecs

    rows = retired_codecs([REPO_WEIGHTS])
    assert rows, "weights/retired.json lists no retired codec"
    for row in rows:
        assert not (REPO_WEIGHTS / row.name).exists()
        assert row.name not in codec.available_models()
        assert "model.safetensors" in row.files and "config.json" in row.files
        try:
            files = {name: _from_history(row.commit, f"{row.source}/{name}") for name in row.files}
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.skip(f"no git history here to check {row.name} against ({error})")
        config = json.loads(files["config.json"])
        assert hashlib.sha256(files["model.safetensors"]).hexdigest() == config["weights_sha256"]
        restored = tmp_path / row.name
        restored.mkdir()
        for name, data in files.items():
            assert data, name
            (restored / name).write_bytes(data)
        assert load_pretrained(restored).fingerprint == row.model_hash  # the files its token files name


def test_the_tracked_tree_stays_under_64_mib():
    """The repository's files (weights included) stay small enough to copy whole to a remote
    training machine: 64 MiB at most (weights/README.md; retire old weights to the history,
    weights/retired.json, rather than grow past it)."""
    import subprocess

    repo = REPO_WEIGHTS.parent
    try:
        listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z"], capture_output=True, check=True,
                                timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout here ({error})")
    paths = [repo / name for name in listed.decode().split("\0") if name]
    total = sum(path.stat().st_size for path in paths if path.is_file())
    assert total <= 64 * 2**20, f"tracked files take {total / 2**20:.1f} MiB"
