"""The Ray actor that holds loaded pipelines on one GPU (or a share of the CPUs) and runs shards.

Its constructor loads every model of the job once. A model that cannot load does not raise there
(Ray would print the constructor's traceback and mark the actor dead): ``ready()`` reports the
error instead, so the driver refuses the job with the same one line the local executor gives.
``run_shard`` is a streaming generator: the worker's progress after every batch, then the commit
marker. Ray restarts an actor that dies (``max_restarts``), but does not retry ``run_shard``
(``max_task_retries=0``: a streaming task that already streamed cannot be retried reliably); the
driver decides whether and where a shard runs again (``ray_executor``, ``--shard-retries``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActorReady:
    name: str
    pid: int
    host: str
    device: str
    node_id: str
    error: str | None = None  # the models could not load: why, in one line
    load_seconds: float = 0.0


class GeneratorActor:
    def __init__(self, name: str, out_root: str, config, models: list[str], threads: int, verbose: bool = False):
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
        if not verbose:  # transformers warns about optional packages as it is imported
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        from sdbatch.jobs.store.outdir import OutputFolder
        from sdbatch.jobs.store.backends import open_storage
        from sdbatch.jobs.worker.shard_worker import ShardWorker
        from sdbatch.pipeline.loading import quiet_libraries
        from sdbatch.pipeline.model_files import ModelLoadError
        from sdbatch.pipeline.speed.options import SpeedOptionError

        import torch

        if not verbose:
            quiet_libraries()
        torch.set_num_threads(max(1, threads))  # a CPU actor uses its share of the cores, no more
        self.name = name
        self.error: str | None = None
        started = time.perf_counter()
        # the worker's name tells incarnations apart: a restarted actor reports under a new pid
        self.worker = ShardWorker(OutputFolder(open_storage(out_root, config.s3)), config,
                                  name=f"{name}@{socket.gethostname()}:{os.getpid()}")
        try:
            self.worker.load(models)
        except (ModelLoadError, SpeedOptionError) as exc:  # the job cannot run here as asked
            self.error = str(exc)
        self.load_seconds = time.perf_counter() - started

    def ready(self) -> ActorReady:
        import ray

        return ActorReady(self.name, os.getpid(), socket.gethostname(), self.worker.device,
                          ray.get_runtime_context().get_node_id(), self.error, round(self.load_seconds, 3))

    def run_shard(self, shard: str, job_id: str):
        yield from self.worker.run_shard(shard, job_id)
