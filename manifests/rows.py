"""Normalised rows in Arrow and as ``GenerationRow`` objects.

The planner keeps rows in Arrow (``with_resolved_images`` rewrites relative image paths while they
are still columns); a worker turns one shard's table into ``GenerationRow`` objects with
``rows_of`` (a shard is bounded, a manifest is not). The row's output key and, when absent, its
seed are derived here from its id.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .ids import derive_seed, safe_key
from .schema import COLUMN_NAMES, IMAGE_COLUMNS, GenerationRow

ROW_INDEX = "row_index"  # the row's position in the manifest (counted from 0, across files)


def _is_string(values: pa.ChunkedArray | pa.Array) -> bool:
    return pa.types.is_string(values.type) or pa.types.is_large_string(values.type)


def with_resolved_images(table: pa.Table, base: Path | str) -> pa.Table:
    """Image cells that are relative paths, made relative to ``base`` (the manifest's folder; a
    ``str`` is an ``s3://`` folder). Bytes, absolute paths and URIs stay as they are."""
    prefix = str(base).rstrip("/") + "/"
    for name in IMAGE_COLUMNS:
        values = table.column(name)
        if not _is_string(values) or values.null_count == len(values):
            continue
        absolute = pc.or_(pc.starts_with(values, "/"), pc.match_substring(values, "://"))
        joined = pc.binary_join_element_wise(pa.scalar(prefix), values, "")
        resolved = pc.if_else(pc.fill_null(absolute, True), values, joined)
        table = table.set_column(table.schema.get_field_index(name), name, resolved)
    return table


def extra_names(table: pa.Table) -> list[str]:
    """The table's columns that are neither schema columns nor the row index: the user's labels."""
    return [n for n in table.column_names if n not in COLUMN_NAMES and n != ROW_INDEX]


def rows_of(table: pa.Table) -> list[GenerationRow]:
    """One ``GenerationRow`` per row of a normalised table with a ``row_index`` column."""
    extras = extra_names(table)
    rows = []
    for values in table.to_pylist():
        labels = tuple((name, values.pop(name)) for name in extras)
        row_id = values.pop("id")
        seed = values.pop("seed")
        rows.append(GenerationRow(
            row_index=values.pop(ROW_INDEX), key=safe_key(row_id), id=row_id,
            seed=derive_seed(row_id) if seed is None else seed, extras=labels, **values,
        ))
    return rows
