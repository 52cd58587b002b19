"""Sweeps: a manifest written from axes of values (prompts, seeds, guidance scales, ...).

Rows are the cartesian product of the axes. Axes named in one zip group are paired element by
element instead (InvokeAI's batch groups): they must have equal lengths and count as one axis of
the product. Rows are computed from index arithmetic a chunk at a time, so a large sweep never
exists in memory as Python objects.

Each row gets an id from a template over its axis values (``p0-s7-g5_5`` by default), so a sweep's
outputs are named by their axes; a template that gives two rows one id is refused.
"""

from __future__ import annotations

import json
import math
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .checks import check_batch, check_column_names, check_types
from .formats import CSV, JSONL, PARQUET, TEXT_COLUMNS, TSV
from .loras import LoraSyntaxError, normal_form, parse_loras
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
    """Axes in product order (outermost first), each group a zip of one or more axes, and the
    template of the rows' ids (None: no id column; ids are derived from the rows at run time)."""

    groups: tuple[tuple[Axis, ...], ...]
    id_template: "IdTemplate | None" = None

    @property
    def lengths(self) -> list[int]:
        return [len(g[0]) for g in self.groups]

    @property
    def rows(self) -> int:
        return math.prod(self.lengths)

    def describe(self) -> str:
        return " x ".join(f"{len(g[0])} {'+'.join(a.name for a in g)}" for g in self.groups)

    def columns(self) -> list[str]:
        return [name for group in self.groups for axis in group for name in axis.columns]

    def _chunk_values(self, chunk_rows: int) -> Iterator[tuple[int, dict[str, pa.Array], dict[str, pa.Array]]]:
        """(first row, column values, each column's index into its axis) a chunk of rows at a time."""
        lengths = np.array(self.lengths, np.int64)
        strides = np.ones(len(lengths), np.int64)
        for i in range(len(lengths) - 2, -1, -1):
            strides[i] = strides[i + 1] * lengths[i + 1]
        for start in range(0, self.rows, chunk_rows):
            row = np.arange(start, min(start + chunk_rows, self.rows), dtype=np.int64)
            columns: dict[str, pa.Array] = {}
            indices: dict[str, pa.Array] = {}
            for group, stride, length in zip(self.groups, strides, lengths):
                index = pa.array((row // stride) % length)
                for axis in group:
                    for name, values in axis.columns.items():
                        columns[name] = values.take(index)
                        indices[name] = index
            yield start, columns, indices

    def chunks(self, chunk_rows: int = WRITE_CHUNK_ROWS) -> Iterator[pa.Table]:
        for start, columns, indices in self._chunk_values(chunk_rows):
            if self.id_template is not None:
                columns = {"id": pa.array(self.id_template.render(start, columns, indices), pa.string()),
                           **{n: v for n, v in columns.items() if n != "id"}}
            yield pa.table(_ordered(columns))

    def ids(self, chunk_rows: int = WRITE_CHUNK_ROWS) -> Iterator[tuple[int, list[str]]]:
        """(first row, ids) a chunk at a time (the id template must be set)."""
        assert self.id_template is not None
        for start, columns, indices in self._chunk_values(chunk_rows):
            yield start, self.id_template.render(start, columns, indices)


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


NO_LORA = "none"


def _weights(option: str, entry: str, text: str) -> list[float]:
    """``0.5`` or a range ``0.2..1.0/0.2`` (ends included; the step defaults to 0.1)."""
    first, sep, rest = text.partition("..")
    if not sep:
        return [float(text)]
    last, slash, step = rest.partition("/")
    try:
        a, b, d = float(first), float(last), float(step) if slash else 0.1
    except ValueError:
        raise SweepError(f"{option}: cannot read {entry!r}; write a range as name:0.2..1.0/0.2") from None
    if d <= 0 or b < a:
        raise SweepError(f"{option}: range {entry!r} must go up by a positive step")
    count = int(math.floor((b - a) / d + 1e-9)) + 1
    return [round(a + i * d, 10) for i in range(count)]


def parse_lora_sets(option: str, values: Sequence[str]) -> list[str | None]:
    """Each value one set of LoRAs, ``name:weight[,name:weight...]`` in the loras column's grammar,
    where a weight may be a range ``START..STOP/STEP`` (giving one set per weight; two ranges give
    their product); ``none`` is the set without LoRAs. Sets in normal form (None: no LoRA)."""
    sets: list[str | None] = []
    for value in values:
        if value.strip().lower() in (NO_LORA, ""):
            sets.append(None)
            continue
        choices: list[list[tuple[str, float]]] = [[]]
        for entry in value.split(","):
            name, sep, weight = entry.rpartition(":")
            if not sep or not name.strip():
                raise SweepError(f"{option}: cannot read {entry.strip()!r}; write name:weight or name:0.2..1.0/0.2")
            try:
                weights = _weights(option, entry.strip(), weight.strip())
            except ValueError:
                raise SweepError(f"{option}: {entry.strip()!r}: the weight is not a number") from None
            choices = [c + [(name.strip(), w)] for c in choices for w in weights]
        for choice in choices:
            try:
                sets.append(normal_form(parse_loras(normal_form(choice))))
            except LoraSyntaxError as exc:
                raise SweepError(f"{option} {value!r}: {exc}") from None
    return sets


def read_prompts_file(path: str | Path) -> pa.Table:
    """Prompts from a text file (one a line, blank lines skipped), a CSV or JSONL file with a
    ``prompt`` column; a file's other columns travel with each prompt into the manifest."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in TEXT_COLUMNS}))
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
    check_column_names(batch.schema.names, (), problems)  # a prompts file's misspelt columns
    check_types(batch.schema, problems)
    if not problems:
        check_batch(batch, 0, problems, schedulers)
    if problems:
        raise SweepError("\n".join(_describe(axis, problems.problems)))


def _describe(axis: Axis, problems: list) -> list[str]:
    """Prompts (with a prompts file's columns) by column and row; other axes by option alone, each
    message once (``--size 500x500`` fails width and height alike: one line, not two)."""
    if axis.name == "prompt":
        return [f"prompts (--prompt values first, then --prompts rows): {p.message()}" for p in problems]
    return list(dict.fromkeys(f"--{axis.name}: {p.details()}" for p in problems))


# -- row ids ----------------------------------------------------------------------------------------

# The default id: one part an axis, in product order (p0-s7-g5_5).
_DEFAULT_ID_PARTS = {
    "prompt": "p{prompt_index}",
    "negative-prompt": "neg{negative_prompt_index}",
    "seeds": "s{seed}",
    "guidance": "g{guidance_scale}",
    "steps": "steps{steps}",
    "scheduler": "{scheduler}",
    "size": "{width}x{height}",
    "strength": "str{strength}",
    "loras": "l{loras_index}",
    "clip-skip": "cs{clip_skip}",
}


def _number_text(value: float) -> str:
    """A float as the shortest text that reads back as it, ``_`` for the point (``5.5`` -> ``5_5``,
    ``7.0`` -> ``7``), so ids are file names as they are."""
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value).replace(".", "_")


class _IdFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return ""
        if isinstance(value, float) and not format_spec:
            return _number_text(value)
        return super().format_field(value, format_spec)


class IdTemplate:
    """A ``str.format`` template of a row's id. Fields: any column of the sweep (``{seed}``,
    ``{guidance_scale}``, a prompts file's columns), ``{COLUMN_index}`` (the position of the row's
    value in its axis, from 0: ``{prompt_index}``) and ``{row}`` (the row number)."""

    def __init__(self, text: str, columns: Sequence[str], default: bool = False):
        self.text = text
        self.default = default  # built from the axes, not given by --id-template
        allowed = {"row", *columns, *(f"{c}_index" for c in columns)}
        self.fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise SweepError(f"--id-template {text!r}: {exc}") from None
        for _, field, spec, _ in parsed:
            if field is None:
                continue
            if field not in allowed:
                shown = ", ".join("{" + f + "}" for f in sorted(allowed))
                raise SweepError(f"--id-template {text!r}: unknown field {{{field}}}; fields: {shown}")
            if "{" in (spec or ""):
                raise SweepError(f"--id-template {text!r}: nested fields are not supported")
            if field not in self.fields:
                self.fields.append(field)
        self._formatter = _IdFormatter()

    def render(self, start: int, columns: dict[str, pa.Array], indices: dict[str, pa.Array]) -> list[str]:
        rows = len(next(iter(columns.values())))
        values: dict[str, list] = {}
        for field in self.fields:
            if field == "row":
                values[field] = list(range(start, start + rows))
            elif field in columns:
                values[field] = columns[field].to_pylist()
            else:
                values[field] = indices[field[: -len("_index")]].to_pylist()
        out = []
        for i in range(rows):
            mapping = {field: column[i] for field, column in values.items()}
            try:
                out.append(self._formatter.vformat(self.text, (), mapping))
            except (ValueError, TypeError) as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in mapping.items())
                raise SweepError(
                    f"--id-template {self.text!r}: cannot format row {start + i} ({shown}): {exc}") from None
        return out


def _id_part(axis: Axis) -> str:
    if axis.name == "prompt" and "id" in axis.columns:
        return "{id}"  # a prompts file's own ids stand for its prompts
    return _DEFAULT_ID_PARTS.get(axis.name, "{%s_index}" % next(iter(axis.columns)))


def default_id_template(groups: Sequence[Sequence[Axis]]) -> str:
    """One part an axis that varies, outermost first: ``p{prompt_index}-s{seed}-g{guidance_scale}``
    (axes of one value tell no rows apart and are left out; the prompt's part stays when none
    varies)."""
    parts = [_id_part(axis) for group in groups if len(group[0]) > 1 for axis in group]
    if not parts:
        parts = [_id_part(axis) for group in groups for axis in group if axis.name == "prompt"]
    return "-".join(parts)


def _id_hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids))


def _id_clash(plan: SweepPlan, hashes: np.ndarray) -> tuple[int, int, str] | None:
    """Two rows with one id (the first such pair), from all rows' id hashes: a repeated hash is
    checked against the ids themselves."""
    ordered = np.sort(hashes)
    repeated = set(ordered[1:][ordered[1:] == ordered[:-1]].tolist())
    if not repeated:
        return None
    first: dict[str, int] = {}
    for start, ids in plan.ids():
        for offset in np.flatnonzero(np.isin(_id_hashes(ids), list(repeated))).tolist():
            row_id = ids[offset]
            if row_id in first:
                return first[row_id], start + offset, row_id
            first[row_id] = start + offset
    return None


def _clash_message(plan: SweepPlan, clash: tuple[int, int, str]) -> str:
    a, b, row_id = clash
    template = plan.id_template
    if template.default:
        which = f"the default ids ({template.text!r}) give"
    else:
        which = f"--id-template {template.text!r} gives"
    return (f"{which} rows {a:,} and {b:,} the same id {row_id!r}: ids must be unique; "
            "remove a repeated axis value or give --id-template a field that tells them apart")


def plan_sweep(axes: Sequence[Axis], zips: Sequence[Sequence[str]] = (),
               schedulers: Sequence[str] = (), id_template: str | None = None) -> SweepPlan:
    """Check the axes and arrange them into the product (zip groups paired). ``id_template``:
    the rows' ids (see ``IdTemplate``); None gives the default, ``""`` no id column (ids derived
    from the rows at run time)."""
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
    if id_template == "":
        return SweepPlan(tuple(ordered))
    text = id_template if id_template is not None else default_id_template(ordered)
    plan = SweepPlan(tuple(ordered), IdTemplate(text, [c for a in axes for c in a.columns], id_template is None))
    first_ids = next(plan.ids(chunk_rows=1))[1]  # a format spec that cannot format is refused now
    if not first_ids[0]:
        raise SweepError(f"--id-template {text!r}: gives an empty id")
    return plan


# -- writing ----------------------------------------------------------------------------------------

WRITE_FORMATS = {".parquet": PARQUET, ".pq": PARQUET, ".csv": CSV, ".tsv": TSV, ".jsonl": JSONL,
                 ".ndjson": JSONL}


def output_format(out: str | Path, force: bool = False) -> str:
    """The format ``out``'s extension names; an unknown extension, or an existing file without
    ``force``, is refused."""
    out = Path(out)
    fmt = WRITE_FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise SweepError(f"-o {out}: unknown extension {out.suffix!r}; use .parquet, .csv, .tsv or .jsonl")
    if out.is_dir():
        raise SweepError(f"-o {out}: is a folder")
    if out.exists() and not force:
        raise SweepError(f"-o {out}: the file exists; use --force to replace it")
    return fmt


class _TextWriter:
    """CSV/TSV through pyarrow's CSV writer; JSON Lines one object a line (pyarrow has no JSON
    writer)."""

    def __init__(self, path: Path, fmt: str, schema: pa.Schema):
        self.fmt = fmt
        if fmt == JSONL:
            self._file = open(path, "w", encoding="utf-8")
            self._csv = None
        else:
            self._file = None
            options = pacsv.WriteOptions(delimiter="\t" if fmt == TSV else ",")
            try:
                self._csv = pacsv.CSVWriter(str(path), schema, write_options=options)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise SweepError(f"cannot write {fmt.upper()}: {exc}; write .parquet or .jsonl instead") from None

    def write_table(self, table: pa.Table) -> None:
        if self._csv is not None:
            self._csv.write_table(table)
            return
        for row in table.to_pylist():
            try:
                line = json.dumps(row, ensure_ascii=False, allow_nan=False, default=str)
            except ValueError:
                raise SweepError("cannot write JSON Lines: a column holds NaN or infinity, which JSON "
                                 "has no number for; write .parquet or .csv instead") from None
            self._file.write(line + "\n")

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._file is not None:
            self._file.close()


def write_sweep(plan: SweepPlan, out: str | Path, fmt: str | None = None) -> None:
    """Write the plan's rows to ``out`` in ``fmt`` (default: by its extension), whole or not at
    all; an id template that gives two rows one id is refused (``SweepError``) and nothing is
    written."""
    out = Path(out)
    fmt = fmt or output_format(out, force=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    writer = None
    hashes: list[np.ndarray] = []
    try:
        for chunk in plan.chunks():
            if writer is None:
                writer = (pq.ParquetWriter(tmp, chunk.schema, compression="zstd") if fmt == PARQUET
                          else _TextWriter(tmp, fmt, chunk.schema))
            if plan.id_template is not None:
                hashes.append(_id_hashes(chunk.column("id").to_pylist()))
            writer.write_table(chunk)
        writer.close()
        writer = None
        if hashes:
            clash = _id_clash(plan, np.concatenate(hashes))
            if clash is not None:
                raise SweepError(_clash_message(plan, clash))
        os.replace(tmp, out)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise SweepError(f"cannot write {out}: {exc}") from None
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
