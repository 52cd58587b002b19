"""Reading a job's committed rows back from OUT for ``sdbatch report``.

Only committed shards count: a shard is committed when its marker ``_job/shards/<shard>.json``
exists, and its rows are then in ``metadata/<shard>.parquet``. Everything is read through
``Storage``, so a local folder and ``s3://bucket/prefix`` read the same way.

The paths below mirror ``worker.marker_path`` / ``worker.metadata_path`` and ``job.PLAN_PATH``:
importing those modules would import torch (through the engine), and the report must start fast.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from .records import METADATA_SCHEMA
from .storage import Storage

MARKER_DIR = "_job/shards"
PLAN_PATH = "_job/plan.json"


def metadata_path(shard: str) -> str:
    return f"metadata/{shard}.parquet"


class ReportError(ValueError):
    """Why no report can be made (OUT unreadable, a column that does not exist); one line."""


@dataclass
class JobRows:
    """Every committed metadata row of a job (ok and error), in manifest order."""

    out: str
    rows: list[dict]
    columns: list[str]  # metadata columns in their order; struct columns flattened ("labels.style")
    label_columns: list[str]  # the user's own columns (everything the metadata contract does not name)
    layout: str  # "files" or "webdataset"
    committed_shards: int
    planned_shards: int | None  # None: the plan could not be read
    planned_rows: int | None
    problems: list[str] = field(default_factory=list)  # what could not be read, for the page's notes


def committed_shard_names(storage: Storage) -> list[str]:
    return sorted(path[len(MARKER_DIR) + 1 : -len(".json")] for path in storage.list(MARKER_DIR)
                  if path.endswith(".json"))


def _read_plan(storage: Storage) -> dict | None:
    if not storage.exists(PLAN_PATH):
        return None
    return json.loads(storage.read_bytes(PLAN_PATH))


def _layout_of(plan: dict | None, rows: list[dict]) -> str:
    if plan is not None:
        return plan.get("options", {}).get("layout", "files")
    return "webdataset" if any("#" in (r.get("image") or "") for r in rows) else "files"


def read_job_rows(storage: Storage) -> JobRows:
    """The committed rows of the job in ``storage``; ReportError when there are none to show."""
    plan = _read_plan(storage)
    shards = committed_shard_names(storage)
    if not shards:
        if plan is None:
            raise ReportError(f"{storage.root}: not an sdbatch output (no {PLAN_PATH}, no committed shards)")
        raise ReportError(f"{storage.root}: no shard is committed yet; nothing to show")
    tables, problems = [], []
    for shard in shards:
        path = metadata_path(shard)
        if not storage.exists(path):
            problems.append(f"shard {shard} is committed but {path} is missing (run sdbatch verify); "
                            "its rows are not shown")
            continue
        tables.append(pq.read_table(io.BytesIO(storage.read_bytes(path))))
    if not tables:
        raise ReportError(f"{storage.root}: {problems[0]}")
    table = pa.concat_tables(tables, promote_options="permissive").flatten()
    table = table.sort_by("row_index")
    rows = table.to_pylist()
    known = set(METADATA_SCHEMA.names)
    labels = [name for name in table.column_names if name not in known]
    return JobRows(
        out=storage.root,
        rows=rows,
        columns=table.column_names,
        label_columns=labels,
        layout=_layout_of(plan, rows),
        committed_shards=len(shards),
        planned_shards=len(plan["shards"]) if plan else None,
        planned_rows=plan.get("rows") if plan else None,
        problems=problems,
    )
