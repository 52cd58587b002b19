"""Where a manifest's rows come from: one Parquet file, a folder (Hive partitions included) or a
glob, opened as one ``pyarrow.dataset`` with a schema unified over all its files and read in
record batches, so no step needs the whole manifest in memory.

Row numbers are positions in the sorted file list, then in each file: the dataset is built from an
explicit, sorted list of files because Arrow guarantees row order only for such a list.
"""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from .problems import ManifestError
from .remote import S3Options, is_s3_uri, pyarrow_filesystem, split_s3_uri

BATCH_ROWS = 65_536
BATCH_BYTES = 16 * 2**20  # fewer rows a batch where rows are wide (image bytes in the manifest)
READ_BUFFER_BYTES = 2**20
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class ManifestSource:
    """An opened manifest: its files, the unified schema, and the folder image paths resolve in."""

    path: str
    files: tuple[str, ...]
    base: Path | str  # relative image paths resolve in this folder (a str: an s3:// folder URI)
    dataset: ds.Dataset

    @property
    def schema(self) -> pa.Schema:
        return self.dataset.schema

    @property
    def column_names(self) -> list[str]:
        return self.dataset.schema.names

    def count_rows(self) -> int:
        return self.dataset.count_rows()

    def batches(self, columns: list[str] | None = None,
                batch_rows: int = BATCH_ROWS) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(row number of the batch's first row, batch), in manifest order, every batch in the
        unified schema (restricted to ``columns``).

        Each file is read with ``ParquetFile.iter_batches`` through a small read buffer, which
        decodes one batch at a time; a dataset scan would load and decode a whole row group first
        (a million rows by default). Batches hold at most ``batch_rows`` rows and, by the file's
        own size statistics, about ``BATCH_BYTES``.
        """
        schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        offset = 0
        for fragment in self.dataset.get_fragments():
            partition = ds.get_partition_keys(fragment.partition_expression) or {}
            reader = pq.ParquetFile(fragment.filesystem.open_input_file(fragment.path), pre_buffer=False,
                                    buffer_size=READ_BUFFER_BYTES)
            in_file = [n for n in schema.names if n in reader.schema_arrow.names and n not in partition]
            rows = _rows_per_batch(reader.metadata, in_file, batch_rows)
            for batch in reader.iter_batches(batch_size=rows, columns=in_file, use_threads=False):
                if batch.num_rows:
                    yield offset, _conform(batch, schema, partition)
                    offset += batch.num_rows


def _rows_per_batch(metadata: pq.FileMetaData, columns: list[str], batch_rows: int) -> int:
    """``batch_rows``, or fewer where the file's uncompressed bytes a row would pass BATCH_BYTES."""
    if not metadata.num_rows:
        return batch_rows
    wanted = set(columns)
    size = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema.split(".")[0] in wanted:
                size += column.total_uncompressed_size
    per_row = max(size / metadata.num_rows, 1.0)
    return max(1, min(batch_rows, int(BATCH_BYTES // per_row)))


def _conform(batch: pa.RecordBatch, schema: pa.Schema, partition: dict) -> pa.RecordBatch:
    """``batch`` in ``schema``: promoted types, partition values as columns, absent columns null."""
    rows = batch.num_rows
    arrays = []
    for fld in schema:
        if fld.name in partition:
            arrays.append(pa.nulls(rows, fld.type).fill_null(pa.scalar(partition[fld.name], fld.type)))
        elif fld.name in batch.schema.names:
            values = batch.column(fld.name)
            arrays.append(values if values.type == fld.type else values.cast(fld.type))
        else:
            arrays.append(pa.nulls(rows, fld.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _is_glob(path: str) -> bool:
    return any(ch in path for ch in _GLOB_CHARS)


def _glob_base(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    plain = []
    for part in parts:
        if _is_glob(part):
            break
        plain.append(part)
    return Path(*plain) if plain else Path(".")


def _list_files(path: str) -> tuple[list[str], Path]:
    if _is_glob(path):
        files = sorted(f for f in globlib.glob(path, recursive=True) if Path(f).is_file())
        if not files:
            raise ManifestError(f"{path}: no files match")
        return files, _glob_base(path)
    p = Path(path)
    if p.is_dir():
        try:
            discovered = ds.dataset(str(p), format="parquet")
        except (OSError, pa.ArrowInvalid) as exc:
            raise ManifestError(f"{path}: cannot list the folder: {exc}") from exc
        files = sorted(discovered.files)
        if not files:
            raise ManifestError(f"{path}: no Parquet files in the folder")
        return files, p
    if p.is_file():
        return [str(p)], p.parent
    raise ManifestError(f"{path}: no such file or folder")


def _file_schemas(files: list[str], filesystem=None) -> list[pa.Schema]:
    schemas = []
    for f in files:
        try:
            schemas.append(pq.read_schema(f, filesystem=filesystem))
        except (OSError, pa.ArrowInvalid) as exc:
            raise ManifestError(f"{f}: cannot read as Parquet: {exc}") from exc
    return schemas


def _unify(files: list[str], schemas: list[pa.Schema]) -> pa.Schema:
    """One schema over all files: columns missing from a file read as null there."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    first_seen: dict[str, tuple[str, pa.DataType]] = {}
    for f, schema in zip(files, schemas):
        for fld in schema:
            if fld.name not in first_seen:
                first_seen[fld.name] = (f, fld.type)
                continue
            other_file, other_type = first_seen[fld.name]
            try:
                pa.unify_schemas([pa.schema([pa.field(fld.name, other_type)]), pa.schema([fld])],
                                 promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                raise ManifestError(
                    f"column '{fld.name}', all rows: files disagree on its type: "
                    f"{other_type} in {other_file}, {fld.type} in {f}"
                ) from None
    raise ManifestError("the files' schemas cannot be combined")  # not reached in practice


def open_manifest(path: str | Path, s3: S3Options | None = None) -> ManifestSource:
    """Open ``path`` (a Parquet file, a folder of them, Hive partitions included, or a glob; or an
    ``s3://`` file or folder, read through pyarrow's S3 filesystem configured by ``s3``)."""
    path = str(path)
    if is_s3_uri(path):
        return _open_s3_manifest(path, s3 or S3Options())
    files, base = _list_files(path)
    schemas = _file_schemas(files)
    partitioning = None
    if len(files) > 1 or Path(path).is_dir():
        partitioning = ds.HivePartitioning.discover()
        probe = ds.dataset(files, format="parquet", partitioning=partitioning, partition_base_dir=str(base))
        partition_fields = [f for f in probe.schema if f.name not in schemas[0].names]
        if partition_fields:
            schemas.append(pa.schema(partition_fields))
    schema = _unify(files, schemas)
    dataset = ds.dataset(files, schema=schema, format="parquet", partitioning=partitioning,
                         partition_base_dir=str(base) if partitioning else None)
    return ManifestSource(path=path, files=tuple(files), base=base.absolute(), dataset=dataset)


def _open_s3_manifest(path: str, s3: S3Options) -> ManifestSource:
    """An ``s3://`` Parquet file or folder of files (no globs, no Hive partitions). Relative image
    paths resolve against the folder the manifest sits in (the URI itself when it names a folder)."""
    from pyarrow import fs

    if _is_glob(path):
        raise ManifestError(f"{path}: globs are not supported on s3://; name a file or a folder")
    try:
        bucket, key = split_s3_uri(path)
        filesystem = pyarrow_filesystem(s3)
        where = f"{bucket}/{key}".rstrip("/")
        is_folder = filesystem.get_file_info(where).type == fs.FileType.Directory
        files = sorted(ds.dataset(where, format="parquet", filesystem=filesystem).files)
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc
    if not files:
        raise ManifestError(f"{path}: no Parquet files there")
    folder = key if is_folder else key.rpartition("/")[0]
    base = f"s3://{bucket}/{folder}".rstrip("/")
    schema = _unify(files, _file_schemas(files, filesystem))
    dataset = ds.dataset(files, schema=schema, format="parquet", filesystem=filesystem)
    return ManifestSource(path=path, files=tuple(files), base=base, dataset=dataset)
