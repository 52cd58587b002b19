"""Where a manifest's rows come from: one Parquet, CSV/TSV or JSON Lines file, a folder (Hive
partitions included) or a glob of files in one format, opened as one ``pyarrow.dataset`` with a
schema unified over all its files and read in record batches, so no step needs the whole manifest in
memory. ``formats`` says which reader a file needs and what its read errors mean.

Row numbers are positions in the sorted file list, then in each file: the dataset is built from an
explicit, sorted list of files because Arrow guarantees row order only for such a list.
"""

from __future__ import annotations

import glob as globlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .formats import (
    PARQUET,
    dataset_format,
    detect_format,
    not_parquet_refusal,
    read_refusal,
    text_header,
    text_schema,
)
from .problems import ManifestError, Problem
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
        try:
            return self.dataset.count_rows()
        except (pa.ArrowException, OSError) as exc:
            raise read_refusal(self.path, exc) from exc

    def check_utf8(self, columns: list[str], batch_rows: int = BATCH_ROWS) -> None:
        """Read the text ``columns`` of a Parquet manifest only to refuse text that is not UTF-8
        (``batches`` does so for the columns it reads; CSV and JSON readers check as they read)."""
        names = [n for n in columns if _is_text(self.schema.field(n).type)]
        if names and isinstance(self.dataset.format, ds.ParquetFileFormat):
            for _ in self.batches(names, batch_rows):
                pass

    def batches(self, columns: list[str] | None = None,
                batch_rows: int = BATCH_ROWS) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(row number of the batch's first row, batch), in manifest order, every batch in the
        unified schema (restricted to ``columns``).

        Each Parquet file is read with ``ParquetFile.iter_batches`` through a small read buffer,
        which decodes one batch at a time; a dataset scan would load and decode a whole row group
        first (a million rows by default). Batches hold at most ``batch_rows`` rows and, by the
        file's own size statistics, about ``BATCH_BYTES``. Text files are read a block of text at a
        time. A file that cannot be read (damaged pages, a cell that does not convert) is refused
        with a ``ManifestError`` naming it, whenever in the stream it shows.
        """
        schema = self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        read = _parquet_batches if isinstance(self.dataset.format, ds.ParquetFileFormat) else _text_batches
        offset = 0
        for fragment in self.dataset.get_fragments():
            partition = ds.get_partition_keys(fragment.partition_expression) or {}
            try:
                for batch in read(self.dataset, fragment, schema, partition, batch_rows):
                    if batch.num_rows:
                        batch = _conform(batch, schema, partition, fragment.path)
                        if read is _parquet_batches:  # text readers check UTF-8 themselves
                            _check_utf8(batch, offset, fragment.path)
                        yield offset, batch
                        offset += batch.num_rows
            except (pa.ArrowException, OSError) as exc:
                raise read_refusal(fragment.path, exc, _file_columns(fragment)) from exc


def _parquet_batches(dataset: ds.Dataset, fragment: ds.Fragment, schema: pa.Schema, partition: dict,
                     batch_rows: int) -> Iterator[pa.RecordBatch]:
    reader = pq.ParquetFile(fragment.filesystem.open_input_file(fragment.path), pre_buffer=False,
                            buffer_size=READ_BUFFER_BYTES)
    in_file = [n for n in schema.names if n in reader.schema_arrow.names and n not in partition]
    rows = _rows_per_batch(reader.metadata, in_file, batch_rows)
    yield from reader.iter_batches(batch_size=rows, columns=in_file, use_threads=False)


def _text_batches(dataset: ds.Dataset, fragment: ds.Fragment, schema: pa.Schema, partition: dict,
                  batch_rows: int) -> Iterator[pa.RecordBatch]:
    """A CSV/TSV/JSON Lines file read one block at a time (at most ``TEXT_BLOCK_BYTES`` of text) in
    the dataset's types; columns the file lacks come back null."""
    wanted = [n for n in schema.names if n not in partition]
    yield from fragment.to_batches(schema=dataset.schema, columns=wanted, batch_size=batch_rows,
                                   batch_readahead=0, fragment_readahead=0, use_threads=False)


def _file_columns(fragment: ds.Fragment) -> list[str]:
    """The file's own column names in file order (for naming the column of a read error)."""
    try:
        return fragment.physical_schema.names
    except (pa.ArrowException, OSError):
        return []


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


def _conform(batch: pa.RecordBatch, schema: pa.Schema, partition: dict, path: str = "") -> pa.RecordBatch:
    """``batch`` in ``schema``: promoted types, partition values as columns, absent columns null."""
    rows = batch.num_rows
    arrays = []
    for fld in schema:
        if fld.name in partition:
            arrays.append(pa.nulls(rows, fld.type).fill_null(pa.scalar(partition[fld.name], fld.type)))
        elif fld.name in batch.schema.names:
            values = batch.column(fld.name)
            try:
                arrays.append(values if values.type == fld.type else values.cast(fld.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ManifestError(
                    f"column '{fld.name}', all rows: {values.type} values in {path} do not fit {fld.type}, "
                    f"the type the manifest's files share ({exc}); give the column one type in every file"
                ) from exc
        else:
            arrays.append(pa.nulls(rows, fld.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_text(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _check_utf8(batch: pa.RecordBatch, offset: int, path: str) -> None:
    """Parquet string columns must hold UTF-8 (a writer may not have checked): text that is not is
    refused with its column and rows, before any kernel or Python decoding trips on it."""
    for name, values in zip(batch.schema.names, batch.columns):
        if not _is_text(values.type):
            continue
        try:
            values.validate(full=True)
        except pa.ArrowInvalid:
            if pa.types.is_dictionary(values.type):
                values = values.dictionary_decode()
            cells = pc.cast(values, pa.large_string()).view(pa.large_binary()).to_pylist()
            rows = [offset + i for i, cell in enumerate(cells) if cell is not None and not _utf8(cell)]
            problem = Problem(name, f"not UTF-8 text in {path}")
            problem.add(rows, len(rows))
            raise ManifestError(problem.message(), [problem]) from None


def _utf8(cell: bytes) -> bool:
    try:
        cell.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


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


def _hidden(relative: str) -> bool:
    """Arrow's discovery rule: a file under a folder or name starting with ``_`` or ``.`` is skipped."""
    return any(part.startswith(("_", ".")) for part in Path(relative).parts)


def _folder_files(folder: Path) -> list[str]:
    selector = pafs.FileSelector(str(folder.absolute()), recursive=True)
    try:
        infos = pafs.LocalFileSystem().get_file_info(selector)
    except OSError as exc:
        raise ManifestError(f"{folder}: cannot list the folder: {exc}") from exc
    root = str(folder.absolute())
    return [info.path for info in infos
            if info.type == pafs.FileType.File and not _hidden(info.path[len(root):].lstrip("/"))]


def _list_files(path: str) -> tuple[list[str], Path]:
    if _is_glob(path):
        files = sorted(f for f in globlib.glob(path, recursive=True) if Path(f).is_file())
        if not files:
            raise ManifestError(f"{path}: no files match")
        return files, _glob_base(path)
    p = Path(path)
    if p.is_dir():
        files = sorted(_folder_files(p))
        if not files:
            raise ManifestError(f"{path}: no manifest files in the folder")
        return files, p
    if p.is_file():
        return [str(p)], p.parent
    raise ManifestError(f"{path}: no such file or folder")


def files_format(files: list[str], filesystem=None) -> str:
    """The one format of all ``files`` (see ``formats.detect_format``); files in several formats
    are refused, naming one of each."""
    seen: dict[str, str] = {}
    for f in files:
        seen.setdefault(detect_format(f, filesystem), f)
    if len(seen) > 1:
        shown = ", ".join(f"{f} is {fmt}" for fmt, f in seen.items())
        raise ManifestError(f"the manifest's files must share one format: {shown}")
    return next(iter(seen))


def _duplicate_names(f: str, schema: pa.Schema) -> None:
    repeated = sorted({n for n in schema.names if schema.names.count(n) > 1})
    if repeated:
        raise ManifestError(f"column '{repeated[0]}', all rows: {f} has more than one column of that name")


def _file_schemas(files: list[str], filesystem=None, fmt: str = PARQUET) -> list[pa.Schema]:
    schemas = []
    for f in files:
        try:
            if fmt == PARQUET:
                schema = pq.read_schema(f, filesystem=filesystem)
            else:
                schema = ds.dataset([f], format=dataset_format(fmt), filesystem=filesystem).schema
        except (pa.ArrowException, OSError) as exc:
            if fmt == PARQUET:
                raise not_parquet_refusal(f, exc, filesystem) from exc
            raise read_refusal(f, exc, text_header(f, fmt, filesystem)) from exc
        _duplicate_names(f, schema)
        schemas.append(text_schema(fmt, f, schema))
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
    """Open ``path`` (a Parquet, CSV/TSV or JSON Lines file, a folder of files in one of those
    formats, Hive partitions included, or a glob; or an ``s3://`` file or folder, read through
    pyarrow's S3 filesystem configured by ``s3``)."""
    path = str(path)
    if is_s3_uri(path):
        return _open_s3_manifest(path, s3 or S3Options())
    files, base = _list_files(path)
    fmt = files_format(files)
    file_format = dataset_format(fmt)
    schemas = _file_schemas(files, fmt=fmt)
    partitioning = None
    if len(files) > 1 or Path(path).is_dir():
        partitioning = ds.HivePartitioning.discover()
        try:
            probe = ds.dataset(files, format=file_format, partitioning=partitioning, partition_base_dir=str(base))
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(f"{path}: cannot open: {exc}") from exc
        partition_fields = [f for f in probe.schema if f.name not in schemas[0].names]
        if partition_fields:
            schemas.append(pa.schema(partition_fields))
    schema = _unify(files, schemas)
    try:
        dataset = ds.dataset(files, schema=schema, format=file_format, partitioning=partitioning,
                             partition_base_dir=str(base) if partitioning else None)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"{path}: cannot open: {exc}") from exc
    return ManifestSource(path=path, files=tuple(files), base=base.absolute(), dataset=dataset)


def _open_s3_manifest(path: str, s3: S3Options) -> ManifestSource:
    """An ``s3://`` manifest file or folder of files in one format (no globs, no Hive partitions).
    Relative image paths resolve against the folder the manifest sits in (the URI itself when it
    names a folder)."""
    from pyarrow import fs

    if _is_glob(path):
        raise ManifestError(f"{path}: globs are not supported on s3://; name a file or a folder")
    try:
        bucket, key = split_s3_uri(path)
        filesystem = pyarrow_filesystem(s3)
        where = f"{bucket}/{key}".rstrip("/")
        info = filesystem.get_file_info(where)
        is_folder = info.type == fs.FileType.Directory
        if is_folder:
            found = filesystem.get_file_info(fs.FileSelector(where, recursive=True))
            files = sorted(f.path for f in found if f.type == fs.FileType.File
                           and not Path(f.path).name.startswith(("_", ".")))
        else:
            files = [where] if info.type == fs.FileType.File else []
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc
    if not files:
        raise ManifestError(f"{path}: no manifest files there")
    fmt = files_format(files, filesystem)
    folder = key if is_folder else key.rpartition("/")[0]
    base = f"s3://{bucket}/{folder}".rstrip("/")
    schema = _unify(files, _file_schemas(files, filesystem, fmt))
    dataset = ds.dataset(files, schema=schema, format=dataset_format(fmt), filesystem=filesystem)
    return ManifestSource(path=path, files=tuple(files), base=base, dataset=dataset)
