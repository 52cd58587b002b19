"""Row ids and seeds: stable, path-safe and derived deterministically when not given.

A derived id is a hash of a canonical encoding of the row's generation parameters (after
defaults) and its model, so the same row always maps to the same output, wherever the manifest
lives and however it is split into files. The encoding is built with Arrow compute kernels over a
whole record batch; only the final SHA-256 runs per row.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np

import pyarrow as pa
import pyarrow.compute as pc

from .schema import COLUMNS_BY_NAME, FLOAT, GENERATION_COLUMNS, IMAGE, INT, SEED

MAX_KEY_LENGTH = 120
_ID_VERSION = b"sdbatch-id-v1"
_NULL = "~"

# Output keys: ids kept as they are where they hold only these characters (and do not start with
# "-"); every other character is escaped as "~" and two hex digits a UTF-8 byte. Keys never hold a
# dot (webdataset splits a member's name at its first dot) and so never "..".
_UNSAFE = re.compile(r"^-|[^A-Za-z0-9_-]")  # a leading "-" or any character outside the safe set
_ESCAPE = "~"
# Marks a key cut to MAX_KEY_LENGTH: an untruncated key has "~" only before two hex digits.
_TRUNCATED = "~~"
_KEY_HASH_HEX = 32  # 128 bits of SHA-256 of the whole id after the marker
_KEEP_CHARS = MAX_KEY_LENGTH - len(_TRUNCATED) - _KEY_HASH_HEX


def _escape_match(match: re.Match) -> str:
    return "".join(f"{_ESCAPE}{byte:02x}" for byte in match.group().encode("utf-8", "surrogatepass"))


def safe_key(row_id: str) -> str:
    """The output name of ``row_id``: a file name / object key / webdataset sample name, and a
    different one for every different id.

    Ids of ``A-Z a-z 0-9 _ -`` (not starting with ``-``) are their own key (``row_001``,
    ``cat-01``); other characters are escaped reversibly as ``~`` + two hex digits a UTF-8 byte
    (``a b`` -> ``a~20b``, ``a.b`` -> ``a~2eb``). A key that would pass ``MAX_KEY_LENGTH``
    characters (or an empty id) is cut to its first escaped characters, then ``~~`` and 128 bits
    of SHA-256 of the whole id: no untruncated key holds ``~~``. So keys never hold ``/``, ``.``
    or a leading ``-``, and two ids share a key only if their 128-bit hashes collide.
    """
    escaped = _UNSAFE.sub(_escape_match, row_id)
    if escaped and len(escaped) <= MAX_KEY_LENGTH:
        return escaped
    cut = escaped[:_KEEP_CHARS]
    partial = cut.rfind(_ESCAPE, max(0, len(cut) - 2))
    if partial >= 0:  # do not leave half an escape before the marker
        cut = cut[:partial]
    digest = hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).hexdigest()[:_KEY_HASH_HEX]
    return f"{cut}{_TRUNCATED}{digest}"


def derive_seed(row_id: str) -> int:
    """A seed in 0..2**64-1 from the row id."""
    return int.from_bytes(hashlib.sha256(b"sdbatch-seed:" + row_id.encode()).digest()[:8], "big")


def _length_prefixed(values: pa.Array) -> pa.Array:
    """``<byte length>:<value>``: unambiguous whatever the value contains."""
    length = pc.cast(pc.binary_length(values), pa.string())
    return pc.binary_join_element_wise(length, values, ":")


def _encode_float(values: pa.Array) -> pa.Array:
    """The exact IEEE-754 bits, as decimal text: no formatting that could change between versions."""
    values = pc.add(pc.cast(values, pa.float64()), 0.0)  # -0.0 + 0.0 is 0.0
    return pc.cast(values.view(pa.int64()), pa.string())


def _encode_image(values: pa.Array) -> pa.Array:
    """Paths/URIs as written (``s``), encoded bytes by their SHA-256 (``b``)."""
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        digests = [None if v is None else hashlib.sha256(v).hexdigest() for v in values.to_pylist()]
        return pc.binary_join_element_wise("b", pa.array(digests, pa.string()), "")
    return pc.binary_join_element_wise("s", _length_prefixed(pc.cast(values, pa.string())), "")


def _encode_column(name: str, values: pa.Array) -> pa.Array:
    kind = COLUMNS_BY_NAME[name].kind
    if kind == FLOAT:
        return _encode_float(values)
    if kind in (INT, SEED):
        return pc.cast(values, pa.string())
    if kind == IMAGE:
        return _encode_image(values)
    return _length_prefixed(pc.cast(values, pa.string()))


def _optional_part(name: str, values: pa.Array) -> pa.Array:
    """``name=<encoded value>`` where a row sets a later column (null where it is empty or default)."""
    column = COLUMNS_BY_NAME[name]
    unset = pc.is_null(values)
    if column.default is not None:
        unset = pc.or_(unset, pc.equal(values, pa.scalar(column.default, values.type)))
    encoded = pc.binary_join_element_wise(f"{name}=", _encode_column(name, values), "")
    return pc.if_else(pc.fill_null(unset, True), pa.scalar(None, pa.string()), encoded)


def canonical_params(table: pa.Table | pa.RecordBatch) -> pa.Array:
    """One unambiguous string per row from its normalised generation columns (see ``normalise``):
    the first version's columns always, later ones only where set (see ``Column.since``)."""
    first = [n for n in GENERATION_COLUMNS if COLUMNS_BY_NAME[n].since == 1]
    later = [n for n in GENERATION_COLUMNS if COLUMNS_BY_NAME[n].since > 1]
    parts = [_encode_column(name, _as_array(table.column(name))) for name in first]
    encoded = pc.binary_join_element_wise(*parts, "|", null_handling="replace", null_replacement=_NULL)
    if not later:
        return encoded
    extra = [_optional_part(name, _as_array(table.column(name))) for name in later]
    return pc.binary_join_element_wise(encoded, *extra, "|", null_handling="skip")


def derive_ids(table: pa.Table | pa.RecordBatch) -> pa.Array:
    """Derived ids for every row: ``r`` + 24 hex digits of SHA-256 of the canonical parameters."""
    encoded = canonical_params(table).to_pylist()
    return pa.array(
        ["r" + hashlib.sha256(_ID_VERSION + b"|" + row.encode()).hexdigest()[:24] for row in encoded],
        pa.string(),
    )


def _as_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column


class ContentDigest:
    """SHA-256 over every row's id, canonical generation parameters and labels, in row order: same
    rows, same digest, however they are split into files and batches. (Two hashes, one of the row
    lengths and one of the row bytes, so batch boundaries cannot shift bytes between rows.)"""

    def __init__(self) -> None:
        self._lengths = hashlib.sha256(_ID_VERSION + b"|lengths")
        self._bytes = hashlib.sha256(_ID_VERSION + b"|rows")

    def update(self, table: pa.Table, labels: pa.Table | None = None) -> None:
        parts = [_length_prefixed(_as_array(table.column("id"))), canonical_params(table)]
        for name in labels.column_names if labels is not None else ():
            parts.append(_length_prefixed(pa.array([name] * labels.num_rows, pa.string())))
            parts.append(_encode_label(_as_array(labels.column(name))))
        rows = pc.binary_join_element_wise(*parts, "|", null_handling="replace", null_replacement=_NULL)
        rows = pc.cast(rows, pa.large_string())
        if not len(rows):
            return
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int64)[rows.offset: rows.offset + len(rows) + 1]
        self._lengths.update(np.diff(offsets).astype("<i8").tobytes())
        self._bytes.update(memoryview(rows.buffers()[2])[offsets[0]: offsets[-1]])

    def hexdigest(self) -> str:
        return hashlib.sha256(self._lengths.digest() + self._bytes.digest()).hexdigest()


def _encode_label(values: pa.Array) -> pa.Array:
    """A label cell as text: primitive types cast by Arrow, nested ones as JSON (rare, and slow)."""
    t = values.type
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return _encode_image(pc.cast(values, pa.binary()))
    try:
        return _length_prefixed(pc.cast(values, pa.string()))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        text = [None if v is None else json.dumps(v, sort_keys=True, default=str) for v in values.to_pylist()]
        return _length_prefixed(pa.array(text, pa.string()))
