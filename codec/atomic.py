"""Atomic file writes: a process killed at any moment leaves either no file (or the old one) at
the final name, or the complete new one; never a partial file.

:func:`atomic_output` is the one implementation (a hidden temporary file in the same folder,
flushed and fsynced, then renamed or hard-linked into place); :func:`atomic_write_bytes` and
:func:`atomic_write_text` are its one-call forms, used for token files, shards, manifests,
configs, voices and reports alike.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from codec.errors import TokenwaveError


@contextlib.contextmanager
def atomic_output(path, overwrite: bool = False, what: str = "file", error=TokenwaveError):
    """Write a file atomically: ``with atomic_output(path) as f: f.write(...)``.

    ``f`` is a binary file (readable and seekable too, as libsndfile wants) on a hidden temporary
    file in the same folder; when the block ends without an exception the data is flushed to
    disk and only then given the name ``path``, so a process killed at any moment leaves either
    no file at ``path`` or the complete one (at worst a hidden ``.NAME.XXXXXXXX.tmp`` beside it).
    An exception removes the temporary file. Refuses to replace an existing file unless
    ``overwrite``. ``OSError``s become ``error`` (a :class:`TokenwaveError` class) naming ``what``."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    exists = error(f"{path} already exists (overwrite it explicitly to replace it)")
    if not overwrite and os.path.lexists(path):
        raise exists
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails atomically if path appeared meanwhile
            except FileExistsError:
                raise exists from None
            except OSError:  # no hard links on this file system
                if os.path.lexists(path):
                    raise exists from None
                os.replace(tmp, path)
    except OSError as e:
        raise error(f"cannot write {what} {path}: {e.strerror or e}") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes, what: str = "file", error=TokenwaveError) -> None:
    """Write ``data`` to ``path`` atomically, replacing any file there (see :func:`atomic_output`)."""
    with atomic_output(path, overwrite=True, what=what, error=error) as f:
        f.write(data)


def atomic_write_text(path, text: str, what: str = "file", error=TokenwaveError) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, replacing any file there."""
    atomic_write_bytes(path, text.encode("utf-8"), what, error)
