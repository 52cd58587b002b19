"""One small storage interface for job outputs: local disk, or S3-compatible object stores
(``s3://bucket/prefix``, see ``s3.py``).

Every write is whole or absent. A local file is written under ``_job/tmp`` and renamed into place;
an object is written by a single put or a completed multipart upload. So a reader never sees a
half-written file. Local folders can also be renamed whole (``atomic_folders``), which lets a
shard's images appear at their final paths all at once, at commit.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol

from . import paths



class StorageError(RuntimeError):
    """A storage operation that failed; the message names the location, the operation and the cause
    (never a credential)."""


class Storage(Protocol):
    root: str
    atomic_folders: bool  # replace_folder() publishes a whole folder at once

    def write_bytes(self, relpath: str, data: bytes) -> None: ...
    def write_fileobj(self, relpath: str, source: BinaryIO) -> None: ...
    def staging_folder(self) -> Path: ...
    def discard_staging(self, folder: Path) -> None: ...
    def move_in(self, relpath: str, local_path: str | Path) -> None: ...
    def read_bytes(self, relpath: str) -> bytes: ...
    def exists(self, relpath: str) -> bool: ...
    def create_exclusive(self, relpath: str, data: bytes) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def sizes(self, prefix: str) -> dict[str, int]: ...
    def delete(self, relpath: str) -> None: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def replace_folder(self, source: str, target: str) -> None: ...
    def url(self, relpath: str) -> str: ...
    def check(self) -> None: ...
    def check_writable(self) -> None: ...
    def remove_if_empty(self) -> None: ...
    def partial_writes(self) -> list[str]: ...
    def discard_partial_writes(self) -> int: ...


class LocalStorage:
    """A folder on local (or shared) disk."""

    TMP = paths.TMP
    atomic_folders = True

    def __init__(self, root: str | Path):
        self.root = str(Path(root).absolute())
        self._tmp = Path(self.root, self.TMP)
        self._root_existed = Path(self.root).exists()

    def _path(self, relpath: str) -> Path:
        return Path(self.root, relpath)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        self._write(relpath, lambda fh: fh.write(data))

    def write_fileobj(self, relpath: str, source: BinaryIO) -> None:
        self._write(relpath, lambda fh: shutil.copyfileobj(source, fh, 1024 * 1024))

    def staging_folder(self) -> Path:
        """A new local folder whose files ``move_in`` can rename into place (same filesystem)."""
        folder = self._tmp / f"staging-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        return folder

    def discard_staging(self, folder: Path) -> None:
        """Remove a staging folder, and the folders it needed if they are empty now (a refused
        job leaves no OUT behind)."""
        shutil.rmtree(folder, ignore_errors=True)
        self.remove_if_empty()

    def remove_if_empty(self) -> None:
        """Remove _job/tmp, _job and OUT itself (if this run created it) where they are empty."""
        for path in (self._tmp, self._tmp.parent) + (() if self._root_existed else (Path(self.root),)):
            try:
                path.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break

    def move_in(self, relpath: str, local_path: str | Path) -> None:
        """Move a local file to ``relpath`` (renamed when on the same filesystem, else copied)."""
        final = self._path(relpath)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(local_path, final)
        except OSError:
            with open(local_path, "rb") as source:
                self.write_fileobj(relpath, source)
            Path(local_path).unlink(missing_ok=True)

    def _write(self, relpath: str, fill) -> None:
        final = self._path(relpath)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{final.parent}: cannot create the folder: {exc.strerror or exc}") from None
        tmp = self._tmp / f"{uuid.uuid4().hex}.partial"
        try:
            with open(tmp, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as exc:
            raise StorageError(f"{final}: cannot write: {exc.strerror or exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def read_bytes(self, relpath: str) -> bytes:
        return self._path(relpath).read_bytes()

    def exists(self, relpath: str) -> bool:
        return self._path(relpath).exists()

    def create_exclusive(self, relpath: str, data: bytes) -> bool:
        """Write ``relpath`` whole unless it exists (one link: atomic, even between hosts sharing
        the folder over NFS); returns whether this call created it."""
        final = self._path(relpath)
        tmp = self._tmp / f"{uuid.uuid4().hex}.partial"
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links: an exclusive create, then one write
                try:
                    fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
            return True
        except OSError as exc:
            raise StorageError(f"{final}: cannot write: {exc.strerror or exc}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every file under ``prefix`` and its size in bytes."""
        base = self._path(prefix)
        if not base.exists():
            return {}
        out = {}
        for path in base.rglob("*"):
            try:
                info = path.stat()
            except OSError:
                continue
            if path.is_file():
                out[str(path.relative_to(self.root))] = info.st_size
        return out

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def delete(self, relpath: str) -> None:
        self._path(relpath).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        path = self._path(prefix)
        if not path.exists():
            return 0
        count = len(self.list(prefix))
        shutil.rmtree(path, ignore_errors=True)
        return count

    def replace_folder(self, source: str, target: str) -> None:
        """Move folder ``source`` to ``target`` (replacing what is there) with one rename."""
        src, dst = self._path(source), self._path(target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.replace(src, dst)
            return
        # left by an attempt that died between this rename and its marker, or a committed shard
        # being redone: swapped with two renames, so the folder is never missing for long
        old = self._tmp / f"replaced-{uuid.uuid4().hex}"
        self._tmp.mkdir(parents=True, exist_ok=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)

    def url(self, relpath: str) -> str:
        return str(self._path(relpath))

    def check(self) -> None:
        """Refuse a root that cannot be an output folder, before any work starts."""
        root = Path(self.root)
        for parent in (root, *root.parents):
            if parent.exists():
                if not parent.is_dir():
                    raise StorageError(f"{self.root}: {parent} is a file, not a folder")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise StorageError(f"{self.root}: {parent} is not writable")
                return

    def check_writable(self) -> None:
        """``check``, then OUT made (if new) and a file written and removed in it: an unwritable
        OUT is refused before any work, in one line."""
        self.check()
        root = Path(self.root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".sdbatch-probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            self.remove_if_empty()
            raise StorageError(f"{self.root}: cannot write here: {exc.strerror or exc}") from None

    def partial_writes(self) -> list[str]:
        """Files of writes (and plans) that never finished (a killed run's); invisible at their
        final paths."""
        return self.list(self.TMP)

    def discard_partial_writes(self) -> int:
        return self.delete_prefix(self.TMP)
