"""Where each manifest column goes, side by side: into the engine (a ``RowInput`` or
``BatchSettings`` field, or the choice of model) and into the metadata (a ``ResultRecord`` or
``InputTrace`` field). The worker (``worker/inputs.make_ready``) and the store
(``ResultRecord.for_row``) build their dataclasses from these tables, and
tests/test_row_mapping.py fails when a schema column has no line here. A new per-row column is its
schema entry, its line here, its engine use and its tests.

No torch here: the store (``status``, ``verify``) imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sdbatch.manifests.schema import IMAGE_MODES, GenerationRow


@dataclass(frozen=True)
class Goes:
    """One column's two destinations. ``engine``: ``row.FIELD`` (``RowInput``), ``batch.FIELD``
    (``BatchSettings``), ``model`` (picks the loaded model) or ``""`` (not for the engine);
    ``metadata``: a ``ResultRecord`` field, or ``trace.FIELD`` (``InputTrace``, what the worker
    found reading the input). ``made``: the worker makes the engine's value from the column (an
    image read and resized, a LoRA name resolved to its file, a size taken from the init image)
    instead of passing it as it is."""

    engine: str
    metadata: str
    made: bool = False


ROW_COLUMNS: dict[str, Goes] = {
    "id": Goes("", "id"),
    "prompt": Goes("row.prompt", "prompt"),
    "negative_prompt": Goes("row.negative_prompt", "negative_prompt"),
    "seed": Goes("row.seed", "seed"),
    "mode": Goes("batch.mode", "mode"),
    "guidance_scale": Goes("row.guidance_scale", "guidance_scale"),
    "steps": Goes("batch.steps", "steps"),
    "width": Goes("batch.width", "width", made=True),  # absent: the init image's or the model's
    "height": Goes("batch.height", "height", made=True),
    "scheduler": Goes("batch.scheduler", "scheduler"),
    "strength": Goes("batch.strength", "strength", made=True),  # image modes only (metadata: else empty)
    "init_image": Goes("row.init_image", "trace.init_image_sha256", made=True),
    "mask_image": Goes("row.mask_image", "trace.mask_image_sha256", made=True),
    "depth_map": Goes("row.depth_map", "trace.depth_map_sha256", made=True),
    "model": Goes("model", "model"),
    "guidance_rescale": Goes("row.guidance_rescale", "guidance_rescale"),
    "prompt_2": Goes("row.prompt_2", "prompt_2"),
    "negative_prompt_2": Goes("row.negative_prompt_2", "negative_prompt_2"),
    "original_width": Goes("row.original_width", "original_width"),
    "original_height": Goes("row.original_height", "original_height"),
    "crop_top": Goes("row.crop_top", "crop_top"),
    "crop_left": Goes("row.crop_left", "crop_left"),
    "refiner_start": Goes("batch.refiner_start", "refiner_start"),
    "prompt_syntax": Goes("row.prompt_syntax", "prompt_syntax"),
    "clip_skip": Goes("row.clip_skip", "clip_skip"),
    "loras": Goes("batch.loras", "loras", made=True),  # engine: the files; metadata: the normal form
}


def _passed(prefix: str) -> tuple[tuple[str, str], ...]:
    """(column, field) of the columns that go as they are to ``prefix`` (``row.`` or ``batch.``)."""
    return tuple((column, goes.engine.removeprefix(prefix)) for column, goes in ROW_COLUMNS.items()
                 if goes.engine.startswith(prefix) and not goes.made)


# read once: the worker asks for every row
_TO_ROW_INPUT = _passed("row.")
_TO_BATCH = _passed("batch.")
_TO_RECORD = tuple((column, goes.metadata) for column, goes in ROW_COLUMNS.items()
                   if not goes.metadata.startswith("trace."))


def row_input_values(row: GenerationRow) -> dict[str, Any]:
    """The ``RowInput`` fields a row's columns give as they are (the images are the worker's)."""
    return {field: getattr(row, column) for column, field in _TO_ROW_INPUT}


def batch_values(row: GenerationRow) -> dict[str, Any]:
    """The ``BatchSettings`` fields a row's columns give as they are (size, strength and LoRAs are
    the worker's)."""
    return {field: getattr(row, column) for column, field in _TO_BATCH}


def record_values(row: GenerationRow) -> dict[str, Any]:
    """The ``ResultRecord`` fields of a row's columns: as the row gave them, ``strength`` only in
    the modes that read it."""
    values = {field: getattr(row, column) for column, field in _TO_RECORD}
    if row.mode not in IMAGE_MODES:
        values["strength"] = None
    return values
