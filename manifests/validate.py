"""Whole-manifest validation in bounded memory: record batches streamed through the checks, with
only compact per-row state kept (one 64-bit hash of each row's id, 8 bytes a row).

Ids must be unique. A repeated hash is only a candidate: a second pass reads the candidate rows'
ids exactly. Repeats of a given id are refused; repeats of a derived id are exact duplicate rows
(same generation parameters and model), generated once and reported.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .checks import check_batch, check_column_names, check_schema
from .normalise import extra_columns, normalise_batch
from .problems import ManifestError, Problem, ProblemLog
from .schema import BATCH_KEY_COLUMNS, COLUMN_NAMES, DEFAULT_PROMPT_SYNTAX, batch_key_table
from .source import BATCH_ROWS, ManifestSource

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class NormalisedBatch:
    """One record batch of the streaming pass: its first row number, its schema columns normalised
    (defaults, ids, seeds), and the batch as read (every column read: labels too)."""

    offset: int
    table: pa.Table
    batch: pa.RecordBatch


def known_schedulers() -> tuple[str, ...]:
    """Imported on use: the scheduler table lives beside diffusers, which is slow to import."""
    from sdbatch.pipeline.schedulers import SCHEDULER_NAMES

    return SCHEDULER_NAMES


@dataclass
class ManifestReport:
    """What ``sdbatch validate`` prints, and what ``run`` needs to skip exact duplicates."""

    path: str
    files: int
    rows: int = 0
    modes: dict[str, int] = field(default_factory=dict)
    distinct_prompts: int = 0
    # rows per batching group (model, mode, width, height, steps, scheduler, strength), duplicates excluded
    group_sizes: dict[tuple, int] = field(default_factory=dict)
    extra_columns: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    duplicate_row_numbers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def duplicate_rows(self) -> int:
        return len(self.duplicate_row_numbers)

    @property
    def distinct_rows(self) -> int:
        return self.rows - self.duplicate_rows

    def raise_if_refused(self) -> None:
        if self.problems:
            raise ManifestError.from_problems(self.problems)


def _group_counts(table: pa.Table) -> Counter:
    keys = batch_key_table(table)
    counts = keys.group_by(list(BATCH_KEY_COLUMNS), use_threads=False).aggregate([([], "count_all")])
    return Counter({tuple(r[c] for c in BATCH_KEY_COLUMNS): r["count_all"] for r in counts.to_pylist()})


def _group_keys(table: pa.Table) -> list[tuple]:
    """Each row's batching key."""
    return list(zip(*(c.to_pylist() for c in batch_key_table(table).columns)))


def _string_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes (this process only) of a string column, one per row."""
    return np.fromiter((hash(v) for v in values.to_pylist()), dtype=np.int64, count=len(values))


def _given(batch: pa.RecordBatch) -> np.ndarray:
    """Per row: was the id given (true) or derived (false)?"""
    if "id" not in batch.schema.names:
        return np.zeros(batch.num_rows, bool)
    return batch.column("id").is_valid().to_numpy(zero_copy_only=False)


class _Scan:
    """State of one validation pass."""

    def __init__(self, source: ManifestSource, default_model: str, schedulers: Sequence[str],
                 prompt_syntax: str = DEFAULT_PROMPT_SYNTAX):
        self.source = source
        self.default_model = default_model
        self.prompt_syntax = prompt_syntax
        self.schedulers = schedulers
        self.problems = ProblemLog()
        self.id_hashes: list[np.ndarray] = []
        self.id_given: list[np.ndarray] = []
        self.prompt_hashes: list[np.ndarray] = []
        self.modes: Counter = Counter()
        self.groups: Counter = Counter()
        self.rows = 0

    def columns(self) -> list[str]:
        return [n for n in COLUMN_NAMES if n in self.source.column_names]

    def first_pass(self, batch_rows: int, every_column: bool) -> Iterator[NormalisedBatch]:
        known = self.columns()
        for offset, batch in self.source.batches(None if every_column else known, batch_rows):
            checked = batch.select(known) if every_column else batch
            check_batch(checked, offset, self.problems, self.schedulers, self.prompt_syntax)
            table = normalise_batch(checked, self.default_model, self.prompt_syntax)
            yield NormalisedBatch(offset, table, batch)
            self.id_hashes.append(_string_hashes(table.column("id")))
            self.id_given.append(_given(batch))
            self.prompt_hashes.append(_string_hashes(pc.unique(table.column("prompt"))))
            modes, counts = pc.value_counts(table.column("mode")).flatten()
            self.modes.update(dict(zip(modes.to_pylist(), counts.to_pylist())))
            self.groups.update(_group_counts(table))
            self.rows += batch.num_rows

    def candidate_rows(self) -> np.ndarray:
        """Row numbers whose id hash occurs more than once (a superset of the repeated ids).

        Peak memory is two int64 arrays the length of the manifest (16 bytes a row)."""
        hashes = np.concatenate(self.id_hashes) if self.id_hashes else np.zeros(0, np.int64)
        self.id_hashes = []
        ordered = np.sort(hashes)
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        if not len(repeated):
            return np.zeros(0, np.int64)
        slot = np.minimum(np.searchsorted(repeated, hashes), len(repeated) - 1)
        return np.flatnonzero(repeated[slot] == hashes)

    def second_pass(self, candidates: np.ndarray, batch_rows: int) -> np.ndarray:
        """Reads the candidate rows' ids exactly; returns the exact duplicate rows to skip."""
        given = np.concatenate(self.id_given)
        wanted = np.zeros(self.rows, bool)
        wanted[candidates] = True
        first_row: dict[str, int] = {}
        duplicates: list[int] = []
        refused: dict[str, list[int]] = {}
        for offset, batch in self.source.batches(self.columns(), batch_rows):
            mask = wanted[offset: offset + batch.num_rows]
            if not mask.any():
                continue
            rows = np.flatnonzero(mask) + offset
            picked = batch.filter(pa.array(mask))
            table = normalise_batch(picked, self.default_model, self.prompt_syntax)
            for row, row_id, key in zip(rows.tolist(), table.column("id").to_pylist(), _group_keys(table)):
                first = first_row.setdefault(row_id, row)
                if first == row:
                    continue
                if given[row] or given[first]:
                    refused.setdefault(row_id, [first]).append(row)
                else:
                    duplicates.append(row)
                    self.groups[key] -= 1
        if refused:
            rows = sorted(r for rs in refused.values() for r in rs)
            self.problems.add("id", "duplicate ids (each must be unique)", rows=rows, count=len(rows),
                              values=list(refused))
        return np.array(duplicates, np.int64)

    def report(self, duplicates: np.ndarray) -> ManifestReport:
        prompts = np.concatenate(self.prompt_hashes) if self.prompt_hashes else np.zeros(0, np.int64)
        extras = extra_columns(self.source.column_names)
        return ManifestReport(
            path=self.source.path, files=len(self.source.files), rows=self.rows,
            modes=dict(self.modes), distinct_prompts=len(np.unique(prompts)),
            group_sizes={k: v for k, v in self.groups.items() if v > 0},
            extra_columns=extras,
            problems=self.problems.problems, duplicate_row_numbers=duplicates,
        )


class ManifestScan:
    """Every row of ``source`` checked in one streaming pass that its reader pulls: ``batches()``
    yields each record batch normalised (the planner stages them as they come), then ``report()``
    finishes (exact duplicates, the counts) with the problems in it, not raised.

    ``prompt_syntax`` is the job's (``--prompt-syntax``): that of rows that name none. ``labels``
    are columns declared labels (``--label``): carried through even where their name looks like a
    misspelt manifest column. ``every_column``: read the labels too (``run``); otherwise only the
    schema's columns are read, and the labels are checked for UTF-8 alone."""

    def __init__(self, source: ManifestSource, default_model: str = "", schedulers: Sequence[str] | None = None,
                 batch_rows: int = BATCH_ROWS, labels: Sequence[str] = (),
                 prompt_syntax: str = DEFAULT_PROMPT_SYNTAX, every_column: bool = False):
        self.source, self.batch_rows, self.every_column = source, batch_rows, every_column
        self._scan = _Scan(source, default_model, schedulers if schedulers is not None else known_schedulers(),
                           prompt_syntax)
        self._notes = check_column_names(source.column_names, labels, self._scan.problems)
        named = len(self._scan.problems)
        check_schema(source.schema, self._scan.problems)
        self._unreadable = len(self._scan.problems) > named  # columns the row checks cannot read
        self._read = False

    @property
    def refused(self) -> bool:
        """Whether problems were found so far."""
        return bool(self._scan.problems)

    def batches(self) -> Iterator[NormalisedBatch]:
        if not self._unreadable:
            yield from self._scan.first_pass(self.batch_rows, self.every_column)
        self._read = True

    def report(self) -> ManifestReport:
        scan, source = self._scan, self.source
        if not self._read:
            for _ in self.batches():
                pass
        if self._unreadable:
            report = scan.report(np.zeros(0, np.int64))
            report.rows = source.count_rows()
            report.notes = self._notes
            return report
        if not self.every_column:  # the pass read only the schema's columns; labels are read by run
            source.check_utf8(extra_columns(source.column_names), self.batch_rows)
        if scan.rows == 0:
            raise ManifestError(f"{source.path}: the manifest has no rows")
        candidates = scan.candidate_rows()
        duplicates = scan.second_pass(candidates, self.batch_rows) if len(candidates) else np.zeros(0, np.int64)
        if len(duplicates):
            log.info("%d exact duplicate rows in %s: each generated once", len(duplicates), source.path)
        report = scan.report(duplicates)
        report.notes = self._notes
        return report


def validate_source(source: ManifestSource, default_model: str = "",
                    schedulers: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS,
                    labels: Sequence[str] = (), prompt_syntax: str = DEFAULT_PROMPT_SYNTAX) -> ManifestReport:
    """Check every row of ``source`` (``ManifestScan`` read through); problems are in the report."""
    return ManifestScan(source, default_model, schedulers, batch_rows, labels, prompt_syntax).report()
