"""The ``local`` executor: every shard in this process, on one device (debugging, benchmarks)."""

from __future__ import annotations

import logging

from .executor import ShardTask
from .progress import Progress
from .storage import Storage
from .worker import ShardStats, ShardWorker, WorkerConfig

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, storage: Storage, config: WorkerConfig):
        self.storage = storage
        self.config = config

    def run(self, tasks: list[ShardTask], progress: Progress) -> list[ShardStats]:
        worker = ShardWorker(self.storage, self.config, name="local")
        results = []
        try:
            for task in tasks:
                results.append(worker.run_shard(task.shard, list(task.rows), on_rows=progress.advance))
        finally:
            worker.close()
        return results
