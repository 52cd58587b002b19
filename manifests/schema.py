"""The manifest schema: every column sdbatch reads, with its type and default, and the typed row.

A manifest row becomes a ``GenerationRow`` only after normalisation (defaults filled, id and seed
derived), so everything downstream of ``manifests`` sees complete, typed rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

MODES = ("txt2img", "img2img", "inpaint", "depth2img")
IMAGE_COLUMNS = ("init_image", "mask_image", "depth_map")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    default: Any
    doc: str


COLUMNS: tuple[Column, ...] = (
    Column("id", pa.string(), None, "unique row id; names the outputs (derived when absent)"),
    Column("prompt", pa.string(), None, "text prompt (required)"),
    Column("negative_prompt", pa.string(), "", "negative prompt"),
    Column("seed", pa.uint64(), None, "noise seed, 0..2**64-1 (derived from the id when absent)"),
    Column("mode", pa.string(), "txt2img", "txt2img | img2img | inpaint | depth2img"),
    Column("guidance_scale", pa.float64(), 7.5, "classifier-free guidance scale; <= 1 turns guidance off"),
    Column("steps", pa.int64(), 50, "denoising steps"),
    Column("width", pa.int64(), None, "image width (model default when absent)"),
    Column("height", pa.int64(), None, "image height (model default when absent)"),
    Column("scheduler", pa.string(), None, "scheduler name (model's own when absent)"),
    Column("strength", pa.float64(), 0.8, "img2img / inpaint / depth2img strength in (0, 1]"),
    Column("init_image", pa.string(), None, "input image: path/URI or encoded bytes"),
    Column("mask_image", pa.string(), None, "inpainting mask (white repaints): path/URI or bytes"),
    Column("depth_map", pa.string(), None, "depth map for depth2img: path/URI or bytes"),
    Column("model", pa.string(), None, "per-row model (hub id or diffusers folder); --model when absent"),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)

ImageCell = str | bytes | None


@dataclass(frozen=True)
class GenerationRow:
    """One normalised manifest row: everything needed to generate and name its output."""

    row_index: int
    key: str  # path-safe output name
    id: str  # the id as the user gave it (or the derived one)
    prompt: str
    seed: int
    negative_prompt: str = ""
    mode: str = "txt2img"
    guidance_scale: float = 7.5
    steps: int = 50
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    strength: float = 0.8
    init_image: ImageCell = None
    mask_image: ImageCell = None
    depth_map: ImageCell = None
    model: str = ""
    extras: tuple[tuple[str, Any], ...] = field(default=())

    def group_key(self) -> tuple:
        """Rows with equal keys can share one batch."""
        strength = self.strength if self.mode != "txt2img" else None
        return (self.model, self.mode, self.width, self.height, self.steps, self.scheduler, strength)
