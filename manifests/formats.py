"""Manifest file formats: which reader a file needs, the pyarrow dataset format that reads it with
the column types sdbatch expects, and read errors turned into refusals that name the file (and the
column, where the reader says which).

A file's format comes from its extension (``.parquet``/``.pq``, ``.csv``, ``.tsv``,
``.jsonl``/``.ndjson``, text formats optionally compressed: ``.csv.gz``), else from its first bytes
(Parquet's magic, a JSON object, UTF-8 text). Reading is pyarrow's own: Parquet, and
``pyarrow.dataset``'s CSV and JSON formats, all streamed in record batches.

Text formats carry no column types, so the known text columns (prompts, ids, names, image paths)
are read as strings whatever they hold (id ``001`` stays ``001``), numbers are inferred as numbers,
only an empty unquoted cell is null (``""`` is an empty string, ``NA`` a prompt, ``nan`` a number to
refuse), and a seed column that needs more than int64 is read as uint64.
"""

from __future__ import annotations

import csv
import re
from pathlib import PurePosixPath
from typing import Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.json as pajson

from .problems import ManifestError
from .schema import COLUMNS, ID, IMAGE, STRING

PARQUET, CSV, TSV, JSONL = "parquet", "csv", "tsv", "jsonl"
FORMAT_NAMES = {PARQUET: "Parquet", CSV: "CSV", TSV: "TSV", JSONL: "JSON Lines"}
EXTENSIONS = {".parquet": PARQUET, ".pq": PARQUET, ".parq": PARQUET, ".csv": CSV, ".tsv": TSV,
              ".jsonl": JSONL, ".ndjson": JSONL}
# Stream compressions pyarrow detects from the extension (text formats only: Parquet compresses inside).
COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
SUPPORTED = "Parquet (.parquet, .pq), CSV (.csv), TSV (.tsv) or JSON Lines (.jsonl, .ndjson)"
SNIFF_BYTES = 64 * 1024
# A text row must fit in one read block (pyarrow's limit); blocks are also what bounds a batch's bytes.
TEXT_BLOCK_BYTES = 16 * 2**20
_MESSAGE_CHARS = 300

# Known columns read as text in CSV/TSV whatever their cells look like.
TEXT_COLUMNS = tuple(c.name for c in COLUMNS if c.kind in (STRING, ID, IMAGE))


def format_by_extension(path: str) -> str | None:
    """The format the file's extension names, or None where it names none of ours."""
    suffixes = [s.lower() for s in PurePosixPath(path).suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
        fmt = EXTENSIONS.get(suffixes[-1]) if suffixes else None
        return fmt if fmt != PARQUET else None
    return EXTENSIONS.get(suffixes[-1]) if suffixes else None


def sniff_format(head: bytes) -> str | None:
    """The format of a file starting with ``head``, or None: Parquet by its magic bytes, JSON Lines
    by a leading ``{``, CSV (TSV where the first line has tabs and no commas) for other UTF-8 text."""
    if head.startswith(b"PAR1"):
        return PARQUET
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    if not head.strip() or b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut_short = len(head) >= SNIFF_BYTES - 3 and exc.start >= len(head) - 3
        if not cut_short:  # not just a character cut at the end of the sniffed bytes
            return None
        text = head[:exc.start].decode("utf-8")
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return JSONL
    if stripped.startswith("["):
        return None
    first_line = text.split("\n", 1)[0]
    return TSV if "\t" in first_line and "," not in first_line else CSV


def _not_a_manifest(path: str, head: bytes) -> ManifestError:
    if head.lstrip().startswith(b"["):
        why = "a JSON array; write JSON Lines (one object a line, .jsonl)"
    elif head.strip() and b"\x00" not in head:
        why = "text that is not UTF-8; save it as UTF-8"
    elif not head.strip():
        why = "empty"
    else:
        why = "none of the formats sdbatch reads"
    return ManifestError(f"{path}: not a manifest file ({why}); sdbatch reads {SUPPORTED}")


def _head(path: str, filesystem=None) -> bytes:
    try:
        if filesystem is None:
            with open(path, "rb") as f:
                return f.read(SNIFF_BYTES)
        with filesystem.open_input_stream(path) as f:
            return f.read(SNIFF_BYTES)
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc


def detect_format(path: str, filesystem=None) -> str:
    """The format of the manifest file ``path`` (``parquet``, ``csv``, ``tsv`` or ``jsonl``): by its
    extension (reading nothing), else by its first bytes. A file in none of them is refused, naming
    the formats."""
    by_extension = format_by_extension(path)
    if by_extension is not None:
        return by_extension
    head = _head(path, filesystem)
    sniffed = sniff_format(head)
    if sniffed is None:
        raise _not_a_manifest(path, head)
    return sniffed


def dataset_format(fmt: str) -> ds.FileFormat:
    """The pyarrow dataset format that reads ``fmt`` with sdbatch's column types."""
    if fmt == PARQUET:
        return ds.ParquetFileFormat()
    if fmt in (CSV, TSV):
        return ds.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter="\t" if fmt == TSV else ",", newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in TEXT_COLUMNS},
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False),
            read_options=pacsv.ReadOptions(block_size=TEXT_BLOCK_BYTES),
        )
    if fmt == JSONL:
        return ds.JsonFileFormat(read_options=pajson.ReadOptions(block_size=TEXT_BLOCK_BYTES))
    raise ValueError(f"unknown manifest format {fmt!r}")


def text_schema(fmt: str, path: str, schema: pa.Schema) -> pa.Schema:
    """A text file's inferred schema as sdbatch reads it: a ``seed`` column inferred as floating
    point (integers past int64) read as uint64; in CSV/TSV, a column pyarrow could only read as
    bytes is refused as text that is not UTF-8."""
    if fmt == PARQUET:
        return schema
    if fmt in (CSV, TSV):
        for fld in schema:
            if pa.types.is_binary(fld.type) or pa.types.is_large_binary(fld.type):
                raise ManifestError(f"column '{fld.name}', all rows: {path} holds text that is not UTF-8 "
                                    "there; save the file as UTF-8")
    index = schema.get_field_index("seed")
    if index >= 0 and pa.types.is_floating(schema.field(index).type):
        schema = schema.set(index, pa.field("seed", pa.uint64()))
    return schema


_CSV_COLUMN = re.compile(r"In CSV column #(\d+)")
_JSON_COLUMN = re.compile(r"Column\(/([^)/]*)")
_REPEATED_COLUMN = re.compile(r"multiple columns named (.*)$")
_EXPLAINED = (
    ("straddling object straddles two block boundaries",
     f"a row longer than {TEXT_BLOCK_BYTES // 2**20} MiB, or an unclosed quote"),
    ("invalid UTF8", "text that is not UTF-8; save the file as UTF-8"),
    ("Empty CSV file", "empty file (no header, no rows)"),
    ("Empty JSON stream", "empty file (no rows)"),
)


def text_header(path: str, fmt: str, filesystem=None) -> list[str]:
    """The column names on a CSV/TSV file's first line (best effort: for naming a column in a
    refusal when pyarrow could not open the file)."""
    if fmt not in (CSV, TSV):
        return []
    try:
        head = _head(path, filesystem)
    except ManifestError:
        return []
    first = head.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace").splitlines()[:1]
    return next(csv.reader(first, delimiter="\t" if fmt == TSV else ","), [])


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS - 3] + "..."


def not_parquet_refusal(path: str, exc: BaseException, filesystem=None) -> ManifestError:
    """A file named as Parquet that pyarrow cannot open: what it looks like instead, where its first
    bytes say (a CSV named ``.parquet``), else pyarrow's reason."""
    try:
        head = _head(path, filesystem)
    except ManifestError as unreadable:
        return unreadable
    if head.startswith(b"PAR1"):
        return read_refusal(path, exc)
    seen = sniff_format(head)
    looks = f"; it looks like {FORMAT_NAMES[seen]}" if seen else ("; it is empty" if not head else "")
    return ManifestError(f"{path}: not a Parquet file (no Parquet magic bytes{looks}); sdbatch reads {SUPPORTED}")


def read_refusal(path: str, exc: BaseException, columns: Sequence[str] = ()) -> ManifestError:
    """``exc`` (raised by pyarrow reading ``path``) as a refusal naming the file, and the column
    where the reader's message says which: ``columns`` are the file's own columns in file order."""
    text = str(exc)
    # Drop pyarrow's dataset-factory preamble, keep the reader's own words.
    text = text.rsplit("Is this a 'csv' file?: ", 1)[-1].rsplit("Is this a 'json' file?: ", 1)[-1]
    column = None
    match = _CSV_COLUMN.search(text)
    if match and int(match.group(1)) < len(columns):
        column = columns[int(match.group(1))]
    match = _JSON_COLUMN.search(text)
    if column is None and match:
        column = match.group(1)
    match = _REPEATED_COLUMN.search(text)
    if column is None and match:
        column = match.group(1)
        text = "more than one column of that name"
    if column is None and "to uint64" in text and "seed" in columns:
        column = "seed"  # the only column sdbatch asks a text reader for as uint64
    reason = next((why for needle, why in _EXPLAINED if needle in text), None)
    detail = f"{reason} ({_shorten(text)})" if reason else _shorten(text)
    if column is not None:
        return ManifestError(f"column '{column}': cannot read {path}: {detail}")
    damaged = "" if reason else " (damaged or not a manifest file?)"
    return ManifestError(f"{path}: cannot read{damaged}: {detail}")
