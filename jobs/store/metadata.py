"""The metadata contract: one ``ResultRecord`` per manifest row, written as Parquet.

Column names are read by other tools: keep them.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import asdict, dataclass, field, fields

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.jobs.row_mapping import record_values
from sdbatch.manifests.schema import DEFAULT_PROMPT_SYNTAX, GenerationRow

from .runtime_info import runtime_info


@dataclass(frozen=True)
class InputTrace:
    """What a row's inputs were: its images' content hashes (SHA-256 of the bytes read) and, for
    the init image, its size as given and whether it was resized to the row's size; its prompt's
    token count and whether plain truncation cut any of its texts; the LoRA files it ran with
    (name, weight, SHA-256)."""

    init_image_sha256: str | None = None
    mask_image_sha256: str | None = None
    depth_map_sha256: str | None = None
    init_image_width: int | None = None
    init_image_height: int | None = None
    init_image_resized: bool | None = None
    prompt_tokens: int | None = None
    truncated: bool | None = None
    lora_files: tuple[dict, ...] | None = None


# Why a row failed, for reruns and for users: its own input, its model, the storage (worth a
# rerun: ``run`` retries these rows), or something inside sdbatch or the machine.
ERROR_KINDS = ("input", "model", "storage", "internal")


@dataclass
class ResultRecord:
    id: str
    key: str
    status: str  # "ok" | "error"
    error: str | None
    image: str | None  # path relative to OUT; webdataset layout: "shards/<shard>.tar#<member>"
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
    seconds: float | None = None  # wall time of the row's batch, divided by its rows (cost per image)
    latency_seconds: float | None = None  # wall time of the row's batch (how long the image took)
    timestamp: dt.datetime | None = None  # UTC, when the row's outcome was decided
    sdbatch_version: str | None = None
    diffusers_version: str | None = None
    torch_version: str | None = None
    device_name: str | None = None  # e.g. "NVIDIA H100 80GB HBM3", or the CPU's model name
    error_kind: str | None = None  # one of ERROR_KINDS for an error row
    guidance_rescale: float = 0.0
    prompt_2: str | None = None  # SDXL conditioning columns, as the row gave them (None: the default)
    negative_prompt_2: str | None = None
    original_width: int | None = None
    original_height: int | None = None
    crop_top: int | None = None
    crop_left: int | None = None
    refiner: str | None = None  # the --refiner that took over the row, and when
    refiner_start: float | None = None
    prompt_syntax: str = DEFAULT_PROMPT_SYNTAX
    clip_skip: int | None = None
    loras: str | None = None  # the row's LoRAs in normal form (name:weight,...)
    quantize: str | None = None  # a lossy speed switch the image was made with (fp8), else None
    trace: InputTrace = field(default_factory=InputTrace)  # written as its own columns

    @classmethod
    def for_row(cls, row: GenerationRow, shard: str, trace: InputTrace | None = None, **kw) -> "ResultRecord":
        base = dict(**record_values(row), key=row.key, row_index=row.row_index, shard=shard, status="ok",
                    error=None, image=None, trace=trace or InputTrace())
        base.update(kw)
        return cls(**base)

    @classmethod
    def failed(cls, row: GenerationRow, shard: str, error: str, kind: str,
               trace: InputTrace | None = None) -> "ResultRecord":
        """An error row: the row's parameters, why it failed, and what software decided so."""
        return cls.for_row(row, shard, trace, status="error", error=error, error_kind=kind, timestamp=utc_now(),
                           **asdict(runtime_info(None)))


def table_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of a zstd Parquet file (what the store writes)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


METADATA_SCHEMA = pa.schema([
    ("id", pa.string()), ("key", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("image", pa.string()), ("prompt", pa.string()), ("negative_prompt", pa.string()),
    ("seed", pa.uint64()), ("guidance_scale", pa.float64()), ("steps", pa.int64()),
    ("width", pa.int64()), ("height", pa.int64()), ("scheduler", pa.string()),
    ("model", pa.string()), ("mode", pa.string()), ("strength", pa.float64()),
    ("row_index", pa.int64()), ("shard", pa.string()), ("model_revision", pa.string()),
    ("seconds", pa.float64()),
    ("latency_seconds", pa.float64()), ("timestamp", pa.timestamp("us", tz="UTC")),
    ("sdbatch_version", pa.string()), ("diffusers_version", pa.string()),
    ("torch_version", pa.string()), ("device_name", pa.string()), ("error_kind", pa.string()),
    ("guidance_rescale", pa.float64()), ("prompt_2", pa.string()), ("negative_prompt_2", pa.string()),
    ("original_width", pa.int64()), ("original_height", pa.int64()), ("crop_top", pa.int64()),
    ("crop_left", pa.int64()), ("refiner", pa.string()), ("refiner_start", pa.float64()),
    ("quantize", pa.string()),
    ("init_image_sha256", pa.string()), ("mask_image_sha256", pa.string()),
    ("depth_map_sha256", pa.string()), ("init_image_width", pa.int64()),
    ("init_image_height", pa.int64()), ("init_image_resized", pa.bool_()),
    ("prompt_syntax", pa.string()), ("clip_skip", pa.int64()), ("loras", pa.string()),
    ("lora_files", pa.list_(pa.struct([("name", pa.string()), ("weight", pa.float64()), ("sha256", pa.string())]))),
    ("prompt_tokens", pa.int64()), ("truncated", pa.bool_()),
])
_RESERVED = set(METADATA_SCHEMA.names)


_TRACE_COLUMNS = {f.name for f in fields(InputTrace)}


def _column(record: ResultRecord, name: str):
    value = getattr(record.trace if name in _TRACE_COLUMNS else record, name)
    return list(value) if isinstance(value, tuple) else value


def label_names(labels: list[str]) -> list[str]:
    """The metadata column name of each manifest label column: its own, or ``manifest_<name>`` where
    that would shadow one of ours (again, until the names are all distinct)."""
    used = set(_RESERVED)
    out = []
    for name in labels:
        while name in used:
            name = f"manifest_{name}"
        used.add(name)
        out.append(name)
    return out


def records_to_table(records: list[ResultRecord], labels: pa.Table | None = None) -> pa.Table:
    """The metadata table: our columns, then the manifest's label columns (one row per record, in
    the records' order) with the Arrow types the manifest gave them."""
    columns = {name: [_column(r, name) for r in records] for name in METADATA_SCHEMA.names}
    table = pa.table(columns, schema=METADATA_SCHEMA)
    if labels is not None:
        for name, values in zip(label_names(labels.column_names), labels.columns):
            table = table.append_column(name, values)
    return table


def record_json(record: ResultRecord, labels: pa.Table | None = None) -> bytes:
    """One record (and its one-row ``labels``) as a JSON object with the metadata's column names
    (the webdataset ``.json``)."""
    body = records_to_table([record], labels).to_pylist()[0]
    return json.dumps(body, default=_json_value, ensure_ascii=False, sort_keys=False).encode()


def _json_value(value):
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return None  # binary manifest columns (image bytes) are not repeated per sample
    return str(value)
