"""The report's local image files, next to the page: one thumbnail per ok row (made here, from the
image read through ``Storage``), and a local copy of the full image wherever a browser cannot open
the original from disk (an ``s3://`` output, or a member of a webdataset tar). A local output in
the files layout is linked where it is, not copied.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from sdbatch.jobs.store.storage import LocalStorage, Storage

log = logging.getLogger(__name__)

THUMBS, FULL = "thumbs", "full"  # sub-folders of the page's files folder
THUMB_QUALITY = 88
READ_THREADS = 8  # images read (S3 GETs) and thumbnailed at once


@dataclass(frozen=True)
class ImageFiles:
    """A row's files for the page; paths relative to the page's folder."""

    thumb: str | None = None
    full: str | None = None
    thumb_size: tuple[int, int] | None = None
    problem: str | None = None  # why there is no thumbnail (the ok row's image could not be read)


def _relative(path: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(path, page_dir)).as_posix()


class ReportImages:
    def __init__(self, storage: Storage, layout: str, files_dir: Path, page_dir: Path, thumb_size: int):
        self.storage, self.layout = storage, layout
        self.files_dir, self.page_dir, self.thumb_size = files_dir, page_dir, thumb_size
        # a local files-layout output is linked in place; anything else is copied beside the page
        self.link_originals = isinstance(storage, LocalStorage) and layout == "files"

    def make(self, rows: list[dict], done: Callable[[int], None] | None = None) -> dict[int, ImageFiles]:
        """ImageFiles per ok row's row_index. ``done(n)`` is told as rows finish (progress)."""
        (self.files_dir / THUMBS).mkdir(parents=True, exist_ok=True)
        if not self.link_originals:
            (self.files_dir / FULL).mkdir(parents=True, exist_ok=True)
        ok = [r for r in rows if r.get("status") == "ok"]
        result: dict[int, ImageFiles] = {}
        with ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="report-images") as pool:
            if self.layout == "webdataset":
                by_tar: dict[str, list[dict]] = defaultdict(list)
                for row in ok:
                    by_tar[(row.get("image") or "").partition("#")[0]].append(row)
                for tar_name, tar_rows in by_tar.items():  # one tar in memory at a time
                    members = self._tar_members(tar_name)
                    read = (lambda row, m=members: self._member(m, row))
                    self._collect(pool.map(lambda row, read=read: self._files(row, read), tar_rows), result, done)
            else:
                self._collect(pool.map(lambda row: self._files(row, self._file), ok), result, done)
        return result

    @staticmethod
    def _collect(items, result: dict, done) -> None:
        for row_index, files in items:
            result[row_index] = files
            if done:
                done(1)

    def _tar_members(self, tar_name: str) -> dict[str, bytes] | Exception:
        try:
            with tarfile.open(fileobj=io.BytesIO(self.storage.read_bytes(tar_name))) as tar:
                return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        except Exception as exc:  # noqa: BLE001 - every row of the tar then shows the cause
            return exc

    @staticmethod
    def _member(members: dict[str, bytes] | Exception, row: dict) -> bytes:
        if isinstance(members, Exception):
            raise members
        return members[row["image"].partition("#")[2]]

    def _file(self, row: dict) -> bytes:
        return self.storage.read_bytes(row["image"])

    def _files(self, row: dict, read: Callable[[dict], bytes]) -> tuple[int, ImageFiles]:
        index, ref = row["row_index"], row.get("image") or ""
        try:
            data = read(row)
            with Image.open(io.BytesIO(data)) as image:
                image.thumbnail((self.thumb_size, self.thumb_size))
                thumb = image.convert("RGB")
        except Exception as exc:  # noqa: BLE001 - the cell says why, the report goes on
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.info("row %s: image %s could not be read: %s", index, ref, reason)
            return index, ImageFiles(problem=f"image {ref} could not be read ({reason})")
        thumb_path = self.files_dir / THUMBS / f"{index}.jpg"
        thumb.save(thumb_path, quality=THUMB_QUALITY)
        if self.link_originals:
            full = Path(self.storage.root, ref)
        else:
            full = self.files_dir / FULL / f"{index}.{ref.rsplit('.', 1)[-1].lower()}"
            full.write_bytes(data)
        return index, ImageFiles(_relative(thumb_path, self.page_dir), _relative(full, self.page_dir), thumb.size)
