"""Reading a job's OUT folder back: ``sdbatch status`` and ``sdbatch verify``."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass

import pyarrow.parquet as pq

from .job import committed_shards, read_plan
from .layouts import layout_named
from .storage import StorageOptions, open_storage
from .worker import MARKER_DIR, metadata_path


@dataclass
class JobStatus:
    out: str
    planned_rows: int
    planned_shards: int
    done_shards: int
    done_rows: int
    ok: int
    failed: int

    @property
    def complete(self) -> bool:
        return self.planned_shards > 0 and self.done_shards == self.planned_shards

    def text(self) -> str:
        if self.planned_shards == 0:
            return f"{self.out}: no job plan found"
        pct = 100 * self.done_rows / max(self.planned_rows, 1)
        state = "complete" if self.complete else "incomplete"
        return (f"{self.out}: {self.done_rows}/{self.planned_rows} rows ({pct:.1f}%), "
                f"{self.done_shards}/{self.planned_shards} shards, {self.ok} ok, {self.failed} failed: {state}")


def job_status(out: str, options: StorageOptions | None = None) -> JobStatus:
    storage = open_storage(out, options)
    storage.check()
    plan = read_plan(storage)
    done = committed_shards(storage)
    if plan is None:
        return JobStatus(out, 0, 0, 0, 0, 0, 0)
    return JobStatus(out, plan.rows, len(plan.shards), len(done), sum(s.rows for s in done.values()),
                     sum(s.ok for s in done.values()), sum(s.failed for s in done.values()))


def verify_outputs(out: str, options: StorageOptions | None = None) -> list[str]:
    """Every problem found, in words; an empty list means the outputs hold every promise."""
    storage = open_storage(out, options)
    storage.check()
    plan = read_plan(storage)
    if plan is None:
        return [f"{out}: no plan (_job/plan.json); not an sdbatch output"]
    layout = layout_named(plan.options.layout)
    problems: list[str] = []
    done = committed_shards(storage)
    planned = {s.name: set(s.row_indices) for s in plan.shards}
    known: set[str] = set()  # files the committed shards account for
    for name, rows in planned.items():
        if name not in done:
            problems.append(f"shard {name}: not committed (no {MARKER_DIR}/{name}.json)")
            continue
        if not storage.exists(metadata_path(name)):
            problems.append(f"shard {name}: committed but {metadata_path(name)} is missing")
            continue
        table = pq.read_table(io.BytesIO(storage.read_bytes(metadata_path(name))))
        counts = Counter(table.column("row_index").to_pylist())
        missing = rows - set(counts)
        extra = set(counts) - rows
        twice = [i for i, c in counts.items() if c > 1]
        if missing:
            problems.append(f"shard {name}: {len(missing)} planned row(s) without a metadata row, e.g. {sorted(missing)[:5]}")
        if extra:
            problems.append(f"shard {name}: metadata rows not in the plan: {sorted(extra)[:5]}")
        if twice:
            problems.append(f"shard {name}: rows with more than one metadata row: {sorted(twice)[:5]}")
        ok = [r for r in table.select(["row_index", "status", "image"]).to_pylist() if r["status"] == "ok"]
        shard_problems, shard_files = layout.check_shard(storage, name, ok)
        problems.extend(shard_problems)
        known |= shard_files
    problems.extend(f"stray file {p}: no ok metadata row refers to it"
                    for p in storage.list(layout.prefix) if p not in known)
    planned_metadata = {metadata_path(n) for n in planned}
    problems.extend(f"stray file {p}: not a planned shard's metadata"
                    for p in storage.list("metadata") if p not in planned_metadata)
    problems.extend(f"partial file {p} left by an interrupted write" for p in storage.partial_writes())
    return problems
