"""One small storage interface for outputs (and, later, inputs): local disk now, S3 beside it.

Every write is whole or absent: a local file is written under ``_job/tmp`` and renamed into place,
so a reader listing the output folder never sees a partial file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    root: str

    def write_bytes(self, relpath: str, data: bytes) -> None: ...
    def read_bytes(self, relpath: str) -> bytes: ...
    def exists(self, relpath: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, relpath: str) -> None: ...
    def url(self, relpath: str) -> str: ...


class LocalStorage:
    """A folder on local (or shared) disk."""

    TMP = "_job/tmp"

    def __init__(self, root: str | Path):
        self.root = str(Path(root).absolute())
        self._tmp = Path(self.root, self.TMP)

    def _path(self, relpath: str) -> Path:
        return Path(self.root, relpath)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        final = self._path(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp / f"{uuid.uuid4().hex}.partial"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def read_bytes(self, relpath: str) -> bytes:
        return self._path(relpath).read_bytes()

    def exists(self, relpath: str) -> bool:
        return self._path(relpath).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, relpath: str) -> None:
        self._path(relpath).unlink(missing_ok=True)

    def url(self, relpath: str) -> str:
        return str(self._path(relpath))


def open_storage(root: str) -> Storage:
    return LocalStorage(root)
