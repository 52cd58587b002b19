"""Encoding generated pixels: PNG, JPEG or WebP, each carrying the ``parameters`` text.

PNG keeps it in a ``parameters`` text chunk (tEXt, or iTXt when the text is not Latin-1), JPEG and
WebP in the EXIF UserComment (UTF-16 with the ``UNICODE`` marker): where Stable Diffusion tools
look for it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

IMAGE_FORMATS = ("png", "jpeg", "webp")
_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
DEFAULT_QUALITY = 95
PNG_COMPRESS_LEVEL = 4  # zlib level: most of level 9's size at a fraction of its time


@dataclass(frozen=True)
class ImageFormat:
    """``name``: png (lossless), jpeg or webp; ``quality`` (1-100) applies to jpeg and webp only."""

    name: str = "png"
    quality: int | None = None

    def __post_init__(self):
        if self.name not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format {self.name!r}; choose one of {', '.join(IMAGE_FORMATS)}")
        if self.quality is not None and self.name == "png":
            raise ValueError("--quality applies to jpeg and webp; png is lossless")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"--quality {self.quality}: must be in 1..100")

    @property
    def extension(self) -> str:
        return _EXTENSIONS[self.name]

    @property
    def effective_quality(self) -> int | None:
        return None if self.name == "png" else (self.quality or DEFAULT_QUALITY)


def user_comment(text: str) -> bytes:
    return b"UNICODE\0" + text.encode("utf-16-be")


def read_user_comment(data: bytes) -> str:
    if data.startswith(b"UNICODE\0"):
        return data[8:].decode("utf-16-be")
    return data[8:].decode("ascii", errors="replace")


def encode_image(pixels: np.ndarray, fmt: ImageFormat, parameters: str) -> bytes:
    image = Image.fromarray(pixels)
    buf = io.BytesIO()
    if fmt.name == "png":
        info = PngInfo()
        info.add_text("parameters", parameters)
        image.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, pnginfo=info)
    else:
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = user_comment(parameters)
        image.save(buf, format=fmt.name.upper(), quality=fmt.effective_quality, exif=exif)
    return buf.getvalue()


def embedded_parameters(data: bytes) -> str | None:
    """The ``parameters`` text an encoded image carries (what the tools above read)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "PNG":
            return image.info.get("parameters")
        comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
        return read_user_comment(comment) if comment else None
