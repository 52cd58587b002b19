"""Reading manifests into normalised rows, after the whole manifest has passed validation.

``load_manifest`` / ``load_rows`` give every distinct row as a ``GenerationRow`` (what ``sdbatch
run`` plans from). ``iter_row_batches`` gives the same rows a record batch at a time, for callers
that must not hold millions of rows as Python objects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa

from sdbatch.jobs.storage import StorageOptions

from .ids import derive_seed, safe_key
from .normalise import extra_columns, normalise_batch
from .problems import ManifestError
from .schema import COLUMN_NAMES, IMAGE_COLUMNS, GenerationRow
from .source import BATCH_ROWS, ManifestSource, open_manifest
from .validate import ManifestReport, validate_source

log = logging.getLogger(__name__)

__all__ = ["ManifestError", "LoadedManifest", "load_manifest", "load_rows", "iter_row_batches"]


@dataclass(frozen=True)
class LoadedManifest:
    rows: list[GenerationRow]  # one per distinct row, in manifest order
    report: ManifestReport


def _resolve_image_cell(value, base: Path | str | None):
    """Image cells are bytes (an encoded image) or a path/URI; relative paths are relative to the
    manifest's own folder."""
    if value is None or isinstance(value, bytes) or base is None:
        return value
    if "://" in value or Path(value).is_absolute():
        return value
    return str(base / value) if isinstance(base, Path) else f"{base}/{value}"  # str: an s3:// folder


def _rows_of(table: pa.Table, row_numbers: np.ndarray, extras: pa.Table, base: Path | str) -> list[GenerationRow]:
    rows = []
    extra_names = extras.column_names
    extra_values = extras.to_pylist()
    for index, values, extra in zip(row_numbers.tolist(), table.to_pylist(), extra_values):
        row_id = values.pop("id")
        seed = values.pop("seed")
        for name in IMAGE_COLUMNS:
            values[name] = _resolve_image_cell(values[name], base)
        rows.append(GenerationRow(
            row_index=index, key=safe_key(row_id), id=row_id,
            seed=derive_seed(row_id) if seed is None else seed,
            extras=tuple((n, extra[n]) for n in extra_names), **values,
        ))
    return rows


def iter_row_batches(source: ManifestSource, default_model: str, skip_rows: np.ndarray | None = None,
                     batch_rows: int = BATCH_ROWS) -> Iterator[list[GenerationRow]]:
    """The rows of an already validated ``source``, a batch at a time, without ``skip_rows``
    (the exact duplicates ``validate_source`` found)."""
    skip = np.sort(np.asarray(skip_rows if skip_rows is not None else [], np.int64))
    extras_names = extra_columns(source.column_names)
    for offset, batch in source.batches(batch_rows=batch_rows):
        numbers = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
        skipped = skip[np.searchsorted(skip, offset):np.searchsorted(skip, offset + batch.num_rows)]
        if len(skipped):
            keep = np.ones(batch.num_rows, bool)
            keep[skipped - offset] = False
            batch = batch.filter(pa.array(keep))
            numbers = numbers[keep]
        if not batch.num_rows:
            continue
        known = pa.RecordBatch.from_arrays(
            [batch.column(n) for n in batch.schema.names if n in COLUMN_NAMES],
            names=[n for n in batch.schema.names if n in COLUMN_NAMES],
        )
        table = normalise_batch(known, default_model)
        extras = pa.Table.from_batches([batch]).select(extras_names)
        yield _rows_of(table, numbers, extras, source.base)


def load_manifest(path: str | Path, default_model: str, storage: StorageOptions | None = None) -> LoadedManifest:
    """Validate the whole manifest (raising ``ManifestError`` naming column, rows and reason), then
    read its distinct rows. ``storage`` configures S3 access for ``s3://`` manifests."""
    source = open_manifest(path, storage)
    report = validate_source(source, default_model)
    report.raise_if_refused()
    for note in report.notes:
        log.warning("%s: %s", path, note)
    rows = [row for batch in iter_row_batches(source, default_model, report.duplicate_row_numbers)
            for row in batch]
    return LoadedManifest(rows=rows, report=report)


def load_rows(path: str | Path, default_model: str, storage: StorageOptions | None = None) -> list[GenerationRow]:
    return load_manifest(path, default_model, storage).rows
