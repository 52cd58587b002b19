"""A shard's work: its input rows -> batches -> engine -> encoded images -> layout -> commit.

The same ``ShardWorker`` runs inside the local executor and inside each Ray actor; it reads the
shard's rows from OUT (written there at planning), so work travels as a shard name. Rows are
prepared one by one first (inputs read and checked, see ``inputs.py``), so bad input fails its row
alone; a batch that still raises is retried row by row, so one bad row fails alone with its error
recorded. Images are encoded (with their ``parameters`` text) and stored on a thread pool while
the next batch denoises; the layout (``layouts.py``) decides where they go, ``outdir`` how the
shard commits.

``run_shard`` is a generator: a ``ShardProgress`` after every batch (rows with an outcome so far in
this attempt), then the commit marker's ``ShardStats``. The Ray executor streams these to the driver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Iterator

import numpy as np
import pyarrow as pa

from sdbatch.jobs.executor import ShardProgress
from sdbatch.jobs.store.image_encoding import encode_image
from sdbatch.jobs.store.layouts import ShardWriter, layout_named
from sdbatch.jobs.store.metadata import ResultRecord, records_to_table, utc_now
from sdbatch.jobs.store.outdir import OutputFolder, ShardStats
from sdbatch.jobs.store.runtime_info import runtime_info
from sdbatch.manifests.rows import extra_names, rows_of
from sdbatch.manifests.schema import GenerationRow
from sdbatch.pipeline.adapters import load_embedding
from sdbatch.pipeline.engine import BatchedEngine, PendingBatch
from sdbatch.pipeline.loading import LoadedModel, load_model

from .adapter_files import LoraFiles, resolve_embedding
from .held_signals import held_signals
from .infotext import infotext
from .inputs import FailedRow, ReadyRow, batch_key, lora_order, prepare_rows
from .worker_config import WorkerConfig

log = logging.getLogger(__name__)

# Rows are prepared (their input images decoded) this many batches at a time, to bound memory.
PREPARE_WINDOW_BATCHES = 8


def group_batches(items: list, key, batch_size: int, order=None) -> list[list]:
    """Items of equal key, at most ``batch_size`` per batch, groups in first-seen order (stably
    sorted by ``order`` of their first item when given). A row's image does not depend on its
    batch, so rows need not be consecutive to share one."""
    groups: dict = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    ordered = sorted(groups.values(), key=lambda g: order(g[0])) if order else groups.values()
    return [group[i: i + batch_size] for group in ordered for i in range(0, len(group), batch_size)]


class ShardWorker:
    """Holds loaded models (each loaded once) and turns shards into committed outputs."""

    def __init__(self, folder: OutputFolder, config: WorkerConfig, name: str = "local"):
        self.folder = folder
        self.storage = folder.storage
        self.config = config
        self.name = name
        self.layout = layout_named(config.output.layout)
        self._engines: dict[str, BatchedEngine] = {}
        self._loras = LoraFiles(config.lora_dir, config.s3)  # LoRA names -> files, once each
        self._pool = ThreadPoolExecutor(max_workers=config.encode_threads, thread_name_prefix="encode")
        # The next window of rows is prepared (images read and decoded) while this one denoises.
        self._prepare_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare")
        # Encoded-but-unwritten images are bounded, so memory stays flat when storage is slow.
        self._write_slots = threading.BoundedSemaphore(4 * config.batch_size)
        # An attempt at a shard asked for again while the first is still running here (the driver
        # lost touch with this process for a moment) waits for it, then finds the shard committed.
        self._shard_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()
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
            for spec in self.config.embeddings:  # each --embedding into every model, once
                embedding = resolve_embedding(spec)
                load_embedding(loaded, embedding.path, embedding.token)
            self._engines[model] = BatchedEngine(loaded, speed=self.config.speed, batch_size=self.config.batch_size)
        return self._engines[model]

    @property
    def compile_seconds(self) -> float:
        """Seconds this worker's engines have spent compiling so far (``--compile``)."""
        return sum(engine.speed.report().get("compile_seconds", 0.0) for engine in self._engines.values())

    @property
    def device(self) -> str:
        return str(next(iter(self._engines.values())).device) if self._engines else self.config.device

    def close(self) -> None:
        self._prepare_pool.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True)

    # -- one batch -----------------------------------------------------------------------------
    def _store(self, writer: ShardWriter, record: ResultRecord, pixels: np.ndarray, labels: pa.Table) -> None:
        writer.add(record, encode_image(pixels, self.config.output.image, infotext(record)), labels)

    def _launch(self, batch: list[ReadyRow]) -> _Launched:
        """Queue one batch on the device (``engine.submit``); the images come with ``_finish``."""
        engine = self.engine(batch[0].row.model)
        settings = batch[0].settings
        started = time.perf_counter()
        refiner = self.engine(self.config.refiner) if settings.refiner_start is not None else None
        return _Launched(batch, engine, started, engine.submit(settings, [ready.input for ready in batch],
                                                                   refiner=refiner))

    def _finish(self, shard: str, writer: ShardWriter, launched: _Launched,
                labels: dict[int, pa.Table]) -> list[tuple[ResultRecord, Future | None]]:
        """A launched batch's records and, for each image, its pending write."""
        batch, engine, settings = launched.batch, launched.engine, launched.batch[0].settings
        result = launched.pending.result()
        latency = time.perf_counter() - launched.started
        used = dict(width=settings.width, height=settings.height, scheduler=result.scheduler,
                    refiner=self.config.refiner if settings.refiner_start is not None else None,
                    quantize=self.config.speed.image_affecting().get("quantize"),
                    model_revision=engine.model.revision, seconds=latency / len(batch),
                    latency_seconds=latency, timestamp=utc_now(),
                    **asdict(runtime_info(engine.model.device)))
        out = []
        for ready, pixels in zip(batch, result.images):
            record = ResultRecord.for_row(ready.row, shard, ready.trace, image=writer.image_ref(ready.row.key), **used)
            out.append((record, self._submit_write(writer, record, pixels, labels[ready.row.row_index])))
        return out

    def _generate(self, shard: str, writer: ShardWriter, batch: list[ReadyRow], labels: dict[int, pa.Table],
                  launched: _Launched | None = None) -> list[tuple[ResultRecord, Future | None]]:
        """One batch (already ``launched``, or launched here): its records and pending writes. A
        batch that raises is retried row by row, so a bad row fails alone with its error recorded."""
        try:
            return self._finish(shard, writer, launched or self._launch(batch), labels)
        except Exception as exc:  # noqa: BLE001 - a row's failure is recorded, not raised
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying row by row", len(batch), exc)
                return [item for ready in batch for item in self._generate(shard, writer, [ready], labels)]
            row = batch[0].row
            log.warning("row %s (manifest row %d) failed: %s", row.id, row.row_index, exc)
            return [(ResultRecord.failed(row, shard, f"{type(exc).__name__}: {exc}", "internal", batch[0].trace), None)]

    def _batches(self, shard: str, writer: ShardWriter, batches: list[list[ReadyRow]], labels: dict[int, pa.Table]):
        """Each batch's outcomes, with the next batch queued on the device before the previous
        one's images are fetched and written: the device does not wait for the host."""
        previous: tuple[list[ReadyRow], _Launched | None] | None = None
        for batch in batches:
            try:
                launched = self._launch(batch)
            except Exception:  # noqa: BLE001 - run again (and recorded) by _generate, row by row
                launched = None
            if previous is not None:
                yield previous[0], self._generate(shard, writer, previous[0], labels, previous[1])
            if launched is None:
                yield batch, self._generate(shard, writer, batch, labels)
                previous = None
            else:
                previous = (batch, launched)
        if previous is not None:
            yield previous[0], self._generate(shard, writer, previous[0], labels, previous[1])

    def _submit_write(self, writer: ShardWriter, record: ResultRecord, pixels: np.ndarray,
                      labels: pa.Table) -> Future:
        self._write_slots.acquire()  # blocks only when writes fall far behind generation
        future = self._pool.submit(self._store, writer, record, pixels, labels)
        future.add_done_callback(lambda _: self._write_slots.release())
        return future

    def _prepare(self, rows: list[GenerationRow]) -> list[ReadyRow | FailedRow]:
        return prepare_rows(rows, lambda name: self.engine(name).model, self.config.cell_access(), self.config.refiner,
                            self._loras)

    # -- one shard -----------------------------------------------------------------------------
    def run_shard(self, shard: str, job_id: str = "") -> Iterator[ShardProgress | ShardStats]:
        """Generate, write and commit one shard, reporting progress after every batch (a shard
        this job already committed is not redone: its marker is the answer; unless rows of it
        failed for a storage reason, which a redo may fix: its marker stays until the redo commits)."""
        with self._locks_lock:
            lock = self._shard_locks.setdefault(shard, threading.Lock())
        with lock:
            done = self.folder.committed_shard(shard, job_id)
            if done is not None and not done.retryable:
                yield done
                return
            yield from self._run_shard(shard, job_id, redo=done is not None)

    def _run_shard(self, shard: str, job_id: str, redo: bool = False) -> Iterator[ShardProgress | ShardStats]:
        """Rows go in windows of a few batches: window k+1 is prepared on a thread while window k
        runs, so the device does not wait on image reading and decoding. Only generation holds
        the device; waiting for the writes and committing do not (see ``_device``)."""
        started, compiled_before = time.perf_counter(), self.compile_seconds
        table = self.folder.read_inputs(shard)
        rows = rows_of(table)
        label_table = table.select(extra_names(table))
        labels = {row.row_index: label_table.slice(i, 1) for i, row in enumerate(rows)}
        window = self.config.batch_size * PREPARE_WINDOW_BATCHES
        windows = [rows[i: i + window] for i in range(0, len(rows), window)]
        writer = self.layout.writer(self.storage, shard, self.config.output.image, redo)
        pending: list[tuple[ResultRecord, Future | None]] = []
        failed = 0
        try:
            upcoming = self._prepare_pool.submit(self._prepare, windows[0]) if windows else None
            with self._device:
                for k in range(len(windows)):
                    prepared = upcoming.result()
                    upcoming = self._prepare_pool.submit(self._prepare, windows[k + 1]) if k + 1 < len(windows) else None
                    refused = [p for p in prepared if isinstance(p, FailedRow)]
                    pending += [(ResultRecord.failed(p.row, shard, p.error, p.kind, p.trace), None) for p in refused]
                    failed += len(refused)
                    if refused:
                        yield ShardProgress(shard, len(pending), failed, self.name)
                    ready = [p for p in prepared if isinstance(p, ReadyRow)]
                    batches = group_batches(ready, batch_key, self.config.batch_size, lora_order)
                    for batch, outcomes in self._batches(shard, writer, batches, labels):
                        pending += outcomes
                        failed += sum(future is None for _, future in outcomes)
                        yield ShardProgress(shard, len(pending), failed, self.name)
            order = {row.row_index: i for i, row in enumerate(rows)}
            records = [_settled(r, f) for r, f in sorted(pending, key=lambda p: order[p[0].row_index])]
            with held_signals():  # a Ctrl-C lands before the images are published or after the marker
                writer.finish(records, label_table)
                kinds = Counter(r.error_kind for r in records if r.status != "ok")
                stats = ShardStats(shard, len(records), len(records) - sum(kinds.values()), sum(kinds.values()),
                                   round(time.perf_counter() - started, 3), self.name, job_id, dict(kinds),
                                   dict(writer.files), round(self.compile_seconds - compiled_before, 3))
                self.folder.commit(shard, records_to_table(records, label_table), stats)
        finally:
            writer.close()
        yield stats


@dataclass
class _Launched:
    batch: list[ReadyRow]
    engine: BatchedEngine
    started: float
    pending: PendingBatch


def _settled(record: ResultRecord, write: Future | None) -> ResultRecord:
    """The record once its image write ended: an error row when the write failed."""
    if write is None:
        return record
    try:
        write.result()
    except Exception as exc:  # noqa: BLE001
        log.warning("row %s: writing %s failed: %s", record.id, record.image, exc)
        return replace(record, status="error", error=f"write failed: {exc}", error_kind="storage", image=None)
    return record
