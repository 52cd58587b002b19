"""Reading a manifest's image cell: a local path, a ``file://`` or ``s3://`` URI, or the encoded
image's bytes.

The content hash is the SHA-256 of the bytes as read (``sha256sum FILE`` gives the same), so an
output can be traced to the exact file that made it. Relative paths were already resolved
against the manifest's folder when the manifest was read.

A manifest may come from someone else, so a cell is read under a ``CellAccess``:

* local paths only inside its ``roots`` (``sdbatch run``: the manifest's folder and its subfolders,
  and ``--allow-path`` folders), checked on the path as written and on the path with its symbolic
  links resolved, before the file is touched; a path outside gets one message whatever the file
  is (so errors never tell whether a file outside exists, or its size). ``s3://`` cells are governed
  by the credentials, not by roots;
* only regular files (or objects): a FIFO, a device such as ``/dev/zero`` or a socket fails its row
  at once, never hangs the job or reads without end;
* at most ``max_bytes`` bytes (``--max-image-bytes``), and at most ``max_pixels`` pixels, checked
  from the image's header before it is decoded (a small file can hold a huge image).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sdbatch.jobs.store.storage import StorageError
from sdbatch.manifests.remote import S3Options, is_s3_uri
from sdbatch.manifests.schema import SIZE_RANGE

DEFAULT_MAX_IMAGE_BYTES = 64 * 2**20
# The largest image a row may ask for (8192 x 8192): no input image needs more pixels than that.
MAX_IMAGE_PIXELS = SIZE_RANGE[1] ** 2
OUTSIDE_ROOTS = ("outside the folders image paths are read from (the manifest's folder and its subfolders, "
                 "and --allow-path folders)")


class ImageCellError(ValueError):
    """An image cell that cannot be read or decoded; the message is the cause, for one column.
    ``kind``: "input" (the cell's own fault) or "storage" (the store failed: worth a rerun)."""

    def __init__(self, message: str, kind: str = "input"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class CellAccess:
    """What image cells may be read, and how much of each (see the module doc)."""

    s3: S3Options = field(default_factory=S3Options)
    roots: tuple[str, ...] | None = None  # local folders cells may name; None: anywhere (trusted callers)
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS


@dataclass(frozen=True)
class CellImage:
    """A decoded image cell (EXIF orientation applied) and the SHA-256 of its encoded bytes."""

    image: Image.Image
    sha256: str


def _local_path(cell: str) -> Path:
    if "://" not in cell:
        return Path(cell)
    uri = urlparse(cell)
    if uri.scheme != "file":
        raise ImageCellError(f"cannot read {cell!r}: {uri.scheme}:// URIs are not supported "
                             "(local paths, file:// and s3:// URIs, and image bytes are)")
    return Path(unquote(uri.path))


def _too_large(source: str, limit: int) -> ImageCellError:
    return ImageCellError(f"{source} is larger than --max-image-bytes ({limit:,} bytes)")


def _read_s3(uri: str, access: CellAccess) -> bytes:
    from sdbatch.jobs.store.s3 import ObjectTooLarge, read_object

    try:
        return read_object(uri, access.s3, max_bytes=access.max_bytes)
    except FileNotFoundError:
        raise ImageCellError(f"object not found: {uri}") from None
    except ObjectTooLarge:
        raise _too_large(uri, access.max_bytes) from None
    except StorageError as exc:
        raise ImageCellError(str(exc), kind="storage") from None


def _inside(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def confined_path(cell: str, roots: tuple[str, ...] | None) -> Path:
    """The local file a cell names, if it lies inside ``roots`` both as written and with its
    symbolic links resolved (the resolved path is the one to open); else the one refusal that
    says nothing about the file."""
    path = _local_path(cell)
    if roots is None:
        return path
    written = os.path.normpath(os.path.abspath(path))
    if _inside(written, [os.path.normpath(os.path.abspath(r)) for r in roots]):
        resolved = os.path.realpath(written)
        if _inside(resolved, [os.path.realpath(r) for r in roots]):
            return Path(resolved)
    raise ImageCellError(f"{cell}: {OUTSIDE_ROOTS}")


def _read_local(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit`` of them. The file is looked at before it is opened
    (a FIFO or device is never opened) and again once open (it may have been swapped)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            kind = "a folder" if path.is_dir() else "not a regular file (a pipe, device or socket)"
            raise ImageCellError(f"{path} is {kind}, not an image file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ImageCellError(f"file not found: {path}") from None
    except OSError as exc:
        raise ImageCellError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ImageCellError(f"{path} is not a regular file (a pipe, device or socket), not an image file")
        if info.st_size > limit:
            raise _too_large(str(path), limit)
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise ImageCellError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew since
        raise _too_large(str(path), limit)
    return data


def read_cell_bytes(cell: str | bytes, access: CellAccess = CellAccess()) -> bytes:
    if isinstance(cell, bytes):
        if len(cell) > access.max_bytes:
            raise _too_large("the cell's bytes", access.max_bytes)
        return cell
    if is_s3_uri(cell):
        return _read_s3(cell, access)
    return _read_local(confined_path(cell, access.roots), access.max_bytes)


def decode_image(data: bytes, source: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """The decoded image, fully loaded (so a truncated file fails here, not later); its size is
    read from the header and checked first, so an oversized image is never decoded."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > max_pixels:
            raise ImageCellError(f"{source} holds a {image.width}x{image.height} image: more than "
                                 f"{max_pixels:,} pixels ({SIZE_RANGE[1]}x{SIZE_RANGE[1]}), not decoded")
        image.load()
    except UnidentifiedImageError:
        raise ImageCellError(f"not an image: {source} holds {len(data)} bytes in no image format "
                             "PIL reads") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, ImageCellError):
            raise
        raise ImageCellError(f"cannot decode the image in {source}: {exc}") from None
    return ImageOps.exif_transpose(image)


def load_cell_image(cell: str | bytes, access: CellAccess = CellAccess()) -> CellImage:
    data = read_cell_bytes(cell, access)
    if isinstance(cell, bytes):
        source = "the cell's bytes"
    else:
        source = cell if is_s3_uri(cell) else str(_local_path(cell))
    return CellImage(decode_image(data, source, access.max_pixels), hashlib.sha256(data).hexdigest())


def depth_values(image: Image.Image) -> np.ndarray:
    """A depth map image as float32 (H, W): 16-bit and float images keep their precision, anything
    else is read as 8-bit grayscale."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(image, dtype=np.float32)
    return np.asarray(image.convert("L"), dtype=np.float32)
