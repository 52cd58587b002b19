"""The ``local`` executor: every shard in this process, on one device (debugging, benchmarks)."""

from __future__ import annotations

import logging
import time

from .executor import ShardTask
from .progress import Progress
from .storage import Storage
from .worker import ShardStats, ShardWorker, WorkerConfig

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, storage: Storage, config: WorkerConfig, models: list[str]):
        self.storage = storage
        self.config = config
        self.models = models
        self.ready_at: float | None = None  # perf_counter() when models were loaded

    def run(self, tasks: list[ShardTask], progress: Progress) -> list[ShardStats]:
        worker = ShardWorker(self.storage, self.config, name="local")
        results = []
        try:
            worker.load(self.models)
            self.ready_at = time.perf_counter()
            for task in tasks:
                results.append(worker.run_shard(task.shard, list(task.rows), on_rows=progress.advance))
        finally:
            worker.close()
        return results
