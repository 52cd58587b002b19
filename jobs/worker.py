"""A shard's work: rows -> batches -> engine -> encoded images -> metadata -> commit marker.

The same ``ShardWorker`` runs inside the local executor and inside each Ray actor. A batch that
raises is retried row by row, so one bad row fails alone with its error recorded.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from sdbatch.manifests.schema import GenerationRow
from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import LoadedModel, load_model

from .plan import batches
from .records import ResultRecord, records_to_table, table_to_parquet_bytes
from .storage import Storage

log = logging.getLogger(__name__)

MARKER_DIR = "_job/shards"


def marker_path(shard: str) -> str:
    return f"{MARKER_DIR}/{shard}.json"


def metadata_path(shard: str) -> str:
    return f"metadata/{shard}.parquet"


def image_path(shard: str, key: str, ext: str = "png") -> str:
    return f"images/{shard}/{key}.{ext}"


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


def _encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


class ShardWorker:
    """Holds loaded models (each loaded once) and turns shards into committed outputs."""

    def __init__(self, storage: Storage, config: WorkerConfig, name: str = "local"):
        self.storage = storage
        self.config = config
        self.name = name
        self._engines: dict[str, BatchedEngine] = {}
        self._pool = ThreadPoolExecutor(max_workers=config.encode_threads, thread_name_prefix="encode")
        # Encoded-but-unwritten images are bounded, so memory stays flat when storage is slow.
        self._write_slots = threading.BoundedSemaphore(4 * config.batch_size)

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
        self._pool.shutdown(wait=True)

    def _settings(self, row: GenerationRow, engine: BatchedEngine) -> BatchSettings:
        size = engine.model.default_size
        return BatchSettings(
            width=row.width or size, height=row.height or size, steps=row.steps,
            scheduler=row.scheduler, mode=row.mode, strength=row.strength,
        )

    def _write_image(self, shard: str, row: GenerationRow, pixels: np.ndarray) -> str:
        path = image_path(shard, row.key)
        self.storage.write_bytes(path, _encode_png(pixels))
        return path

    def _generate(self, shard: str, batch: list[GenerationRow]) -> list[tuple[GenerationRow, Future | str, dict]]:
        """Run one batch; returns per row either a pending image write or an error message."""
        try:
            engine = self.engine(batch[0].model)
            settings = self._settings(batch[0], engine)
            started = time.perf_counter()
            inputs = [RowInput(r.prompt, r.seed, r.guidance_scale, r.negative_prompt) for r in batch]
            result = engine.generate(settings, inputs)
        except Exception as exc:  # noqa: BLE001 - a row's failure is recorded, not raised
            if len(batch) > 1:
                log.warning("batch of %d failed (%s); retrying row by row", len(batch), exc)
                return [item for row in batch for item in self._generate(shard, [row])]
            log.warning("row %s (manifest row %d) failed: %s", batch[0].id, batch[0].row_index, exc)
            return [(batch[0], f"{type(exc).__name__}: {exc}", {})]
        per_row = (time.perf_counter() - started) / len(batch)
        used = dict(width=settings.width, height=settings.height, scheduler=result.scheduler,
                    model_revision=engine.model.revision, seconds=per_row)
        return [(row, self._submit_write(shard, row, pixels), used) for row, pixels in zip(batch, result.images)]

    def _submit_write(self, shard: str, row: GenerationRow, pixels: np.ndarray) -> Future:
        self._write_slots.acquire()  # blocks only when writes fall far behind generation
        future = self._pool.submit(self._write_image, shard, row, pixels)
        future.add_done_callback(lambda _: self._write_slots.release())
        return future

    def run_shard(self, shard: str, rows: list[GenerationRow], on_rows=None) -> ShardStats:
        """Generate, write and commit one shard. ``on_rows(rows, failed)`` reports progress."""
        started = time.perf_counter()
        pending = []
        for batch in batches(rows, self.config.batch_size):
            outcomes = self._generate(shard, batch)
            pending.extend(outcomes)
            if on_rows:
                on_rows(len(batch), sum(isinstance(o, str) for _, o, _ in outcomes))
        records = []
        for row, outcome, used in pending:
            if isinstance(outcome, str):
                records.append(ResultRecord.for_row(row, shard, status="error", error=outcome))
                continue
            try:
                path = outcome.result()
            except Exception as exc:  # noqa: BLE001
                records.append(ResultRecord.for_row(row, shard, status="error", error=f"write failed: {exc}", **used))
                continue
            records.append(ResultRecord.for_row(row, shard, image=path, **used))
        return commit_shard(self.storage, shard, records, time.perf_counter() - started, self.name)


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
    records = [ResultRecord.for_row(r, shard, status="error", error=cause) for r in rows]
    return commit_shard(storage, shard, records, 0.0, "driver")
