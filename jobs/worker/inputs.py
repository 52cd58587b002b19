"""Manifest rows -> engine-ready rows, one row at a time, before any batch is formed.

Here each row's image cells are read, decoded, hashed and checked against its mode and model, and
its effective settings decided (its size may come from its init image). So a row with bad input
fails alone, with an error naming the row, the column and the cause, and never takes its batch
neighbours down; and batches are formed by effective settings (``batch_key``).

Size rules (``width``/``height`` are the generated image's size):

* no init image (txt2img): a missing side is the model's default size;
* with an init image: a missing side is the init image's, rounded down to a multiple of the VAE
  scale factor (8), as diffusers does; when the result differs from the image's own size the init
  image (and mask) are resized to it, Lanczos, as diffusers' ``VaeImageProcessor`` resizes;
* a side taken from the init image is at most 8192, as a manifest's width and height (an image
  with a larger side needs the row's width and height: it is then resized to them);
* every side must be a multiple of the VAE scale factor and at least the model's minimum size
  (``LoadedModel.min_size``: one latent cell at the UNet's deepest level, 64 for SD 1.x/2.x), and
  so must the init image itself; the mask must be exactly the init image's size;
* a depth map may have any size (it is interpolated to the latent size, as diffusers does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Hashable

import numpy as np
from diffusers.image_processor import VaeImageProcessor
from PIL import Image

from sdbatch.jobs.row_mapping import batch_values, row_input_values
from sdbatch.jobs.store.metadata import InputTrace
from sdbatch.manifests.loras import LoraSyntaxError, parse_loras
from sdbatch.manifests.schema import (
    IMAGE_COLUMNS,
    IMAGE_MODES,
    MODE_IMAGES,
    MODE_OPTIONAL_IMAGES,
    MODES,
    SIZE_RANGE,
    GenerationRow,
)
from sdbatch.pipeline.batch import BatchSettings, LoraWeight, RowInput
from sdbatch.pipeline.conditioning import text_facts
from sdbatch.pipeline.families import check_row_fields
from sdbatch.pipeline.loading import LoadedModel
from sdbatch.pipeline.modes import ModeError, check_model_supports, strength_steps
from sdbatch.pipeline.refiner import check_refiner

from .adapter_files import AdapterError, LoraFiles
from .image_cells import CellAccess, CellImage, ImageCellError, depth_values, load_cell_image

log = logging.getLogger(__name__)


class InputError(ValueError):
    """One row's input that cannot run: which column, why, and what kind of error it is (see
    ``records.ERROR_KINDS``: the row's own input, its model, or the storage it was read from)."""

    def __init__(self, column: str, cause: str, kind: str = "input"):
        super().__init__(f"column {column}: {cause}")
        self.column = column
        self.cause = cause
        self.kind = kind


@dataclass(frozen=True)
class ReadyRow:
    """A row that can join a batch: its effective settings, its engine input, its input trace."""

    row: GenerationRow
    settings: BatchSettings
    input: RowInput
    trace: InputTrace


@dataclass(frozen=True)
class FailedRow:
    """A row refused before batching, with an error naming the row, the column and the cause."""

    row: GenerationRow
    error: str
    trace: InputTrace
    kind: str = "input"


@dataclass(frozen=True)
class RowImages:
    """A row's decoded image cells (None where the cell is empty)."""

    init: CellImage | None = None
    mask: CellImage | None = None
    depth: CellImage | None = None

    def trace(self, resized: bool | None = None) -> InputTrace:
        return InputTrace(
            init_image_sha256=self.init.sha256 if self.init else None,
            mask_image_sha256=self.mask.sha256 if self.mask else None,
            depth_map_sha256=self.depth.sha256 if self.depth else None,
            init_image_width=self.init.image.width if self.init else None,
            init_image_height=self.init.image.height if self.init else None,
            init_image_resized=resized if self.init else None,
        )


def batch_key(ready: ReadyRow) -> Hashable:
    """Rows with equal keys can share a batch: same model and effective settings (LoRAs included)."""
    return ready.row.model, ready.settings


def lora_order(ready: ReadyRow) -> str:
    """Batches in a shard go in this order, so LoRA sets change as seldom as they can."""
    return ready.row.loras or ""


def describe(row: GenerationRow, exc: InputError) -> str:
    return f"row {row.id!r} (manifest row {row.row_index}), {exc}"


# -- checks that need no model ----------------------------------------------------------------
def check_columns(row: GenerationRow) -> None:
    """What validation leaves to the row (a bad row fails alone): an image column its mode does not
    use, and a strength that leaves no denoising step at the row's steps. Validation has already
    refused unknown modes and schedulers, missing images, and values out of range."""
    needed, optional = MODE_IMAGES[row.mode], MODE_OPTIONAL_IMAGES.get(row.mode, ())
    for column in IMAGE_COLUMNS:
        if getattr(row, column) is not None and column not in needed + optional:
            users = [m for m in MODES if column in MODE_IMAGES[m] + MODE_OPTIONAL_IMAGES.get(m, ())]
            raise InputError(column, f"given, but mode {row.mode} does not use it (used by {', '.join(users)})")
    if row.mode in IMAGE_MODES and strength_steps(row.steps, row.strength) < 1:
        raise InputError("strength", f"{row.strength} with {row.steps} steps leaves no denoising step "
                                     "(int(steps * strength) must be at least 1)")


def read_images(row: GenerationRow, cells: CellAccess = CellAccess()) -> RowImages:
    loaded: dict[str, CellImage | None] = {}
    for column in IMAGE_COLUMNS:
        cell = getattr(row, column)
        try:
            loaded[column] = None if cell is None else load_cell_image(cell, cells)
        except ImageCellError as exc:
            raise InputError(column, str(exc), exc.kind) from None
    return RowImages(init=loaded["init_image"], mask=loaded["mask_image"], depth=loaded["depth_map"])


# -- checks against the model -----------------------------------------------------------------
def _check_side(column: str, value: int, model: LoadedModel) -> None:
    f, smallest = model.vae_scale_factor, model.min_size
    if value % f:
        raise InputError(column, f"{value} is not a multiple of {f} (this model's VAE scale factor)")
    if value < smallest:
        raise InputError(column, f"{value} is below this model's minimum of {smallest} pixels")


def effective_size(row: GenerationRow, init: Image.Image | None, model: LoadedModel) -> tuple[int, int]:
    for column in ("width", "height"):
        if getattr(row, column) is not None:
            _check_side(column, getattr(row, column), model)
    if init is None:
        return row.width or model.default_size, row.height or model.default_size
    f, smallest = model.vae_scale_factor, model.min_size
    if init.width < smallest or init.height < smallest:
        raise InputError("init_image", f"image too small: {init.width}x{init.height}, this model needs at "
                                       f"least {smallest}x{smallest} pixels")
    largest = SIZE_RANGE[1]
    if (row.width is None and init.width > largest) or (row.height is None and init.height > largest):
        raise InputError("init_image", f"image is {init.width}x{init.height}: a size taken from the image must be "
                                       f"at most {largest}; give the row a width and height to resize it")
    return row.width or init.width - init.width % f, row.height or init.height - init.height % f


def depth_array(depth: CellImage) -> np.ndarray:
    """The depth map scaled to [0, 1] in float32: 16-bit maps would overflow float16 (max 65504),
    and the engine's min-max normalisation after (linear) interpolation is unchanged by it."""
    values = depth_values(depth.image)
    low, high = values.min(), values.max()
    if high == low:
        raise InputError("depth_map", "the depth map is constant: no depth for the model to follow")
    return (values - low) / (high - low)


def lora_weights(row: GenerationRow, loras: LoraFiles | None) -> tuple[LoraWeight, ...]:
    """The row's LoRAs as files on this machine (their names resolved with ``loras``)."""
    try:
        entries = parse_loras(row.loras)
    except LoraSyntaxError as exc:
        raise InputError("loras", f"{row.loras!r}: {exc}") from None
    if entries and loras is None:
        raise InputError("loras", "this worker has no LoRA resolver")
    out = []
    for name, weight in entries:
        try:
            found = loras.resolve(name)
        except AdapterError as exc:
            raise InputError("loras", str(exc), kind="model") from None
        out.append(LoraWeight(found.path, weight, found.sha256, name))
    return tuple(out)


def make_ready(row: GenerationRow, images: RowImages, model: LoadedModel,
               refiner: LoadedModel | None = None, loras: LoraFiles | None = None) -> ReadyRow:
    """``refiner``: the model that takes over a row with a ``refiner_start``; ``loras``: where the
    row's LoRA names are found."""
    try:
        check_model_supports(model, row.mode, has_depth_map=images.depth is not None)
    except ModeError as exc:
        raise InputError(exc.column, str(exc)) from None
    init = images.init.image.convert("RGB") if images.init else None
    mask = images.mask.image.convert("L") if images.mask else None
    if init is not None and mask is not None and mask.size != init.size:
        raise InputError("mask_image", f"mask is {mask.width}x{mask.height} but init_image is "
                                       f"{init.width}x{init.height}; they must match")
    width, height = effective_size(row, init, model)
    resized = init is not None and init.size != (width, height)
    if resized:
        resizer = VaeImageProcessor(vae_scale_factor=model.vae_scale_factor)
        init = resizer.resize(init, height, width)
        mask = resizer.resize(mask, height, width) if mask is not None else None
    # the columns the engine takes as they are come from row_mapping; here, what the worker makes
    settings = BatchSettings(**batch_values(row), width=width, height=height,
                             strength=row.strength if row.mode in IMAGE_MODES else BatchSettings.strength,
                             loras=lora_weights(row, loras))
    depth = depth_array(images.depth) if images.depth else None
    row_input = RowInput(**row_input_values(row), init_image=init, mask_image=mask, depth_map=depth)
    try:
        if row.refiner_start is not None:
            if refiner is None:
                raise ModeError("refiner_start", "needs --refiner MODEL (the SDXL model that takes over)")
            check_refiner(model, refiner, settings)
        check_row_fields(row_input, model, *([refiner] if row.refiner_start is not None else []))
    except ModeError as exc:
        raise InputError(exc.column, str(exc)) from None
    facts = text_facts(row_input, model)
    trace = replace(images.trace(resized), prompt_tokens=facts.tokens, truncated=facts.truncated,
                    lora_files=tuple({"name": l.name, "weight": l.weight, "sha256": l.sha256}
                                     for l in settings.loras) or None)
    return ReadyRow(row, settings, row_input, trace)


# -- the whole step ---------------------------------------------------------------------------
def prepare_row(row: GenerationRow, model_for: Callable[[str], LoadedModel],
                cells: CellAccess = CellAccess(), refiner: str | None = None,
                loras: LoraFiles | None = None) -> ReadyRow | FailedRow:
    """``cells``: how image cells may be read; ``refiner``: the --refiner model's name (loaded
    through ``model_for`` for rows that use it); ``loras``: where LoRA names are found."""
    images = RowImages()
    try:
        check_columns(row)
        images = read_images(row, cells)
        try:
            model = model_for(row.model)
            refined = model_for(refiner) if refiner and row.refiner_start is not None else None
        except Exception as exc:  # noqa: BLE001 - a model that cannot load fails its rows, not the job
            raise InputError("model", f"cannot load the model: {exc}", kind="model") from None
        return make_ready(row, images, model, refined, loras)
    except InputError as exc:
        error = describe(row, exc)
        log.warning("%s", error)
        return FailedRow(row, error, images.trace(), exc.kind)


def prepare_rows(rows: list[GenerationRow], model_for: Callable[[str], LoadedModel],
                 cells: CellAccess = CellAccess(), refiner: str | None = None,
                 loras: LoraFiles | None = None) -> list[ReadyRow | FailedRow]:
    """Prepare every row (image cells read as ``cells`` allows); a model that fails to load is
    tried once per call, not once per row."""
    failed: dict[str, Exception] = {}

    def cached(name: str) -> LoadedModel:
        if name in failed:
            raise failed[name]
        try:
            return model_for(name)
        except Exception as exc:  # noqa: BLE001
            failed[name] = exc
            raise

    return [prepare_row(row, cached, cells, refiner, loras) for row in rows]
