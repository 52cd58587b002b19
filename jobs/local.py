"""The ``local`` executor: every shard in this process, on one device (debugging, benchmarks)."""

from __future__ import annotations

import logging
import time

from sdbatch.jobs.store.outdir import OutputFolder
from sdbatch.jobs.store.storage import StorageError
from sdbatch.jobs.worker.shard_worker import ShardWorker
from sdbatch.jobs.worker.worker_config import WorkerConfig

from .executor import ShardTracker

log = logging.getLogger(__name__)


class LocalExecutor:
    def __init__(self, folder: OutputFolder, config: WorkerConfig, models: list[str], verbose: bool = False):
        self.folder = folder
        self.config = config
        self.models = models
        self.verbose = verbose

    def run(self, shards: list[str], job_id: str, tracker: ShardTracker) -> None:
        if not self.verbose:
            from sdbatch.pipeline.loading import quiet_libraries

            quiet_libraries()
        worker = ShardWorker(self.folder, self.config, name="local")
        try:
            log.info("loading %d model(s) on %s", len(self.models), self.config.device)
            worker.load(self.models)
            tracker.result.ready_at = time.perf_counter()
            for shard in shards:
                try:
                    for event in worker.run_shard(shard, job_id):
                        tracker.on_event(shard, event)
                except (StorageError, OSError) as exc:
                    log.error("shard %s: %s", shard, exc)
                    tracker.abandoned(shard, str(exc))
                except KeyboardInterrupt:  # held while a commit runs: it lands before one or after it
                    marker = self.folder.committed_shard(shard, job_id)
                    tracker.settle(shard, marker)
                    if marker is None:
                        self.folder.discard_uncommitted(shard)  # on an object store its images were visible
                    raise
        finally:
            worker.close()
