"""A manifest fuzzer: hypothesis strategies for manifests a user (or a bad night) may hand sdbatch,
and the verdict a command gives on one.

Manifests: 0 to a few hundred rows; known columns with plausible, edge, overflowing and wrong-typed
values (every Arrow integer width, float16 to float64 with NaN and infinities, strings of any
unicode, huge strings, bytes, nulls, null-typed and all-null columns, struct/list/map/decimal/
timestamp/dictionary in known columns); ids with dots, slashes, unicode, repeats; misspelt and
other tools' column names (declared labels or not); extra columns of odd Arrow types; written as
Parquet (string columns that are not UTF-8 too), CSV, TSV or JSON Lines.

The contract (issue 14): every manifest is accepted (exit 0, "problems: none") or refused (exit 2)
with a message naming a column (or, for a manifest without rows, saying so); never a traceback.
``assert_same_verdict`` also checks a second command (``sdbatch run --dry-run`` for every case, or a
real ``sdbatch run``; plugged in by the caller) accepts and refuses exactly the manifests
``validate`` does, with the same problem lines.
"""

from __future__ import annotations

import csv
import json
import math
import string
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner, Result
from hypothesis import strategies as st

from sdbatch.cli.main import main
from sdbatch.manifests.checks import OTHER_TOOLS_HINTS, OTHER_TOOLS_NAMES
from sdbatch.manifests.schema import COLUMN_NAMES, MODES

FORMATS = ("parquet", "csv", "tsv", "jsonl")
SCHEDULERS = ("ddim", "euler_a", "dpmpp_2m_karras", "unipc")
MISSPELLINGS = ("guidance", "Prompt", "PROMPT", "promt", "seeds", "Steps", "widht", "hieght", "strenght",
                "negative", "schedular", "init", "mask", "ID", "negativePrompt", "guidance-scale",
                *OTHER_TOOLS_NAMES, *OTHER_TOOLS_HINTS)
LABEL_NAMES = ("caption", "category", "label", "weight", "score", "split", "url", "_id", "idx", "note",
               "label_steps", "label_seed", "labels", "Prompt_2", "ünïcode", "with space", "data.x", "")

_I64 = (-(2**63), 2**63 - 1)
_INT_TYPES = {pa.int8(): (-128, 127), pa.int16(): (-(2**15), 2**15 - 1), pa.int32(): (-(2**31), 2**31 - 1),
              pa.int64(): _I64, pa.uint8(): (0, 255), pa.uint16(): (0, 2**16 - 1), pa.uint32(): (0, 2**32 - 1),
              pa.uint64(): (0, 2**64 - 1)}
_FLOAT_WIDTHS = {pa.float16(): 16, pa.float32(): 32, pa.float64(): 64}

# Text: any unicode but lone surrogates (Arrow strings are UTF-8), weighted to the awkward characters.
_AWKWARD = st.sampled_from(["", " ", "\x00", "\n", "\r\n", '"', "'", ",", "\t", "{", "[", "..", "/", "\\",
                            "\u202e", "\U0001F600", "é", "猫", "\ufeff", "NA", "nan", "null"])
_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    st.lists(_AWKWARD, max_size=4).map("".join),
    st.sampled_from(["a red fox", "an owl, at dusk", "001", "12", "-3", "1e3", "7.5", "true"]),
)


def _edge_ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, 0, 1, -1, 7, 8, 64, 1000, 1001, 8192, 8200, 2**31, 2**53 + 1, 2**63 - 1, 2**63)
             if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def _values(t: pa.DataType, rows: int) -> st.SearchStrategy[list]:
    """``rows`` Python values (some null) that build an Arrow array of type ``t``."""
    if pa.types.is_null(t):
        return st.just([None] * rows)
    if t in _INT_TYPES:
        item = _edge_ints(*_INT_TYPES[t])
    elif t in _FLOAT_WIDTHS:
        item = st.floats(width=_FLOAT_WIDTHS[t], allow_nan=True, allow_infinity=True)
    elif pa.types.is_boolean(t):
        item = st.booleans()
    elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        item = _TEXT
    elif pa.types.is_binary(t):
        item = st.binary(max_size=16)
    elif pa.types.is_timestamp(t):
        item = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)).map(
            lambda d: d.replace(tzinfo=timezone.utc))
    elif pa.types.is_decimal(t):
        item = st.decimals(min_value=-999, max_value=999, places=2, allow_nan=False, allow_infinity=False)
    elif pa.types.is_list(t):
        item = st.lists(st.integers(-5, 5), max_size=3)
    elif pa.types.is_struct(t):
        item = st.fixed_dictionaries({"a": st.integers(-5, 5), "b": _TEXT})
    elif pa.types.is_map(t):
        item = st.lists(st.tuples(_TEXT, st.integers(-5, 5)), max_size=3, unique_by=lambda kv: kv[0])
    else:
        raise AssertionError(t)
    return st.lists(st.one_of(st.none(), item) if rows else item, min_size=rows, max_size=rows)


@st.composite
def not_utf8_column(draw, rows: int) -> pa.Array:
    """A string column holding bytes that are not UTF-8 (Parquet writers need not check)."""
    cells = draw(st.lists(st.one_of(st.none(), st.binary(max_size=6), st.sampled_from([b"caf\xe9", b"\xff\xfe"])),
                          min_size=rows, max_size=rows))
    raw = pa.array(cells, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), raw.null_count)


ODD_TYPES = (pa.bool_(), pa.timestamp("us", tz="UTC"), pa.decimal128(10, 2), pa.list_(pa.int64()),
             pa.struct([("a", pa.int64()), ("b", pa.string())]), pa.map_(pa.string(), pa.int64()),
             pa.dictionary(pa.int32(), pa.string()), pa.binary(), pa.large_string(), pa.null(), pa.float16())
ANY_TYPES = (*_INT_TYPES, *_FLOAT_WIDTHS, pa.string(), *ODD_TYPES)


@st.composite
def arrow_column(draw, rows: int, types: Sequence[pa.DataType] = ANY_TYPES) -> pa.Array:
    t = draw(st.sampled_from(types))
    values = draw(_values(t, rows))
    if pa.types.is_dictionary(t):
        return pa.array(values, pa.string()).dictionary_encode()
    return pa.array(values, t)


def _plausible(name: str, rows: int) -> st.SearchStrategy[pa.Array]:
    """Values a user would write in column ``name``: mostly fine, some out of range or empty."""
    text = lambda choices: st.lists(st.one_of(st.none(), st.sampled_from(choices), _TEXT),  # noqa: E731
                                    min_size=rows, max_size=rows).map(lambda v: pa.array(v, pa.string()))
    ints = lambda low, high, t=pa.int64(): st.lists(  # noqa: E731
        st.one_of(st.none(), st.integers(low, high)), min_size=rows, max_size=rows).map(lambda v: pa.array(v, t))
    floats = lambda low, high: st.lists(  # noqa: E731
        st.one_of(st.none(), st.floats(low, high), st.sampled_from([math.nan, math.inf, -0.0])),
        min_size=rows, max_size=rows).map(lambda v: pa.array(v, pa.float64()))
    return {
        "id": st.one_of(text(["row_001", "a.b", "a b", "a_b-c8687a08aa5d", "../x", "-x", "~", "x" * 200]),
                        ints(0, 2**64 - 1, pa.uint64()), ints(-3, 3)),
        "prompt": st.one_of(text(["a red fox", "", "  "]),
                            st.just(pa.array(["p" * 20_000] * rows, pa.string()))),
        "negative_prompt": text(["blurry", ""]),
        "seed": st.one_of(ints(-3, 2**63 - 1), ints(0, 2**64 - 1, pa.uint64())),
        "mode": text([*MODES, "text2img"]),
        "guidance_scale": st.one_of(floats(-2, 120), ints(-1, 150)),
        "steps": ints(-1, 1002),
        "width": st.one_of(ints(-8, 9000), st.sampled_from([8, 64, 512, 8192]).map(lambda v: pa.array([v] * rows))),
        "height": st.one_of(ints(-8, 9000), st.sampled_from([8, 64, 512, 8192]).map(lambda v: pa.array([v] * rows))),
        "scheduler": text([*SCHEDULERS, "euler-a"]),
        "strength": floats(-0.5, 1.5),
        "init_image": st.one_of(text(["a.png", "../a.png", "/etc/passwd"]), arrow_column(rows, (pa.binary(),))),
        "mask_image": text(["m.png"]),
        "depth_map": text(["d.png"]),
        "model": text(["", "tiny"]),
        "guidance_rescale": floats(-0.5, 1.5),
        "prompt_2": text(["a fox, oil painting", ""]),
        "negative_prompt_2": text(["blurry", ""]),
        "original_width": ints(-8, 20_000),
        "original_height": ints(-8, 20_000),
        "crop_top": ints(-8, 20_000),
        "crop_left": ints(-8, 20_000),
        "refiner_start": floats(-0.5, 1.5),
        "prompt_syntax": text(["plain", "a1111", "compel", "A1111"]),
        "clip_skip": ints(-2, 60),
        "loras": text(["style:0.5", "style", "a:1,a:2", "a:x", "", "<lora:a:1>"]),
    }[name]


def _valid(name: str, rows: int) -> st.SearchStrategy[pa.Array]:
    """Values sdbatch accepts in column ``name`` (in txt2img rows), nulls included."""
    def column(item, t=pa.string(), nulls=True):
        return st.lists(st.one_of(st.none(), item) if nulls else item, min_size=rows, max_size=rows).map(
            lambda v: pa.array(v, t))
    sizes = st.integers(1, 1024).map(lambda v: v * 8)
    return {
        "id": st.just(pa.array([f"row-{i}.{name}" for i in range(rows)], pa.string())),
        "prompt": column(_TEXT.filter(str.strip), nulls=False),
        "negative_prompt": column(_TEXT),
        "seed": column(st.integers(0, 2**64 - 1), pa.uint64()),
        "mode": column(st.just("txt2img")),
        "guidance_scale": column(st.floats(0, 100), pa.float64()),
        "steps": column(st.integers(1, 1000), pa.int16()),
        "width": column(sizes, pa.int32()),
        "height": column(sizes, pa.int64()),
        "scheduler": column(st.sampled_from(SCHEDULERS)),
        "strength": column(st.floats(0.25, 1, width=32), pa.float32()),
        "init_image": column(st.none()),
        "mask_image": column(st.sampled_from(["m.png", "masks/é 1.png"])),
        "depth_map": column(st.none()),
        "model": column(st.sampled_from(["", "tiny", "org/model"])),
        "guidance_rescale": column(st.floats(0, 1), pa.float64()),
        "prompt_2": column(_TEXT),
        "negative_prompt_2": column(_TEXT),
        "original_width": column(st.integers(0, 16384), pa.int64()),
        "original_height": column(st.integers(0, 16384), pa.int32()),
        "crop_top": column(st.integers(0, 16384), pa.int64()),
        "crop_left": column(st.integers(0, 16384), pa.int16()),
        "refiner_start": column(st.floats(0.01, 0.99), pa.float64()),
        "prompt_syntax": column(st.just("plain")),
        "clip_skip": column(st.integers(0, 12), pa.int64()),
        "loras": column(st.sampled_from(["", " "])),  # (named LoRAs must exist: see test_run_prompts)
    }[name]


@dataclass(frozen=True)
class FuzzManifest:
    """One generated manifest: its columns, the format to write it in, and ``--label`` columns."""

    table: pa.Table
    fmt: str
    labels: tuple[str, ...] = ()

    def write(self, folder: Path) -> Path:
        path = folder / f"manifest.{self.fmt}"
        if self.fmt == "parquet":
            pq.write_table(self.table, path)
        elif self.fmt in ("csv", "tsv"):
            with open(path, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, delimiter="\t" if self.fmt == "tsv" else ",")
                writer.writerow(self.table.column_names)
                for row in self.table.to_pylist():
                    writer.writerow(["" if v is None else _text(v) for v in row.values()])
        else:
            with open(path, "w", encoding="utf-8") as f:
                for row in self.table.to_pylist():
                    f.write(json.dumps({k: _json(v) for k, v in row.items()}, ensure_ascii=False) + "\n")
        return path


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return str(value)


def _json(value):
    """A cell as JSON (which has no NaN, infinity, bytes, decimals or dates)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (bytes, Decimal, datetime)):
        return _text(value)
    if isinstance(value, list):
        return [_json(v) if not isinstance(v, tuple) else [_json(x) for x in v] for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


_TEXT_FORMAT_TYPES = (*_INT_TYPES, pa.float64(), pa.string(), pa.bool_())


@st.composite
def manifests(draw) -> FuzzManifest:
    fmt = draw(st.sampled_from(FORMATS))
    rows = draw(st.one_of(st.integers(1, 6), st.just(0), st.just(300)))
    drawn = min(rows, 6)  # bigger manifests repeat the drawn rows (cheap to generate, ids repeat)
    arbitrary_types = ANY_TYPES if fmt == "parquet" else _TEXT_FORMAT_TYPES
    clean = draw(st.booleans())  # half the cases: valid columns and plain labels (mostly accepted)
    odd_text = [not_utf8_column(drawn)] if fmt == "parquet" else []
    columns: dict[str, pa.Array] = {}
    for name in draw(st.lists(st.sampled_from(COLUMN_NAMES), unique=True, max_size=len(COLUMN_NAMES))):
        if clean:
            columns[name] = draw(_valid(name, drawn))
        else:
            columns[name] = draw(st.one_of(_valid(name, drawn), _plausible(name, drawn),
                                           arrow_column(drawn, arbitrary_types), *odd_text))
    if (clean or draw(st.booleans())) and "prompt" not in columns:
        columns["prompt"] = pa.array(["a red fox"] * drawn, pa.string())
    names = st.sampled_from(LABEL_NAMES) if clean else st.one_of(
        st.sampled_from(MISSPELLINGS), st.sampled_from(LABEL_NAMES),
        st.text(string.ascii_letters + "_ -", min_size=1, max_size=10))
    extras = draw(st.lists(names, unique=True, max_size=4))
    for name in extras:
        if name not in columns:
            columns[name] = draw(st.one_of(arrow_column(drawn, arbitrary_types), *odd_text))
    labels = tuple(draw(st.lists(st.sampled_from(extras), unique=True))) if extras else ()
    if fmt != "parquet" and not columns:
        columns["prompt"] = pa.array(["a"] * drawn, pa.string())  # a text file has at least a header
    if rows > drawn:
        columns = {n: pa.concat_arrays([a] * -(-rows // drawn)).slice(0, rows) for n, a in columns.items()}
    table = pa.table(columns) if columns else pa.table({"x": pa.nulls(rows)}).drop(["x"])
    return FuzzManifest(table, fmt, labels)


# -- verdicts ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """What one command said about one manifest."""

    exit_code: int
    output: str

    @property
    def refused(self) -> bool:
        return self.exit_code == 2

    def problem_lines(self) -> list[str]:
        """The refusal's own lines (the column/row/reason lines, or the one-line refusal)."""
        return [line.strip() for line in self.output.splitlines()
                if line.startswith("  column '") or line.startswith("error: manifest refused")]


def verdict(result: Result) -> Verdict:
    """A ``CliRunner`` result as a verdict; an exception other than the command's exit re-raised,
    so a traceback fails the caller with its own stack."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Verdict(result.exit_code, result.output)


def validate_verdict(path: Path, labels: Sequence[str] = ()) -> Verdict:
    args = ["validate", str(path), *(a for label in labels for a in ("--label", label))]
    return verdict(CliRunner().invoke(main, args, catch_exceptions=False))


def check_contract(v: Verdict) -> None:
    """Accepted with no problems, or refused with a message naming a column (or no rows)."""
    assert v.exit_code in (0, 2), v.output
    if v.exit_code == 0:
        assert "problems: none" in v.output, v.output
    else:
        assert "column '" in v.output or "no rows" in v.output, v.output
    assert "Traceback" not in v.output, v.output


def assert_same_verdict(path: Path, labels: Sequence[str],
                        run: Callable[[Path, Sequence[str]], Verdict]) -> Verdict:
    """``validate`` and ``run`` (``run(path, labels)``, e.g. ``sdbatch run`` through ``CliRunner``)
    both keep the contract, refuse exactly the same manifests, and refuse with the same problem
    lines. Returns validate's verdict."""
    checked = validate_verdict(path, labels)
    ran = run(path, labels)
    check_contract(checked)
    assert ran.exit_code in (0, 1, 2) and "Traceback" not in ran.output, ran.output
    assert checked.refused == ran.refused, (checked.output, ran.output)
    if checked.refused:
        for line in checked.problem_lines():
            assert line.removeprefix("error: ") in ran.output, (line, ran.output)
    return checked
