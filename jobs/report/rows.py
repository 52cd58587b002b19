"""Reading a job's committed rows back from OUT for ``sdbatch report``.

Only committed shards count (``outdir``: a shard is committed when its marker names this job),
and their rows are read from their metadata. Everything is read through ``Storage``, so a local
folder and ``s3://bucket/prefix`` read the same way.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from sdbatch.jobs.store.metadata import METADATA_SCHEMA
from sdbatch.jobs.store.outdir import DamagedOutput, OutputFolder
from sdbatch.jobs.store.paths import PLAN, metadata_path
from sdbatch.jobs.store.storage import Storage


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


def read_job_rows(storage: Storage) -> JobRows:
    """The committed rows of the job in ``storage``; ReportError when there are none to show."""
    folder = OutputFolder(storage)
    try:
        plan = folder.read_plan()
    except DamagedOutput as exc:
        raise ReportError(str(exc)) from None
    if plan is None:
        raise ReportError(f"{storage.root}: not an sdbatch output (no {PLAN})")
    shards = sorted(folder.committed(plan.job_id))
    if not shards:
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
        layout=plan.options.layout,
        committed_shards=len(shards),
        planned_shards=len(plan.shards),
        planned_rows=plan.rows,
        problems=problems,
    )
