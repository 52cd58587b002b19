"""One small storage interface for manifests' neighbours and outputs: local disk, or S3-compatible
object stores (``s3://bucket/prefix``, see ``s3.py``).

Every write is whole or absent. A local file is written under ``_job/tmp`` and renamed into place;
an object is written by a single put or a completed multipart upload. So a reader listing the
output never sees a partial file.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

# Objects at least this large go up as multipart uploads (S3's maximum single put is 5 GiB).
DEFAULT_MULTIPART_BYTES = 64 * 1024 * 1024


class StorageError(RuntimeError):
    """A storage operation that failed; the message names the location, the operation and the cause
    (never a credential)."""


@dataclass(frozen=True)
class StorageOptions:
    """How to reach an S3-compatible store. Credentials are deliberately absent: every process
    (driver, each Ray actor) reads them from boto3's usual chain in its own environment, so they
    never travel with the job, its plan or its logs."""

    endpoint_url: str | None = None  # e.g. http://minio:9000; None: boto3's own (AWS_ENDPOINT_URL)
    path_style: bool = False  # bucket in the path, not the host name (MinIO, Ceph RGW)
    retries: int = 4  # retries after the first attempt, in boto3's "standard" mode
    multipart_bytes: int = DEFAULT_MULTIPART_BYTES  # objects this large use a multipart upload


class Storage(Protocol):
    root: str

    def write_bytes(self, relpath: str, data: bytes) -> None: ...
    def write_fileobj(self, relpath: str, source: BinaryIO) -> None: ...
    def read_bytes(self, relpath: str) -> bytes: ...
    def exists(self, relpath: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, relpath: str) -> None: ...
    def url(self, relpath: str) -> str: ...
    def check(self) -> None: ...
    def partial_writes(self) -> list[str]: ...
    def discard_partial_writes(self) -> int: ...


class LocalStorage:
    """A folder on local (or shared) disk."""

    TMP = "_job/tmp"

    def __init__(self, root: str | Path):
        self.root = str(Path(root).absolute())
        self._tmp = Path(self.root, self.TMP)

    def _path(self, relpath: str) -> Path:
        return Path(self.root, relpath)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        self._write(relpath, lambda fh: fh.write(data))

    def write_fileobj(self, relpath: str, source: BinaryIO) -> None:
        self._write(relpath, lambda fh: shutil.copyfileobj(source, fh, 1024 * 1024))

    def _write(self, relpath: str, fill) -> None:
        final = self._path(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp / f"{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)

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

    def check(self) -> None:
        """Refuse a root that cannot be an output folder, before any work starts."""
        root = Path(self.root)
        if root.exists() and not root.is_dir():
            raise StorageError(f"{self.root} is a file, not a folder")

    def partial_writes(self) -> list[str]:
        """Files of writes that never finished (a killed run's); invisible at their final paths."""
        return self.list(self.TMP)

    def discard_partial_writes(self) -> int:
        leftovers = self.partial_writes()
        for path in leftovers:
            self.delete(path)
        return len(leftovers)


def is_s3_uri(location: str) -> bool:
    return str(location).startswith("s3://")


def open_storage(root: str, options: StorageOptions | None = None) -> Storage:
    """The storage for an ``--out`` (or any root): ``s3://bucket/prefix``, or a local folder."""
    root = str(root)
    if is_s3_uri(root):
        from .s3 import S3Storage

        return S3Storage(root, options or StorageOptions())
    if "://" in root and not root.startswith("file://"):
        raise StorageError(f"{root}: unsupported location; use a local path, file:// or s3://bucket/prefix")
    return LocalStorage(root.removeprefix("file://"))
