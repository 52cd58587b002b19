"""The ``local`` executor: every shard in this process, on one device (debugging, benchmarks)."""

from __future__ import annotations

import logging

from sdbatch.manifests.schema import GenerationRow

from .job import JobPlan
from .worker import ShardStats, ShardWorker, WorkerConfig
from .storage import Storage

log = logging.getLogger(__name__)


def run_local(plan: JobPlan, rows: list[GenerationRow], pending: list[str], storage: Storage,
              config: WorkerConfig, on_rows=None) -> list[ShardStats]:
    by_index = {r.row_index: r for r in rows}
    worker = ShardWorker(storage, config, name="local")
    results = []
    try:
        for shard in plan.shards:
            if shard.name not in pending:
                continue
            shard_rows = [by_index[i] for i in shard.row_indices]
            results.append(worker.run_shard(shard.name, shard_rows, on_rows=on_rows))
    finally:
        worker.close()
    return results
