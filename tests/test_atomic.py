"""Atomic writes (codec/atomic.py): an interrupted write leaves nothing, an existing file is only
replaced when asked, failures become the caller's error class."""

import pytest

from codec.atomic import atomic_output, atomic_write_bytes, atomic_write_text
from codec.errors import AudioError, TokenwaveError
from tokenlm.errors import LMError


def test_atomic_output(tmp_path):
    target = tmp_path / "a.bin"
    with pytest.raises(KeyError), atomic_output(target) as f:
        f.write(b"partial")
        raise KeyError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_output(target) as f:
        f.write(b"one")
    with pytest.raises(TokenwaveError, match="already exists"), atomic_output(target) as f:
        f.write(b"two")
    assert target.read_bytes() == b"one"
    with atomic_output(target, overwrite=True) as f:
        f.write(b"three")
    assert target.read_bytes() == b"three" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    with pytest.raises(AudioError, match="cannot write audio file"), \
            atomic_output(tmp_path / "missing" / "x.wav", what="audio file", error=AudioError):
        pass


def test_one_call_writers_replace_and_raise_the_callers_error(tmp_path):
    target = tmp_path / "notes.txt"
    atomic_write_text(target, "first ü\n")
    atomic_write_text(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(LMError, match="cannot write shard file"):
        atomic_write_bytes(tmp_path / "missing" / "x.safetensors", b"", "shard file", LMError)
