"""A shard's work: rows -> batches -> engine -> encoded images -> layout files -> metadata -> marker.

The same ``ShardWorker`` runs inside the local executor and inside each Ray actor. Rows are
prepared one by one first (inputs read and checked, see ``inputs.py``), so bad input fails its row
alone; a batch that still raises is retried row by row, so one bad row fails alone with its error
recorded. Images are encoded (with their ``parameters`` text) and stored on a thread pool while the
next batch denoises; the layout (``layouts.py``) decides where they go.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from sdbatch.manifests.schema import GenerationRow
from sdbatch.pipeline.engine import BatchedEngine
from sdbatch.pipeline.loading import LoadedModel, load_model

from .image_encoding import encode_image
from .inputs import FailedRow, ReadyRow, batch_key, prepare_rows
from .layouts import OutputSpec, ShardWriter, layout_named
from .parameters import infotext
from .plan import group_batches
from .records import ResultRecord, records_to_table, table_to_parquet_bytes
from .runtime_info import runtime_info
from .storage import Storage, StorageOptions

log = logging.getLogger(__name__)

MARKER_DIR = "_job/shards"
# Rows are prepared (their input images decoded) this many batches at a time, to bound memory.
PREPARE_WINDOW_BATCHES = 8


def marker_path(shard: str) -> str:
    return f"{MARKER_DIR}/{shard}.json"


def metadata_path(shard: str) -> str:
    return f"metadata/{shard}.parquet"


@dataclass
class ShardStats:
    """Written last, as the shard's commit marker: a shard is done when this file exists."""

    shard: str
    rows: int
    ok: int
    failed: int
    seconds: float
    worker: str = ""


@dataclass(frozen=True)
class WorkerConfig:
    device: str = "auto"
    dtype: str | None = None
    batch_size: int = 16
    encode_threads: int = 4
    output: OutputSpec = field(default_factory=OutputSpec)
    storage: StorageOptions = field(default_factory=StorageOptions)  # for s3:// inputs and outputs


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ShardWorker:
    """Holds loaded models (each loaded once) and turns shards into committed outputs."""

    def __init__(self, storage: Storage, config: WorkerConfig, name: str = "local"):
        self.storage = storage
        self.config = config
        self.name = name
        self.layout = layout_named(config.output.layout)
        self._engines: dict[str, BatchedEngine] = {}
        self._pool = ThreadPoolExecutor(max_workers=config.encode_threads, thread_name_prefix="encode")
        # The next window of rows is prepared (images read and decoded) while this one denoises.
        self._prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        # Encoded-but-unwritten images are bounded, so memory stays flat when storage is slow.
        self._write_slots = threading.BoundedSemaphore(4 * config.batch_size)
        # One shard on the device at a time. A caller may run shards on two threads (a Ray actor
        # with max_concurrency 2): then one shard's last writes, tar upload and commit overlap the
        # next shard's generation, so the device does not wait on storage between shards.
        self._device = threading.Lock()

    def load(self, models: list[str]) -> None:
        """Load every model of the job up front, so a bad model fails before any shard starts."""
        for model in models:
            self.engine(model)

    def engine(self, model: str) -> BatchedEngine:
        if model not in self._engines:
            loaded: LoadedModel = load_model(model, self.config.device, self.config.dtype)
            self._engines[model] = BatchedEngine(loaded)
        return self._engines[model]

    def close(self) -> None:
        self._prepare_pool.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True)

    def _store(self, writer: ShardWriter, record: ResultRecord, pixels: np.ndarray) -> None:
        writer.add(record, encode_image(pixels, self.config.output.image, infotext(record)))

    def _generate(self, shard: str, writer: ShardWriter,
                  batch: list[ReadyRow]) -> list[tuple[ResultRecord, Future | None]]:
        """Run one batch; per row its record and, when it made an image, the pending write."""
        try:
            engine = self.engine(batch[0].row.model)
            settings = batch[0].settings
            started = time.perf_counter()
            result = engine.generate(settings, [ready.input for ready in batch])
        except Exception as exc:  # noqa: BLE001 - a row's failure is recorded, not raised
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying row by row", len(batch), exc)
                return [item for ready in batch for item in self._generate(shard, writer, [ready])]
            row = batch[0].row
            log.warning("row %s (manifest row %d) failed: %s", row.id, row.row_index, exc)
            record = ResultRecord.for_row(row, shard, batch[0].trace, status="error",
                                          error=f"{type(exc).__name__}: {exc}", timestamp=utc_now(),
                                          **asdict(runtime_info(None)))
            return [(record, None)]
        latency = time.perf_counter() - started
        used = dict(width=settings.width, height=settings.height, scheduler=result.scheduler,
                    model_revision=engine.model.revision, seconds=latency / len(batch),
                    latency_seconds=latency, timestamp=utc_now(),
                    **asdict(runtime_info(engine.model.device)))
        out = []
        for ready, pixels in zip(batch, result.images):
            record = ResultRecord.for_row(ready.row, shard, ready.trace, image=writer.image_ref(ready.row.key), **used)
            out.append((record, self._submit_write(writer, record, pixels)))
        return out

    def _submit_write(self, writer: ShardWriter, record: ResultRecord, pixels: np.ndarray) -> Future:
        self._write_slots.acquire()  # blocks only when writes fall far behind generation
        future = self._pool.submit(self._store, writer, record, pixels)
        future.add_done_callback(lambda _: self._write_slots.release())
        return future

    def _prepare(self, rows: list[GenerationRow]) -> list[ReadyRow | FailedRow]:
        return prepare_rows(rows, lambda name: self.engine(name).model, self.config.storage)

    def _run_prepared(self, shard: str, writer: ShardWriter, prepared: list[ReadyRow | FailedRow],
                      on_rows=None) -> list[tuple[ResultRecord, Future | None]]:
        """Run prepared rows in batches of equal effective settings; failed rows pass through."""
        pending = [(ResultRecord.for_row(p.row, shard, p.trace, status="error", error=p.error,
                                         timestamp=utc_now(), **asdict(runtime_info(None))), None)
                   for p in prepared if isinstance(p, FailedRow)]
        if on_rows and pending:
            on_rows(len(pending), len(pending))
        ready = [p for p in prepared if isinstance(p, ReadyRow)]
        for batch in group_batches(ready, batch_key, self.config.batch_size):
            outcomes = self._generate(shard, writer, batch)
            pending.extend(outcomes)
            if on_rows:
                on_rows(len(batch), sum(future is None for _, future in outcomes))
        return pending

    def run_shard(self, shard: str, rows: list[GenerationRow], on_rows=None) -> ShardStats:
        """Generate, write and commit one shard. ``on_rows(rows, failed)`` reports progress.

        Rows go in windows of a few batches: window k+1 is prepared on a thread while window k
        runs, so the device does not wait on image reading and decoding. Only generation holds
        the device; waiting for the writes and committing do not (see ``_device``).
        """
        started = time.perf_counter()
        window = self.config.batch_size * PREPARE_WINDOW_BATCHES
        windows = [rows[i : i + window] for i in range(0, len(rows), window)]
        writer = self.layout.writer(self.storage, shard, self.config.output.image)
        try:
            pending = []
            upcoming = self._prepare_pool.submit(self._prepare, windows[0]) if windows else None
            with self._device:
                for k in range(len(windows)):
                    prepared = upcoming.result()
                    upcoming = self._prepare_pool.submit(self._prepare, windows[k + 1]) if k + 1 < len(windows) else None
                    pending.extend(self._run_prepared(shard, writer, prepared, on_rows))
            records = [_settled(record, future) for record, future in sorted(pending, key=lambda p: p[0].row_index)]
            writer.finish(records)
        finally:
            writer.close()
        return commit_shard(self.storage, shard, records, time.perf_counter() - started, self.name)


def _settled(record: ResultRecord, write: Future | None) -> ResultRecord:
    """The record once its image write ended: an error row when the write failed."""
    if write is None:
        return record
    try:
        write.result()
    except Exception as exc:  # noqa: BLE001
        log.warning("row %s: writing %s failed: %s", record.id, record.image, exc)
        return replace(record, status="error", error=f"write failed: {exc}", image=None)
    return record


def commit_shard(storage: Storage, shard: str, records: list[ResultRecord], seconds: float,
                 worker: str) -> ShardStats:
    """Metadata first, then the marker: a shard is committed exactly when its marker exists."""
    storage.write_bytes(metadata_path(shard), table_to_parquet_bytes(records_to_table(records)))
    ok = sum(r.status == "ok" for r in records)
    stats = ShardStats(shard, len(records), ok, len(records) - ok, seconds, worker)
    storage.write_bytes(marker_path(shard), json.dumps(asdict(stats)).encode())
    return stats


def commit_failed_shard(storage: Storage, shard: str, rows: list[GenerationRow], cause: str) -> ShardStats:
    """A shard that could not run (its workers kept dying): every row gets an error row."""
    records = [ResultRecord.for_row(r, shard, status="error", error=cause, timestamp=utc_now(),
                                    **asdict(runtime_info(None))) for r in rows]
    return commit_shard(storage, shard, records, 0.0, "driver")
