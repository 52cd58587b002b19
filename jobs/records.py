"""The metadata contract: one ``ResultRecord`` per manifest row, written as Parquet.

Column names are read by other tools: keep them.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.manifests.schema import GenerationRow


@dataclass(frozen=True)
class InputTrace:
    """What a row's input images were: their content hashes (SHA-256 of the bytes read) and, for
    the init image, its size as given and whether it was resized to the row's size."""

    init_image_sha256: str | None = None
    mask_image_sha256: str | None = None
    depth_map_sha256: str | None = None
    init_image_width: int | None = None
    init_image_height: int | None = None
    init_image_resized: bool | None = None


@dataclass
class ResultRecord:
    id: str
    key: str
    status: str  # "ok" | "error"
    error: str | None
    image: str | None  # path relative to OUT
    prompt: str
    negative_prompt: str
    seed: int
    guidance_scale: float
    steps: int
    width: int | None
    height: int | None
    scheduler: str | None
    model: str
    mode: str
    strength: float | None
    row_index: int
    shard: str
    model_revision: str | None = None
    seconds: float | None = None  # wall time of the row's batch, divided by its rows
    init_image_sha256: str | None = None
    mask_image_sha256: str | None = None
    depth_map_sha256: str | None = None
    init_image_width: int | None = None
    init_image_height: int | None = None
    init_image_resized: bool | None = None
    extras: tuple[tuple[str, Any], ...] = field(default=())

    @classmethod
    def for_row(cls, row: GenerationRow, shard: str, trace: InputTrace | None = None, **kw) -> "ResultRecord":
        base = dict(
            id=row.id, key=row.key, prompt=row.prompt, negative_prompt=row.negative_prompt,
            seed=row.seed, guidance_scale=row.guidance_scale, steps=row.steps, width=row.width,
            height=row.height, scheduler=row.scheduler, model=row.model, mode=row.mode,
            strength=row.strength if row.mode != "txt2img" else None, row_index=row.row_index,
            shard=shard, extras=row.extras, status="ok", error=None, image=None,
        )
        base.update(asdict(trace or InputTrace()))
        base.update(kw)
        return cls(**base)


METADATA_SCHEMA = pa.schema([
    ("id", pa.string()), ("key", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("image", pa.string()), ("prompt", pa.string()), ("negative_prompt", pa.string()),
    ("seed", pa.uint64()), ("guidance_scale", pa.float64()), ("steps", pa.int64()),
    ("width", pa.int64()), ("height", pa.int64()), ("scheduler", pa.string()),
    ("model", pa.string()), ("mode", pa.string()), ("strength", pa.float64()),
    ("row_index", pa.int64()), ("shard", pa.string()), ("model_revision", pa.string()),
    ("seconds", pa.float64()),
    ("init_image_sha256", pa.string()), ("mask_image_sha256", pa.string()),
    ("depth_map_sha256", pa.string()), ("init_image_width", pa.int64()),
    ("init_image_height", pa.int64()), ("init_image_resized", pa.bool_()),
])
_RESERVED = set(METADATA_SCHEMA.names)


def records_to_table(records: list[ResultRecord]) -> pa.Table:
    columns = {name: [getattr(r, name) for r in records] for name in METADATA_SCHEMA.names}
    table = pa.table(columns, schema=METADATA_SCHEMA)
    extra_names = [name for name, _ in records[0].extras] if records else []
    for i, name in enumerate(extra_names):
        out_name = name if name not in _RESERVED else f"manifest_{name}"
        table = table.append_column(out_name, pa.array([r.extras[i][1] for r in records]))
    return table


def table_to_parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()
