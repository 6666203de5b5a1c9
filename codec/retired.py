"""Codec weights retired from ``weights/`` that token files may still name.

``weights/retired.json`` lists each retired codec: its name, its token-file fingerprint
(``model_hash``), the date it left, and the commit of this repository that still holds its folder
(``folder``, when that folder had another name there: weights that were replaced by newer ones
under the same name).
A token file whose fingerprint matches no installed model but a retired one gets an error that
says how to bring those weights back from the repository's history (they are never downloaded):

    mkdir -p weights/NAME && for f in FILES; do git show COMMIT:weights/FOLDER/$f > weights/NAME/$f; done

A restored folder need not keep the name its token files carry: they are matched to installed
weights by fingerprint (:func:`codec.files.installed_model_of`).

Rows are read from every weights folder (:func:`codec.pretrained.weights_dirs`); a missing or
malformed file counts as empty (this only feeds an error message).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RETIRED_FILE = "retired.json"


@dataclass(frozen=True)
class RetiredCodec:
    name: str
    model_hash: str
    retired: str  # date, YYYY-MM-DD
    commit: str  # a commit whose tree still holds its folder (weights/<folder or name>/)
    files: tuple[str, ...]
    folder: str = ""  # its folder under weights/ in that commit, when not ``name``

    @property
    def source(self) -> str:
        """The path of its folder in :attr:`commit`."""
        return f"weights/{self.folder or self.name}"

    def restore_command(self) -> str:
        files = " ".join(self.files)
        return (f"mkdir -p weights/{self.name} && for f in {files}; do "
                f"git show {self.commit}:{self.source}/$f > weights/{self.name}/$f; done")


def retired_codecs(folders: list[Path] | None = None) -> list[RetiredCodec]:
    """Every well-formed row of ``retired.json`` in ``folders`` (default: the weights folders)."""
    from codec.pretrained import weights_dirs

    rows = []
    for folder in weights_dirs() if folders is None else folders:
        try:
            entries = json.loads((Path(folder) / RETIRED_FILE).read_text())
            rows += [RetiredCodec(str(e["name"]), str(e["model_hash"]), str(e["retired"]), str(e["commit"]),
                                  tuple(str(f) for f in e["files"]), str(e.get("folder", ""))) for e in entries]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return rows


def retired_codec_with_fingerprint(fingerprint: str) -> RetiredCodec | None:
    return next((row for row in retired_codecs() if row.model_hash == fingerprint), None)
