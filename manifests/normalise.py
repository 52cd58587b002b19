"""Normalisation of a checked record batch: every schema column present, in its normal type, with
defaults filled, and an ``id`` on every row (the given one, or one derived from the row).

Seeds stay null where not given: they are derived from the final id by ``reader``.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .ids import derive_ids
from .schema import COLUMN_NAMES, COLUMNS, DEFAULTS, IMAGE

_CASTS = {c.name: c.type for c in COLUMNS if c.type is not None}


def _image_column(values: pa.Array | None, rows: int) -> pa.Array:
    """String or binary as given (view/dictionary/large forms made plain); empty cells are null."""
    if values is None or pa.types.is_null(values.type):
        return pa.nulls(rows, pa.string())
    t = values.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    binary = (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
              or pa.types.is_fixed_size_binary(t))
    values = pc.cast(values, pa.binary() if binary else pa.string())
    empty = pc.equal(pc.binary_length(values), 0)
    return pc.if_else(empty, pa.scalar(None, values.type), values)


def normalise_batch(batch: pa.RecordBatch, default_model: str) -> pa.Table:
    """The schema columns of ``batch`` normalised (extras are left out; see ``extra_columns``)."""
    rows = batch.num_rows
    names = batch.schema.names
    columns: dict[str, pa.Array] = {}
    for column in COLUMNS:
        values = batch.column(column.name) if column.name in names else None
        if column.kind == IMAGE:
            columns[column.name] = _image_column(values, rows)
            continue
        target = _CASTS[column.name]
        values = pa.nulls(rows, target) if values is None else pc.cast(values, target, safe=False)
        if column.name in DEFAULTS:
            values = pc.fill_null(values, DEFAULTS[column.name])
        columns[column.name] = values
    columns["prompt"] = pc.fill_null(columns["prompt"], "")
    model = columns["model"]
    columns["model"] = pc.if_else(pc.fill_null(pc.equal(model, ""), True), default_model, model)
    table = pa.table({name: columns[name] for name in COLUMN_NAMES})
    given = table.column("id")
    if given.null_count:
        ids = pc.coalesce(given, derive_ids(table))
        table = table.set_column(table.schema.get_field_index("id"), "id", ids)
    return table


def extra_columns(names: list[str]) -> list[str]:
    """Columns that are not part of the schema: carried through to the output metadata."""
    return [n for n in names if n not in COLUMN_NAMES]
