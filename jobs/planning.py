"""Planning a job in Arrow, in the manifest's one validating pass.

Each record batch validation reads is also normalised there (defaults, ids); the planner takes it
as it goes by: groups its rows by the batching key (``manifests.schema.BATCH_KEY_COLUMNS``) and
appends them to per-group buffers, and every time a group fills a shard its rows are written, once,
as a Parquet file in a local staging folder. The driver then publishes the files as
``OUT/_job/inputs/<shard>.parquet`` (see ``outdir``); an actor receives only the shard's name.
The driver never holds the manifest as Python objects: its memory is the buffers (bounded by
``BUFFER_BYTES``) and validation's 16 bytes a row.

The plan is deterministic: the same manifest and options give the same shards, numbered in the
order they fill (then the part-filled groups, in the order the groups first appeared); rows keep
manifest order inside a shard. Exact duplicate rows, known only after the whole pass, are removed
from the few shards that hold them at the end.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sdbatch.jobs.store.layouts import SPLIT_WORD_PATTERN
from sdbatch.jobs.store.outdir import ShardPlan
from sdbatch.jobs.store.paths import shard_name
from sdbatch.manifests.ids import ContentDigest, safe_key
from sdbatch.manifests.rows import ROW_INDEX, with_resolved_images
from sdbatch.manifests.schema import BATCH_KEY_COLUMNS, COLUMN_NAMES, DEFAULT_PROMPT_SYNTAX, batch_key_table
from sdbatch.manifests.source import BATCH_ROWS, ManifestSource
from sdbatch.manifests.validate import ManifestReport, ManifestScan

from .adapter_checks import AdapterUsage
from .model_checks import ModelColumnUsage

log = logging.getLogger(__name__)

# Rows waiting for their group's shard to fill are kept under this many bytes; past it, the largest
# group is written as a shorter shard (only manifests with very many batching groups get there).
BUFFER_BYTES = 256 * 2**20
_POSITION = "__position"


@dataclass
class _Written:
    plan: ShardPlan
    first_row: int
    last_row: int


@dataclass
class _Group:
    parts: list[pa.Table] = field(default_factory=list)
    rows: int = 0
    nbytes: int = 0


class ShardPlanner:
    """Takes the normalised record batches of the validating pass (``ManifestScan.batches``) and
    writes shards."""

    def __init__(self, staging: Path, shard_size: int, base: Path | str, buffer_bytes: int | None = None):
        if shard_size < 1:
            raise ValueError("shard size must be at least 1")
        self.staging = Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.base = base
        self.buffer_bytes = BUFFER_BYTES if buffer_bytes is None else buffer_bytes
        self.digest = ContentDigest()
        self.usage = ModelColumnUsage()  # the models rows name, and their family-specific columns
        self.adapters = AdapterUsage()  # the LoRAs rows name, the embedding tokens they write
        self._groups: dict[tuple, _Group] = {}  # insertion order: first seen first
        self._buffered = 0
        self._written: list[_Written] = []
        self.split_word_ids: list[str] = []  # a few ids that would confuse datasets (see layouts)
        self.split_word_count = 0

    # -- during the pass ---------------------------------------------------------------------------
    def add(self, offset: int, table: pa.Table, batch: pa.RecordBatch) -> None:
        labels = pa.Table.from_batches([batch]).select([n for n in batch.schema.names if n not in COLUMN_NAMES])
        self.digest.update(table, labels)
        self._note_split_words(table.column("id"))
        rows = with_resolved_images(table, self.base)
        rows = rows.append_column(ROW_INDEX, pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64)))
        for name, values in zip(labels.column_names, labels.columns):
            rows = rows.append_column(name, values)
        keys = batch_key_table(table).append_column(_POSITION, pa.array(np.arange(table.num_rows)))
        grouped = keys.group_by(list(BATCH_KEY_COLUMNS), use_threads=False).aggregate([(_POSITION, "list")])
        positions = grouped.column(f"{_POSITION}_list").to_pylist()
        key_values = list(zip(*(grouped.column(c).to_pylist() for c in BATCH_KEY_COLUMNS)))
        for key, where in sorted(zip(key_values, positions), key=lambda kw: kw[1][0]):
            self._append(key, rows.take(pa.array(where, pa.int64())))
        while self._buffered > self.buffer_bytes:
            largest = max(self._groups, key=lambda k: self._groups[k].nbytes)
            self._emit(largest, self._groups[largest].rows)

    def _note_split_words(self, ids) -> None:
        """Ids whose file names (their keys) hold a split word: the few ids that match are keyed."""
        hits = pc.match_substring_regex(pc.binary_join_element_wise(ids, pa.scalar(""), "."), SPLIT_WORD_PATTERN)
        if not pc.any(hits).as_py():
            return
        pattern = re.compile(SPLIT_WORD_PATTERN)
        found = [i for i in pc.filter(ids, hits).to_pylist() if pattern.search(f"{safe_key(i)}.")]
        self.split_word_count += len(found)
        self.split_word_ids += found[: 3 - len(self.split_word_ids)]

    def _append(self, key: tuple, rows: pa.Table) -> None:
        group = self._groups.setdefault(key, _Group())
        group.parts.append(rows)
        group.rows += rows.num_rows
        group.nbytes += rows.nbytes
        self._buffered += rows.nbytes
        while group.rows >= self.shard_size:
            self._emit(key, self.shard_size)

    def _emit(self, key: tuple, count: int) -> None:
        """Write the first ``count`` buffered rows of group ``key`` as the next shard."""
        group = self._groups[key]
        rows = pa.concat_tables(group.parts)
        shard, rest = rows.slice(0, count), rows.slice(count)
        self._buffered -= group.nbytes
        group.parts, group.rows, group.nbytes = ([rest], rest.num_rows, rest.nbytes) if rest.num_rows else ([], 0, 0)
        self._buffered += group.nbytes
        if not group.rows:
            del self._groups[key]
        name = shard_name(len(self._written))
        pq.write_table(shard, self.staging / f"{name}.parquet", compression="zstd")
        index = shard.column(ROW_INDEX)
        self._written.append(_Written(ShardPlan(name, shard.num_rows), pc.min(index).as_py(), pc.max(index).as_py()))

    # -- after the pass ----------------------------------------------------------------------------
    def finish(self, duplicate_rows: np.ndarray) -> list[ShardPlan]:
        """Write the part-filled groups, drop exact duplicate rows, and return the shards."""
        for key in list(self._groups):
            self._emit(key, self._groups[key].rows)
        duplicates = np.sort(np.asarray(duplicate_rows, np.int64))
        shards = []
        for written in self._written:
            lo, hi = np.searchsorted(duplicates, [written.first_row, written.last_row + 1])
            plan = written.plan if lo == hi else self._drop_rows(written.plan, duplicates[lo:hi])
            if plan.rows:
                shards.append(plan)
        return shards

    def _drop_rows(self, plan: ShardPlan, rows: np.ndarray) -> ShardPlan:
        path = self.staging / f"{plan.name}.parquet"
        table = pq.read_table(path)
        kept = table.filter(pc.invert(pc.is_in(table.column(ROW_INDEX), value_set=pa.array(rows))))
        if kept.num_rows == table.num_rows:
            return plan
        if kept.num_rows:
            pq.write_table(kept, path, compression="zstd")
        else:
            path.unlink()
        return ShardPlan(plan.name, kept.num_rows)

    @property
    def models(self) -> set[str]:
        return self.usage.models

    @property
    def fingerprint(self) -> str:
        return self.digest.hexdigest()

    def staged_file(self, shard: str) -> Path:
        return self.staging / f"{shard}.parquet"


@dataclass
class PlannedManifest:
    report: ManifestReport
    planner: ShardPlanner
    shards: list[ShardPlan]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


def plan_manifest(source: ManifestSource, default_model: str, shard_size: int, staging: Path,
                  batch_rows: int = BATCH_ROWS, labels: Sequence[str] = (),
                  prompt_syntax: str = DEFAULT_PROMPT_SYNTAX, refuse: bool = True) -> PlannedManifest:
    """Validate ``source`` and plan its shards into ``staging``; ``labels``: columns declared labels
    (see ``ManifestScan``); ``prompt_syntax``: the job's. Rows with problems refuse it with
    ``ManifestError`` (``refuse=False``: the problems stay in the report, and no shard is made)."""
    planner = ShardPlanner(staging, shard_size, source.base)
    scan = ManifestScan(source, default_model, batch_rows=batch_rows, labels=labels, prompt_syntax=prompt_syntax,
                        every_column=True)
    for part in scan.batches():  # the one streaming pass, pulled
        planner.usage.add(part.offset, part.table)  # the models and adapters rows ask for: every batch
        planner.adapters.add(part.offset, part.table)
        if not scan.refused:  # rows are staged only while the manifest can still run
            planner.add(part.offset, part.table, part.batch)
    report = scan.report()
    report.problems += planner.adapters.row_problems()
    if refuse:
        report.raise_if_refused()
    if report.problems:
        return PlannedManifest(report, planner, [])
    return PlannedManifest(report, planner, planner.finish(report.duplicate_row_numbers))


def planned_batches(shards: Sequence[ShardPlan], batch_size: int) -> int:
    """The batches ``run`` makes of these shards: each shard holds one batching group (its rows
    after exact duplicates are dropped), cut into batches of ``batch_size``. (A worker may cut a
    group once more where rows without a width take different sizes from their init images.)"""
    return sum(math.ceil(shard.rows / batch_size) for shard in shards)
