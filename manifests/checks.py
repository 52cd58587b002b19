"""Manifest checks: column types against the schema, then vectorised value checks per batch.

Every check is an Arrow compute expression over a whole record batch; only the few offending
rows and values are turned into Python objects, for the message.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .problems import ProblemLog
from .schema import (
    COLUMNS,
    FLOAT,
    GUIDANCE_RANGE,
    ID,
    IMAGE,
    INT,
    KIND_DESCRIPTIONS,
    MODE_IMAGES,
    MODES,
    MODES_WITHOUT_PROMPT,
    SEED,
    SIZE_MULTIPLE,
    SIZE_RANGE,
    STEPS_RANGE,
    STRING,
)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_binary(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


_ACCEPTS = {
    STRING: _is_string,
    ID: lambda t: _is_string(t) or pa.types.is_integer(t),
    INT: pa.types.is_integer,
    SEED: pa.types.is_integer,
    FLOAT: lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    IMAGE: lambda t: _is_string(t) or _is_binary(t),
}


def type_accepted(kind: str, t: pa.DataType) -> bool:
    return pa.types.is_null(t) or _ACCEPTS[kind](t)


def check_types(schema: pa.Schema, problems: ProblemLog) -> None:
    """Columns of a type sdbatch cannot read (whole-column problems)."""
    for column in COLUMNS:
        if column.name in schema.names:
            t = schema.field(column.name).type
            if not type_accepted(column.kind, t):
                problems.add(column.name, f"wrong type {t}, expected {KIND_DESCRIPTIONS[column.kind]}")


def check_schema(schema: pa.Schema, problems: ProblemLog) -> None:
    """Missing required columns, then column types."""
    for column in COLUMNS:
        if column.required and column.name not in schema.names:
            problems.add(column.name, "missing (required column)")
    check_types(schema, problems)


class BatchChecker:
    """Value checks for one record batch whose first row is manifest row ``offset``."""

    def __init__(self, batch: pa.RecordBatch, offset: int, problems: ProblemLog,
                 schedulers: Sequence[str]):
        self.batch = batch
        self.offset = offset
        self.problems = problems
        self.schedulers = schedulers
        self.modes = self._modes()

    def _column(self, name: str) -> pa.Array | None:
        if name not in self.batch.schema.names:
            return None
        return self.batch.column(name)

    def _modes(self) -> pa.Array:
        mode = self._column("mode")
        if mode is None:
            return pa.array(["txt2img"] * self.batch.num_rows, pa.string())
        return pc.fill_null(pc.cast(mode, pa.string()), "txt2img")

    def _report(self, name: str, bad: pa.Array, reason: str, values: pa.Array | None = None) -> None:
        """Record the rows where ``bad`` is true (null counts as fine)."""
        bad = pc.fill_null(bad, False)
        count = pc.sum(bad).as_py() or 0
        if not count:
            return
        rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False)) + self.offset
        shown = pc.filter(values, bad).slice(0, 20).to_pylist() if values is not None else ()
        self.problems.add(name, reason, rows=rows[:10], count=count, values=shown)

    # -- checks ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.check_mode()
        self.check_prompt()
        self.check_seed()
        self.check_range("guidance_scale", *GUIDANCE_RANGE, finite=True)
        self.check_range("steps", *STEPS_RANGE)
        for name in ("width", "height"):
            self.check_size(name)
        self.check_names("scheduler", self.schedulers, "unknown scheduler")
        self.check_strength()
        self.check_images()
        self.check_id()

    def check_mode(self) -> None:
        self.check_names("mode", MODES, "unknown mode")

    def check_names(self, name: str, known: Sequence[str], reason: str) -> None:
        values = self._column(name)
        if values is None:
            return
        values = pc.cast(values, pa.string())
        bad = pc.invert(pc.is_in(values, value_set=pa.array(list(known), pa.string())))
        self._report(name, pc.and_(bad, pc.is_valid(values)), f"{reason}; known: {', '.join(known)}", values)

    def check_prompt(self) -> None:
        prompt = self._column("prompt")
        if prompt is None:
            return
        prompt = pc.cast(prompt, pa.string())
        empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(prompt), ""), True)
        needs = pc.is_in(self.modes, value_set=pa.array([m for m in MODES if m not in MODES_WITHOUT_PROMPT]))
        for mode in pc.unique(pc.filter(self.modes, pc.and_(empty, needs))).to_pylist():
            in_mode = pc.and_(empty, pc.equal(self.modes, mode))
            self._report("prompt", in_mode, f"empty, mode {mode} needs a prompt")

    def check_seed(self) -> None:
        seed = self._column("seed")
        if seed is None or not pa.types.is_signed_integer(seed.type):
            return
        self._report("seed", pc.less(seed, 0), "must be between 0 and 2**64-1", seed)

    def check_range(self, name: str, low: float, high: float, finite: bool = False) -> None:
        values = self._column(name)
        if values is None or pa.types.is_null(values.type):
            return
        inside = pc.and_(pc.greater_equal(values, low), pc.less_equal(values, high))
        what = "a finite number " if finite else ""
        self._report(name, pc.invert(inside), f"must be {what}between {low:g} and {high:g}", values)

    def check_size(self, name: str) -> None:
        values = self._column(name)
        if values is None or pa.types.is_null(values.type):
            return
        low, high = SIZE_RANGE
        inside = pc.and_(pc.greater_equal(values, low), pc.less_equal(values, high))
        self._report(name, pc.invert(inside), f"must be between {low} and {high}", values)
        off_grid = pc.not_equal(pc.bit_wise_and(values, SIZE_MULTIPLE - 1), 0)
        self._report(name, pc.and_(inside, off_grid), f"must be a multiple of {SIZE_MULTIPLE}", values)

    def check_strength(self) -> None:
        values = self._column("strength")
        if values is None or pa.types.is_null(values.type):
            return
        inside = pc.and_(pc.greater(values, 0), pc.less_equal(values, 1))
        self._report("strength", pc.invert(inside), "must be in (0, 1]", values)

    def check_images(self) -> None:
        for mode, needed in MODE_IMAGES.items():
            in_mode = pc.equal(self.modes, mode)
            if not needed or not pc.any(in_mode).as_py():
                continue
            for name in needed:
                values = self._column(name)
                if values is None:
                    self._report(name, in_mode, f"missing, mode {mode} needs it")
                    continue
                empty = pc.fill_null(pc.equal(pc.binary_length(_plain(values)), 0), True)
                self._report(name, pc.and_(in_mode, empty), f"empty, mode {mode} needs an image")

    def check_id(self) -> None:
        values = self._column("id")
        if values is None or not _is_string(values.type):
            return
        empty = pc.equal(pc.binary_length(pc.cast(values, pa.string())), 0)
        self._report("id", empty, "empty id (leave it null to derive one)")


def _plain(values: pa.Array) -> pa.Array:
    """Dictionary and view columns as plain string/binary, for length kernels."""
    t = values.type
    if pa.types.is_dictionary(t):
        return _plain(pc.cast(values, t.value_type))
    if pa.types.is_string_view(t) or pa.types.is_null(t):
        return pc.cast(values, pa.string())
    if pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return pc.cast(values, pa.binary())
    return values


def check_batch(batch: pa.RecordBatch, offset: int, problems: ProblemLog, schedulers: Sequence[str]) -> None:
    BatchChecker(batch, offset, problems, schedulers).run()
