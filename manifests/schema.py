"""The manifest schema: every column sdbatch reads, with its kind, default and allowed range, and
the typed row.

One definition serves validation (types, ranges, refusals), normalisation (defaults), the README
table and ``sdbatch validate``. A manifest row becomes a ``GenerationRow`` only after
normalisation (defaults filled, id and seed derived), so everything downstream of ``manifests``
sees complete, typed rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


MODES = ("txt2img", "img2img", "inpaint", "depth2img")
# How a row's prompts are read (the engine's pipeline/text.py implements each).
PROMPT_SYNTAXES = ("plain", "a1111", "compel")
IMAGE_COLUMNS = ("init_image", "mask_image", "depth_map")

# The image columns each mode needs a value in, and those it may have (depth2img estimates its depth
# map when absent); every other image column must be empty.
MODE_IMAGES: dict[str, tuple[str, ...]] = {
    "txt2img": (),
    "img2img": ("init_image",),
    "inpaint": ("init_image", "mask_image"),
    "depth2img": ("init_image",),
}
MODE_OPTIONAL_IMAGES: dict[str, tuple[str, ...]] = {"depth2img": ("depth_map",)}
# Modes that start from an image (they read `strength`); they may run with an empty prompt, as
# diffusers' image-conditioned pipelines accept "".
IMAGE_MODES = tuple(m for m in MODES if MODE_IMAGES[m])
MODES_WITHOUT_PROMPT = IMAGE_MODES

SEED_MAX = 2**64 - 1
STEPS_RANGE = (1, 1000)
GUIDANCE_RANGE = (0.0, 100.0)
GUIDANCE_RESCALE_RANGE = (0.0, 1.0)
CONDITIONING_SIZE_RANGE = (0, 16384)  # SDXL's original size and crop offsets, in pixels
SIZE_RANGE = (8, 8192)
SIZE_MULTIPLE = 8  # the VAE factor of SD models: latents are width/8 x height/8
CLIP_SKIP_RANGE = (0, 48)  # a model's own text encoder may allow fewer: checked when it is loaded


# Column kinds: which Arrow types a manifest may use for the column, and what they normalise to.
STRING, ID, INT, SEED, FLOAT, IMAGE = "string", "id", "int", "seed", "float", "image"
KIND_DESCRIPTIONS = {
    STRING: "a string",
    ID: "a string or an integer",
    INT: "an integer",
    SEED: "an unsigned integer",
    FLOAT: "a number",
    IMAGE: "a string (path/URI) or binary (encoded image bytes)",
}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    default: Any
    doc: str
    required: bool = False
    type: pa.DataType | None = None  # the Arrow type after normalisation; None: kept as given
    # Columns added after the first version are part of a derived id only where a row sets them
    # (to something other than their default), so ids of rows that do not use them never change.
    since: int = 1
    families: tuple[str, ...] = ()  # model families that use the column; () = every family


COLUMNS: tuple[Column, ...] = (
    Column("id", ID, None, "unique row id; names the outputs (derived from the row when absent or null)",
           type=pa.string()),
    Column("prompt", STRING, None,
           "text prompt; may be empty only in img2img, inpaint and depth2img rows", required=True,
           type=pa.string()),
    Column("negative_prompt", STRING, "", "negative prompt (used by rows with guidance > 1)",
           type=pa.string()),
    Column("seed", SEED, None, "noise seed, 0 to 2**64-1 (derived from the id when absent)",
           type=pa.uint64()),
    Column("mode", STRING, "txt2img", " | ".join(MODES), type=pa.string()),
    Column("guidance_scale", FLOAT, 7.5,
           f"classifier-free guidance, {GUIDANCE_RANGE[0]:g} to {GUIDANCE_RANGE[1]:g}; <= 1 turns it off",
           type=pa.float64()),
    Column("steps", INT, 50, f"denoising steps, {STEPS_RANGE[0]} to {STEPS_RANGE[1]}", type=pa.int64()),
    Column("width", INT, None,
           f"image width, a multiple of {SIZE_MULTIPLE} from {SIZE_RANGE[0]} to {SIZE_RANGE[1]} "
           "(model default when absent)", type=pa.int64()),
    Column("height", INT, None,
           f"image height, a multiple of {SIZE_MULTIPLE} from {SIZE_RANGE[0]} to {SIZE_RANGE[1]} "
           "(model default when absent)", type=pa.int64()),
    Column("scheduler", STRING, None, "scheduler name (the model's own when absent)", type=pa.string()),
    Column("strength", FLOAT, 0.8, "img2img / inpaint / depth2img strength, in (0, 1]", type=pa.float64()),
    Column("init_image", IMAGE, None, "input image (img2img, inpaint, depth2img): path/URI or bytes"),
    Column("mask_image", IMAGE, None, "inpainting mask, white repaints (inpaint): path/URI or bytes"),
    Column("depth_map", IMAGE, None, "depth map (depth2img; estimated when absent): path/URI or bytes"),
    Column("model", STRING, None, "per-row model (hub id or diffusers folder); --model when absent",
           type=pa.string()),
    Column("guidance_rescale", FLOAT, 0.0,
           f"rescale of the guided prediction (diffusers' guidance_rescale), {GUIDANCE_RESCALE_RANGE[0]:g} "
           f"to {GUIDANCE_RESCALE_RANGE[1]:g}; 0 = off", type=pa.float64(), since=2),
    Column("prompt_2", STRING, None, "SDXL: the second text encoder's prompt (default: prompt)",
           type=pa.string(), since=2, families=("sdxl",)),
    Column("negative_prompt_2", STRING, None,
           "SDXL: the second text encoder's negative prompt (default: negative_prompt)", type=pa.string(),
           since=2, families=("sdxl",)),
    Column("original_width", INT, None, "SDXL size conditioning: the original image width (default: width)",
           type=pa.int64(), since=2, families=("sdxl",)),
    Column("original_height", INT, None, "SDXL size conditioning: the original image height (default: height)",
           type=pa.int64(), since=2, families=("sdxl",)),
    Column("crop_top", INT, None, "SDXL crop conditioning: top of the crop in pixels (default 0)",
           type=pa.int64(), since=2, families=("sdxl",)),
    Column("crop_left", INT, None, "SDXL crop conditioning: left of the crop in pixels (default 0)",
           type=pa.int64(), since=2, families=("sdxl",)),
    Column("refiner_start", FLOAT, None,
           "SDXL base + refiner: the fraction of the steps after which --refiner takes over, in (0, 1); "
           "empty = no refiner", type=pa.float64(), since=2, families=("sdxl",)),
    Column("prompt_syntax", STRING, "plain",
           f"how the prompts are read: {' | '.join(PROMPT_SYNTAXES)} (default: --prompt-syntax, itself plain)",
           type=pa.string(), since=2),
    Column("clip_skip", INT, None,
           "text-encoder layers to skip from the end, as diffusers' clip_skip (1 = the penultimate layer; "
           "AUTOMATIC1111's 'Clip skip 2')", type=pa.int64(), since=2),
    Column("loras", STRING, None,
           "LoRAs and weights, name:weight[,name:weight...]; names resolve against --lora-dir, or are "
           "paths, s3:// URIs or hub ids", type=pa.string(), since=2),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
DEFAULTS = {c.name: c.default for c in COLUMNS if c.default is not None}
DEFAULT_MODE = DEFAULTS["mode"]
DEFAULT_PROMPT_SYNTAX = DEFAULTS["prompt_syntax"]  # the job's --prompt-syntax, itself a default
COLUMNS_BY_NAME = {c.name: c for c in COLUMNS}
# The columns that make a row's output: its derived id is a hash of these (after defaults).
GENERATION_COLUMNS = tuple(n for n in COLUMN_NAMES if n != "id")

# The batching key: rows equal in these columns (after defaults; strength only in image modes;
# loras in its normal form, see ``loras.py``) can share one batch. The planner groups rows into
# shards by it; the worker refines it with what only the row's images decide (a size taken from an
# init image).
BATCH_KEY_COLUMNS = ("model", "mode", "width", "height", "steps", "scheduler", "strength", "refiner_start",
                     "loras")


def batch_key_table(table: pa.Table) -> pa.Table:
    """The batching key columns of normalised rows, ``strength`` null where the mode ignores it."""
    import pyarrow.compute as pc

    keys = table.select(list(BATCH_KEY_COLUMNS))
    image_mode = pc.is_in(table.column("mode"), value_set=pa.array(IMAGE_MODES, pa.string()))
    strength = pc.if_else(image_mode, table.column("strength"), pa.scalar(None, pa.float64()))
    return keys.set_column(BATCH_KEY_COLUMNS.index("strength"), "strength", strength)


ImageCell = str | bytes | None


@dataclass(frozen=True)
class GenerationRow:
    """One normalised manifest row: everything needed to generate and name its output. Built by
    ``rows.rows_of`` from a normalised table; the field defaults are the schema's (``DEFAULTS``)."""

    row_index: int
    key: str  # path-safe output name
    id: str  # the id as the user gave it (or the derived one)
    prompt: str
    seed: int
    negative_prompt: str = DEFAULTS["negative_prompt"]
    mode: str = DEFAULTS["mode"]
    guidance_scale: float = DEFAULTS["guidance_scale"]
    steps: int = DEFAULTS["steps"]
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None
    strength: float = DEFAULTS["strength"]
    init_image: ImageCell = None
    mask_image: ImageCell = None
    depth_map: ImageCell = None
    model: str = ""
    guidance_rescale: float = DEFAULTS["guidance_rescale"]
    prompt_2: str | None = None
    negative_prompt_2: str | None = None
    original_width: int | None = None
    original_height: int | None = None
    crop_top: int | None = None
    crop_left: int | None = None
    refiner_start: float | None = None
    prompt_syntax: str = DEFAULTS["prompt_syntax"]
    clip_skip: int | None = None
    loras: str | None = None  # normal form (loras.py); an a1111 prompt's <lora:...> tags moved here
    extras: tuple[tuple[str, Any], ...] = field(default=())

    def batch_key(self) -> tuple:
        """This row's value of ``BATCH_KEY_COLUMNS`` (as ``batch_key_table`` gives it)."""
        return tuple(getattr(self, c) if c != "strength" or self.mode in IMAGE_MODES else None
                     for c in BATCH_KEY_COLUMNS)
