"""Reading a manifest's image cell: a local path, a ``file://`` or ``s3://`` URI, or the encoded
image's bytes.

The content hash is the SHA-256 of the bytes as read (``sha256sum FILE`` gives the same), so an
output can be traced to the exact file that made it. Relative paths were already resolved
against the manifest's folder when the manifest was read.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sdbatch.manifests.remote import S3Options, is_s3_uri

from .storage import StorageError


class ImageCellError(ValueError):
    """An image cell that cannot be read or decoded; the message is the cause, for one column."""


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


def _read_s3(uri: str, storage: S3Options) -> bytes:
    from .s3 import read_object

    try:
        return read_object(uri, storage)
    except FileNotFoundError:
        raise ImageCellError(f"object not found: {uri}") from None
    except StorageError as exc:
        raise ImageCellError(str(exc)) from None


def read_cell_bytes(cell: str | bytes, storage: S3Options = S3Options()) -> bytes:
    if isinstance(cell, bytes):
        return cell
    if is_s3_uri(cell):
        return _read_s3(cell, storage)
    path = _local_path(cell)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageCellError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise ImageCellError(f"is a folder, not an image file: {path}") from None
    except OSError as exc:
        raise ImageCellError(f"cannot read {path}: {exc.strerror or exc}") from None


def decode_image(data: bytes, source: str) -> Image.Image:
    """The decoded image, fully loaded (so a truncated file fails here, not later)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise ImageCellError(f"not an image: {source} holds {len(data)} bytes in no image format "
                             "PIL reads") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageCellError(f"cannot decode the image in {source}: {exc}") from None
    return ImageOps.exif_transpose(image)


def load_cell_image(cell: str | bytes, storage: S3Options = S3Options()) -> CellImage:
    data = read_cell_bytes(cell, storage)
    if isinstance(cell, bytes):
        source = "the cell's bytes"
    else:
        source = cell if is_s3_uri(cell) else str(_local_path(cell))
    return CellImage(decode_image(data, source), hashlib.sha256(data).hexdigest())


def depth_values(image: Image.Image) -> np.ndarray:
    """A depth map image as float32 (H, W): 16-bit and float images keep their precision, anything
    else is read as 8-bit grayscale."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return np.asarray(image, dtype=np.float32)
    return np.asarray(image.convert("L"), dtype=np.float32)
