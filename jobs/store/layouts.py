"""Where a shard's images go, and how ``sdbatch verify`` checks them: the two output layouts.

``files`` (default)::

    OUT/images/<shard>/<key>.<ext>          one image per ok row
    OUT/images/<shard>/metadata.parquet     the shard's ok rows, ``file_name`` = "<key>.<ext>"

On local disk a shard's folder is filled under ``_job/pending/<shard>`` and renamed into place when
the shard commits, so a reader never sees part of a shard. Object stores have no rename: there the
images are written at their final keys, and an attempt that stops before its commit leaves objects
no committed metadata refers to; the driver removes them when it stops, the next attempt at that
shard before it starts, and ``verify`` counts them as an interrupted shard's. A committed shard that
is redone (rows failed for a storage reason) keeps its images there while the redo rewrites them in
place (same row, same image), so its committed rows stay readable throughout.

The per-folder ``metadata.parquet`` is what Hugging Face ``datasets``' imagefolder reads (a
``file_name`` column relative to the metadata file's folder): ``load_dataset("imagefolder",
data_dir=OUT)`` gives the images with every metadata column beside them.

``webdataset``::

    OUT/shards/<shard>.tar                  <sample>.<ext> and <sample>.json per ok row

The tar is built in a (spooled) temporary file while the shard runs and written whole, with one
storage write (a multipart upload when large), before the shard's metadata and marker. A row's
``image`` metadata cell names its member: ``shards/<shard>.tar#<sample>.<ext>``. ``<sample>`` is
the row's key (keys hold no dots: webdataset splits a member's name at its first dot).
"""

from __future__ import annotations

import io
import logging
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .image_encoding import ImageFormat
from .metadata import ResultRecord, record_json, records_to_table, table_bytes
from .paths import IMAGES, TARS, image_folder, pending_folder, tar_path
from .storage import Storage

log = logging.getLogger(__name__)

LAYOUT_NAMES = ("files", "webdataset")
IMAGEFOLDER_METADATA = "metadata.parquet"
SPOOL_BYTES = 256 * 1024 * 1024  # a shard's tar stays in memory up to this size, then spills to disk


@dataclass(frozen=True)
class OutputSpec:
    """What the images look like and where they go (part of the plan: a rerun must match)."""

    layout: str = "files"
    image: ImageFormat = field(default_factory=ImageFormat)

    def __post_init__(self):
        if self.layout not in LAYOUT_NAMES:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUT_NAMES)}")


class ShardWriter(Protocol):
    files: dict[str, int]  # after finish: the shard-level files it wrote and their sizes (for the marker)

    def image_ref(self, key: str) -> str: ...
    def add(self, record: ResultRecord, data: bytes, labels: pa.Table | None = None) -> None: ...
    def finish(self, records: list[ResultRecord], labels: pa.Table | None = None) -> None: ...
    def close(self) -> None: ...


def decode_problem(data: bytes, where: str, row_index: int) -> list[str]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception as exc:  # noqa: BLE001 - any decode failure is a problem to report
        return [f"row {row_index}: image {where} does not decode: {exc}"]
    return []


# -- files --------------------------------------------------------------------------------------
def imagefolder_metadata_path(shard: str) -> str:
    return f"{image_folder(shard)}/{IMAGEFOLDER_METADATA}"


def imagefolder_table(records: list[ResultRecord], labels: pa.Table | None = None) -> pa.Table:
    """The ok rows as imagefolder reads them: ``file_name`` first, the metadata columns after
    (``image`` dropped: imagefolder makes that column from ``file_name``). ``seed`` is its
    decimal text here: datasets (5.2) builds its columns from Python ints through int64 and fails on
    uint64 seeds of 2**63 and above (half of all derived seeds), and a decimal type loads as
    ``Decimal`` objects; text loads exactly, and ``int(seed)`` is the seed."""
    ok = [i for i, r in enumerate(records) if r.status == "ok"]
    table = records_to_table([records[i] for i in ok], labels.take(ok) if labels is not None else None)
    table = table.drop_columns(["image"])
    seed = table.schema.get_field_index("seed")
    table = table.set_column(seed, "seed", table.column("seed").cast(pa.string()))
    if "file_name" in table.column_names:  # a manifest column of that name would shadow ours
        renamed = "manifest_file_name"
        while renamed in table.column_names:
            renamed = f"manifest_{renamed}"
        table = table.rename_columns([renamed if n == "file_name" else n for n in table.column_names])
    names = pa.array([r.image.rsplit("/", 1)[1] for r in records if r.status == "ok"], pa.string())
    return table.add_column(0, "file_name", names)


# datasets infers splits from file names holding one of these words between separators: a key such
# as "test-7" would put its image in a "test" split, away from its shard's metadata.parquet. (RE2
# syntax, for Arrow's regex kernels; matched against "<id>.")
SPLIT_WORD_PATTERN = (r"(?:^|[-._ 0-9])(train|training|validation|valid|dev|val|test|testing|eval|evaluation)"
                      r"(?:[-._ 0-9]|$)")


def warn_about_split_words(examples: list[str], count: int, layout: str) -> None:
    if count and layout == "files":
        log.warning("%d row id(s) such as %r hold a word datasets reads as a split name; load this output "
                    "with load_dataset(\"imagefolder\", data_files={\"train\": \"OUT/images/**\"}), "
                    "not data_dir=OUT", count, examples[0])


class FilesWriter:
    """Writes a shard's images where they stay invisible until ``finish`` (see the module doc)."""

    def __init__(self, storage: Storage, shard: str, fmt: ImageFormat, redo: bool = False):
        """``redo``: the shard is committed and being redone (see the module doc)."""
        self.storage, self.shard, self.fmt = storage, shard, fmt
        self.final = image_folder(shard)
        self.folder = pending_folder(shard) if storage.atomic_folders else self.final
        self.redo = redo
        self.files: dict[str, int] = {}
        if storage.atomic_folders or not redo:
            storage.delete_prefix(self.folder)  # an earlier, uncommitted attempt's files

    def image_ref(self, key: str) -> str:
        return f"{self.final}/{key}.{self.fmt.extension}"

    def add(self, record: ResultRecord, data: bytes, labels: pa.Table | None = None) -> None:
        self.storage.write_bytes(f"{self.folder}/{record.image.rsplit('/', 1)[1]}", data)

    def finish(self, records: list[ResultRecord], labels: pa.Table | None = None) -> None:
        if any(r.status == "ok" for r in records):
            self.storage.write_bytes(f"{self.folder}/{IMAGEFOLDER_METADATA}",
                                     table_bytes(imagefolder_table(records, labels)))
        if self.storage.atomic_folders:
            if any(r.status == "ok" for r in records):
                self.storage.replace_folder(self.folder, self.final)
            else:
                self.storage.delete_prefix(self.final)
        elif self.redo:  # images the earlier commit had that this one does not
            keep = {r.image for r in records if r.status == "ok"} | {imagefolder_metadata_path(self.shard)}
            for path in self.storage.list(self.final):
                if path not in keep:
                    self.storage.delete(path)

    def close(self) -> None:
        pass


class FilesLayout:
    name = "files"
    prefix = IMAGES

    def writer(self, storage: Storage, shard: str, fmt: ImageFormat, redo: bool = False) -> FilesWriter:
        return FilesWriter(storage, shard, fmt, redo)

    def check_shard(self, storage: Storage, shard: str, ok: list[dict]) -> tuple[list[str], set[str]]:
        """Problems with a committed shard's images, and the paths it legitimately holds."""
        problems: list[str] = []
        known = {r["image"] for r in ok}
        for record in ok:
            path, row = record["image"], record["row_index"]
            if not path or not storage.exists(path):
                problems.append(f"row {row}: image {path} is missing")
                continue
            problems.extend(decode_problem(storage.read_bytes(path), path, row))
        if ok:
            meta = imagefolder_metadata_path(shard)
            known.add(meta)
            if not storage.exists(meta):
                problems.append(f"shard {shard}: {meta} (the imagefolder metadata) is missing")
            else:
                try:
                    listed = pq.read_table(io.BytesIO(storage.read_bytes(meta))).column("file_name").to_pylist()
                except (OSError, KeyError, pa.ArrowException) as exc:
                    problems.append(f"shard {shard}: {meta} cannot be read ({exc})")
                    return problems, known
                expected = sorted(r["image"].rsplit("/", 1)[1] for r in ok)
                if sorted(listed) != expected:
                    problems.append(f"shard {shard}: {meta} does not list exactly the shard's ok images")
        return problems, known


# -- webdataset -------------------------------------------------------------------------------
class WebDatasetWriter:
    """Appends each image and its JSON to one tar (thread safe), written whole at ``finish``."""

    def __init__(self, storage: Storage, shard: str, fmt: ImageFormat):
        self.storage, self.shard, self.fmt = storage, shard, fmt
        self.files: dict[str, int] = {}
        self._file = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT)
        self._lock = threading.Lock()
        self._failure: BaseException | None = None

    def image_ref(self, key: str) -> str:
        return f"{tar_path(self.shard)}#{key}.{self.fmt.extension}"

    def _append(self, name: str, data: bytes, mtime: float) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, record: ResultRecord, data: bytes, labels: pa.Table | None = None) -> None:
        member = record.image.split("#", 1)[1]
        sample = member.rsplit(".", 1)[0]
        meta = record_json(record, labels)
        mtime = record.timestamp.timestamp() if record.timestamp else 0
        with self._lock:
            try:  # image and JSON next to each other: webdataset groups consecutive members
                self._append(member, data, mtime)
                self._append(f"{sample}.json", meta, mtime)
            except BaseException as exc:
                self._failure = exc  # the tar may now hold half a member: the shard must not commit
                raise

    def finish(self, records: list[ResultRecord], labels: pa.Table | None = None) -> None:
        if self._failure is not None:
            raise RuntimeError(f"shard {self.shard}: building {tar_path(self.shard)} failed: {self._failure}")
        self._tar.close()
        size = self._file.tell()
        self._file.seek(0)
        self.storage.write_fileobj(tar_path(self.shard), self._file)
        self.files[tar_path(self.shard)] = size

    def close(self) -> None:
        self._file.close()


class WebDatasetLayout:
    name = "webdataset"
    prefix = TARS

    def writer(self, storage: Storage, shard: str, fmt: ImageFormat, redo: bool = False) -> WebDatasetWriter:
        return WebDatasetWriter(storage, shard, fmt)  # the tar is replaced whole: nothing to keep

    def check_shard(self, storage: Storage, shard: str, ok: list[dict]) -> tuple[list[str], set[str]]:
        path = tar_path(shard)
        if not storage.exists(path):
            return [f"shard {shard}: committed but {path} is missing"], set()
        try:
            with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(path))) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as exc:
            return [f"shard {shard}: {path} is not a readable tar: {exc}"], {path}
        problems: list[str] = []
        expected: set[str] = set()
        for record in ok:
            ref, row = record["image"], record["row_index"]
            tar_name, _, member = (ref or "").partition("#")
            if tar_name != path or member not in members:
                problems.append(f"row {row}: image {ref} is missing")
                continue
            sample = member.rsplit(".", 1)[0]
            expected |= {member, f"{sample}.json"}
            if f"{sample}.json" not in members:
                problems.append(f"row {row}: {path} has no {sample}.json beside {member}")
            problems.extend(decode_problem(members[member], ref, row))
        problems.extend(f"stray member {path}#{name}: no ok metadata row refers to it"
                        for name in sorted(set(members) - expected))
        return problems, {path}


LAYOUTS = {"files": FilesLayout(), "webdataset": WebDatasetLayout()}


def layout_named(name: str) -> FilesLayout | WebDatasetLayout:
    return LAYOUTS[name]
