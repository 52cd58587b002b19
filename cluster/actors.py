"""The Ray actor that holds loaded pipelines on one GPU (or a share of the CPUs) and runs shards."""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import torch

from sdbatch.jobs.storage import open_storage
from sdbatch.jobs.worker import ShardStats, ShardWorker, WorkerConfig
from sdbatch.pipeline.loading import quiet_libraries

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorInfo:
    name: str
    pid: int
    host: str
    device: str


class GeneratorActor:
    """Loads every model of the job once, at start, and keeps them; then runs shard after shard."""

    def __init__(self, name: str, out_root: str, config: WorkerConfig, models: list[str],
                 threads: int, progress=None):
        logging.basicConfig(level=logging.WARNING)
        quiet_libraries()
        torch.set_num_threads(max(1, threads))  # a CPU actor uses its share of the cores, no more
        self.name = name
        self.progress = progress
        self.worker = ShardWorker(open_storage(out_root, config.storage), config, name=name)
        self.worker.load(models)

    def info(self) -> ActorInfo:
        device = next(iter(self.worker._engines.values())).device if self.worker._engines else "?"
        return ActorInfo(self.name, os.getpid(), socket.gethostname(), str(device))

    def run_shard(self, shard: str, rows) -> ShardStats:
        def report(done: int, failed: int) -> None:
            if self.progress is not None:
                self.progress.add.remote(shard, done, failed)

        return self.worker.run_shard(shard, list(rows), on_rows=report)


class ProgressCounter:
    """Rows done per shard, reported by actors after every batch and polled by the driver."""

    def __init__(self):
        self.pending: dict[str, list[int]] = {}

    def add(self, shard: str, rows: int, failed: int) -> None:
        entry = self.pending.setdefault(shard, [0, 0])
        entry[0] += rows
        entry[1] += failed

    def take(self) -> dict[str, list[int]]:
        out, self.pending = self.pending, {}
        return out
