"""Reading manifests into normalised rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from sdbatch.jobs.s3 import dataset_location, s3_folder_of
from sdbatch.jobs.storage import StorageOptions, is_s3_uri

from .ids import derive_id, derive_seed, safe_key
from .schema import COLUMNS, COLUMN_NAMES, IMAGE_COLUMNS, GenerationRow


class ManifestError(ValueError):
    """A manifest that cannot run; the message names the column, row(s) and reason."""


def read_table(path: str | Path, storage: StorageOptions = StorageOptions()) -> pa.Table:
    try:
        location = dataset_location(str(path), storage)  # s3:// -> pyarrow's S3FileSystem
        return ds.dataset(location.source, format="parquet", filesystem=location.filesystem).to_table()
    except (OSError, pa.ArrowInvalid) as exc:
        raise ManifestError(f"{path}: cannot read as Parquet: {exc}") from exc


def _resolve_image_cell(value, base: Path | str | None):
    """Image cells are bytes (an encoded image) or a path/URI; relative paths are relative to the
    manifest's own folder."""
    if value is None or isinstance(value, bytes) or base is None:
        return value
    if "://" in value or Path(value).is_absolute():
        return value
    return str(base / value) if isinstance(base, Path) else f"{base}/{value}"  # str: an s3:// folder


def normalise_rows(table: pa.Table, default_model: str, base: Path | str | None = None) -> list[GenerationRow]:
    if "prompt" not in table.column_names:
        raise ManifestError("column 'prompt': missing (required)")
    defaults = {c.name: c.default for c in COLUMNS}
    extras_names = [n for n in table.column_names if n not in COLUMN_NAMES]
    rows = []
    for index, record in enumerate(table.to_pylist()):
        values = {name: record.get(name) for name in COLUMN_NAMES}
        for name, default in defaults.items():
            if values[name] is None:
                values[name] = default
        values["model"] = values["model"] or default_model
        for name in IMAGE_COLUMNS:
            values[name] = _resolve_image_cell(values[name], base)
        given_id = values.pop("id")
        if given_id is None:
            params = {k: v for k, v in values.items() if k != "seed" or v is not None}
            given_id = derive_id(params)
        seed = values.pop("seed")
        seed = derive_seed(given_id) if seed is None else int(seed)
        rows.append(
            GenerationRow(
                row_index=index,
                key=safe_key(str(given_id)),
                id=str(given_id),
                seed=seed,
                extras=tuple((n, record[n]) for n in extras_names),
                **values,
            )
        )
    return rows


def load_rows(path: str | Path, default_model: str,
              storage: StorageOptions = StorageOptions()) -> list[GenerationRow]:
    if is_s3_uri(str(path)):
        return normalise_rows(read_table(path, storage), default_model, s3_folder_of(str(path), storage))
    path = Path(path)
    base = (path if path.is_dir() else path.parent).absolute()
    return normalise_rows(read_table(path), default_model, base)
