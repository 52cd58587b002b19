"""Sweeps: a manifest written from axes of values (prompts, seeds, guidance scales, ...).

Rows are the cartesian product of the axes. Axes named in one zip group are paired element by
element instead (InvokeAI's batch groups): they must have equal lengths and count as one axis of
the product. Rows are computed from index arithmetic a chunk at a time, so a large sweep never
exists in memory as Python objects.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .checks import check_batch, check_types
from .problems import ProblemLog
from .schema import COLUMN_NAMES, SEED_MAX

WRITE_CHUNK_ROWS = 100_000


class SweepError(ValueError):
    """Sweep options that cannot make a manifest; the message names the option and reason."""


@dataclass(frozen=True)
class Axis:
    """One axis: its option name and one or more manifest columns of equal length."""

    name: str
    columns: dict[str, pa.Array]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))


@dataclass(frozen=True)
class SweepPlan:
    """Axes in product order (outermost first), each group a zip of one or more axes."""

    groups: tuple[tuple[Axis, ...], ...]

    @property
    def lengths(self) -> list[int]:
        return [len(g[0]) for g in self.groups]

    @property
    def rows(self) -> int:
        return math.prod(self.lengths)

    def describe(self) -> str:
        return " x ".join(f"{len(g[0])} {'+'.join(a.name for a in g)}" for g in self.groups)

    def chunks(self, chunk_rows: int = WRITE_CHUNK_ROWS) -> Iterator[pa.Table]:
        lengths = np.array(self.lengths, np.int64)
        strides = np.ones(len(lengths), np.int64)
        for i in range(len(lengths) - 2, -1, -1):
            strides[i] = strides[i + 1] * lengths[i + 1]
        for start in range(0, self.rows, chunk_rows):
            row = np.arange(start, min(start + chunk_rows, self.rows), dtype=np.int64)
            columns: dict[str, pa.Array] = {}
            for group, stride, length in zip(self.groups, strides, lengths):
                index = pa.array((row // stride) % length)
                for axis in group:
                    for name, values in axis.columns.items():
                        columns[name] = values.take(index)
            yield pa.table(_ordered(columns))


def _ordered(columns: dict[str, pa.Array]) -> dict[str, pa.Array]:
    """Schema columns in schema order, then the prompts file's own columns."""
    known = {n: columns[n] for n in COLUMN_NAMES if n in columns}
    return known | {n: v for n, v in columns.items() if n not in known}


# -- parsing axis values ----------------------------------------------------------------------------

def _split(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_int_list(option: str, values: Sequence[str], low: int = 0, high: int = SEED_MAX) -> list[int]:
    """``0-99,200`` -> 0..99 and 200 (ranges inclusive)."""
    out: list[int] = []
    for part in _split(values):
        first, sep, last = part.partition("-")
        try:
            a = int(first)
            b = int(last) if sep else a
        except ValueError:
            raise SweepError(f"{option}: cannot read {part!r}; use integers and ranges like 0-99") from None
        if b < a:
            raise SweepError(f"{option}: range {part!r} goes backwards")
        if a < low or b > high:
            raise SweepError(f"{option}: {part!r} is outside {low} to {high}")
        out.extend(range(a, b + 1))
    return out


def parse_float_list(option: str, values: Sequence[str]) -> list[float]:
    try:
        return [float(part) for part in _split(values)]
    except ValueError:
        raise SweepError(f"{option}: cannot read {values!r} as numbers, e.g. 3,5.5,7.5") from None


def parse_sizes(option: str, values: Sequence[str]) -> tuple[list[int], list[int]]:
    """``512x512,768x512`` -> widths, heights."""
    widths, heights = [], []
    for part in _split(values):
        w, sep, h = part.lower().partition("x")
        if not sep or not w.isdigit() or not h.isdigit():
            raise SweepError(f"{option}: cannot read {part!r}; use WIDTHxHEIGHT, e.g. 512x512")
        widths.append(int(w))
        heights.append(int(h))
    return widths, heights


def read_prompts_file(path: str | Path) -> pa.Table:
    """Prompts from a text file (one a line, blank lines skipped), a CSV or JSONL file with a
    ``prompt`` column; a file's other columns travel with each prompt into the manifest."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={"prompt": pa.string(), "negative_prompt": pa.string()}))
        elif suffix in (".jsonl", ".ndjson"):
            table = pajson.read_json(path, parse_options=pajson.ParseOptions(
                explicit_schema=pa.schema([("prompt", pa.string())]), unexpected_field_behavior="infer"))
        elif suffix in (".txt", ".text", ""):
            lines = path.read_text(encoding="utf-8").splitlines()
            table = pa.table({"prompt": pa.array([ln for ln in lines if ln.strip()], pa.string())})
        else:
            raise SweepError(f"--prompts {path}: unknown file type {suffix!r}; use .txt, .csv or .jsonl")
    except (OSError, pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise SweepError(f"--prompts {path}: cannot read: {exc}") from exc
    if "prompt" not in table.column_names:
        raise SweepError(f"--prompts {path}: no 'prompt' column (columns: {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise SweepError(f"--prompts {path}: no prompts")
    return table


# -- building the plan ------------------------------------------------------------------------------

def check_axis(axis: Axis, schedulers: Sequence[str]) -> None:
    """The manifest checks, run on an axis's own values: refusals name the option."""
    problems = ProblemLog()
    batch = pa.RecordBatch.from_pydict(axis.columns)
    check_types(batch.schema, problems)
    if not problems:
        check_batch(batch, 0, problems, schedulers)
    if problems:
        raise SweepError("\n".join(_describe(axis, p) for p in problems.problems))


def _describe(axis: Axis, problem) -> str:
    """Prompts (with a prompts file's columns) by column and row; other axes by option alone."""
    if axis.name == "prompt":
        return f"prompts (--prompt values first, then --prompts rows): {problem.message()}"
    return f"--{axis.name}: {problem.details()}"


def plan_sweep(axes: Sequence[Axis], zips: Sequence[Sequence[str]] = (),
               schedulers: Sequence[str] = ()) -> SweepPlan:
    """Check the axes and arrange them into the product (zip groups paired)."""
    by_name = {a.name: a for a in axes}
    if "prompt" not in by_name:
        raise SweepError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE")
    seen_columns: dict[str, str] = {}
    for axis in axes:
        if len(axis) == 0:
            raise SweepError(f"--{axis.name}: no values")
        for column in axis.columns:
            if column in seen_columns:
                raise SweepError(f"column '{column}' comes from both --{seen_columns[column]} and --{axis.name}")
            seen_columns[column] = axis.name
        check_axis(axis, schedulers)
    grouped: dict[str, int] = {}
    groups: list[list[Axis]] = []
    for zip_names in zips:
        group = []
        for name in zip_names:
            if name not in by_name:
                known = ", ".join(by_name)
                raise SweepError(f"--zip: {name!r} is not an axis of this sweep (axes: {known})")
            if name in grouped:
                raise SweepError(f"--zip: {name!r} is in more than one zip group")
            grouped[name] = len(groups)
            group.append(by_name[name])
        lengths = {a.name: len(a) for a in group}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{n} has {k}" for n, k in lengths.items())
            raise SweepError(f"--zip {','.join(zip_names)}: zipped axes need equal lengths ({shown})")
        groups.append(group)
    ordered: list[tuple[Axis, ...]] = []
    placed: set[int] = set()
    for axis in axes:
        if axis.name not in grouped:
            ordered.append((axis,))
        elif grouped[axis.name] not in placed:
            placed.add(grouped[axis.name])
            ordered.append(tuple(groups[grouped[axis.name]]))
    return SweepPlan(tuple(ordered))


def write_sweep(plan: SweepPlan, out: str | Path) -> None:
    """Write the plan's rows as one Parquet file, whole or not at all."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    writer = None
    try:
        for chunk in plan.chunks():
            if writer is None:
                writer = pq.ParquetWriter(tmp, chunk.schema, compression="zstd")
            writer.write_table(chunk)
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
