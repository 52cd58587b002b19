"""The ``ray`` executor: fans shards out to GeneratorActors, a bounded number in flight per actor.

A shard whose actor dies is given to a live actor (Ray restarts dead actors, reloading their
models), at most ``shard_retries`` more times; after that its rows are committed as error rows
naming the cause, and the job goes on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError

from sdbatch.jobs.executor import ExecutorConfig, ShardTask
from sdbatch.jobs.progress import Progress
from sdbatch.jobs.storage import Storage
from sdbatch.jobs.worker import ShardStats, WorkerConfig, commit_failed_shard

from .actors import GeneratorActor, ProgressCounter
from .connect import ClusterInfo

log = logging.getLogger(__name__)


@dataclass
class ActorSlot:
    name: str
    handle: object
    inflight: int = 0
    deaths: int = 0
    alive: bool = True


@dataclass
class Attempt:
    task: ShardTask
    slot: ActorSlot
    number: int
    rows_reported: int = 0
    failed_reported: int = 0


@dataclass(frozen=True)
class ActorPlan:
    count: int
    num_cpus: float
    num_gpus: float
    threads: int


def plan_actors(info: ClusterInfo, config: ExecutorConfig) -> ActorPlan:
    """One actor per GPU by default; on a cluster without GPUs, ``--actors`` CPU actors (default 1)
    each given an equal share of the CPUs."""
    if info.gpus > 0:
        count = config.actors or max(1, int(info.gpus // config.gpus_per_actor))
        return ActorPlan(count, num_cpus=1, num_gpus=config.gpus_per_actor, threads=2)
    count = config.actors or 1
    share = max(1, int(info.cpus // count))
    return ActorPlan(count, num_cpus=share, num_gpus=0, threads=share)


class RayExecutor:
    def __init__(self, storage: Storage, worker_config: WorkerConfig, config: ExecutorConfig,
                 info: ClusterInfo, models: list[str]):
        self.storage = storage
        self.worker_config = worker_config
        self.config = config
        self.actor_plan = plan_actors(info, config)
        self.models = models
        self.progress_counter = None
        self.slots: list[ActorSlot] = []
        self.ready_at: float | None = None  # perf_counter() when every actor had loaded its models

    def _start_actors(self) -> None:
        plan = self.actor_plan
        self.progress_counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
        actor_cls = ray.remote(GeneratorActor).options(
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
            max_restarts=self.config.shard_retries, max_task_retries=0,
            # its shards in flight run on threads: one generates while another writes and commits
            max_concurrency=self.config.inflight_per_actor,
            # transformers warns about optional packages at import, before our loggers are set
            runtime_env={"env_vars": {"TRANSFORMERS_VERBOSITY": "error"}},
        )
        for i in range(plan.count):
            name = f"actor-{i}"
            handle = actor_cls.remote(name, self.storage.root, self.worker_config, self.models,
                                      plan.threads, self.progress_counter)
            self.slots.append(ActorSlot(name, handle))
        infos = ray.get([s.handle.info.remote() for s in self.slots])
        for info in infos:
            log.info("%s ready: pid %d on %s (%s)", info.name, info.pid, info.host, info.device)
        self.ready_at = time.perf_counter()

    def _poll_progress(self, attempts: dict, progress: Progress) -> None:
        for shard, (rows, failed) in ray.get(self.progress_counter.take.remote()).items():
            attempt = next((a for a in attempts.values() if a.task.shard == shard), None)
            if attempt is None:
                continue
            attempt.rows_reported += rows
            attempt.failed_reported += failed
            progress.advance(rows, failed)

    def _free_slot(self) -> ActorSlot | None:
        live = [s for s in self.slots if s.alive and s.inflight < self.config.inflight_per_actor]
        return min(live, key=lambda s: s.inflight) if live else None

    def run(self, tasks: list[ShardTask], progress: Progress) -> list[ShardStats]:
        if not tasks:
            return []
        self._start_actors()
        queue: deque[tuple[ShardTask, int]] = deque((t, 1) for t in tasks)
        attempts: dict[ray.ObjectRef, Attempt] = {}
        results: list[ShardStats] = []
        try:
            while queue or attempts:
                while queue and (slot := self._free_slot()) is not None:
                    task, number = queue.popleft()
                    ref = slot.handle.run_shard.remote(task.shard, task.rows)
                    slot.inflight += 1
                    attempts[ref] = Attempt(task, slot, number)
                if not attempts:
                    raise RuntimeError("no live actors left to run the remaining shards")
                ready, _ = ray.wait(list(attempts), num_returns=1, timeout=0.5)
                self._poll_progress(attempts, progress)
                for ref in ready:
                    attempt = attempts.pop(ref)
                    attempt.slot.inflight -= 1
                    results.extend(self._settle(ref, attempt, queue, progress))
        except BaseException:
            self.shutdown()
            raise
        self.shutdown()
        return results

    def _settle(self, ref, attempt: Attempt, queue: deque, progress: Progress) -> list[ShardStats]:
        """A finished attempt: its stats, or a retry, or (retries spent) error rows."""
        try:
            stats: ShardStats = ray.get(ref)
        except RayActorError as exc:
            cause = f"{attempt.slot.name} died while running shard {attempt.task.shard}: {type(exc).__name__}"
            log.warning("%s (attempt %d)", cause, attempt.number)
            progress.advance(-attempt.rows_reported)
            progress.add_failed(-attempt.failed_reported)
            attempt.slot.deaths += 1
            # Ray restarts a dead actor max_restarts (= shard_retries) times, then it stays dead.
            attempt.slot.alive = attempt.slot.deaths <= self.config.shard_retries
            if attempt.number <= self.config.shard_retries:
                queue.append((attempt.task, attempt.number + 1))
                return []
            stats = commit_failed_shard(self.storage, attempt.task.shard, list(attempt.task.rows),
                                        f"{cause}; gave up after {attempt.number} attempts")
            progress.advance(stats.rows, stats.failed)
            return [stats]
        # rows the actor reported after our last poll
        progress.advance(stats.rows - attempt.rows_reported, stats.failed - attempt.failed_reported)
        return [stats]

    def shutdown(self) -> None:
        for slot in self.slots:
            ray.kill(slot.handle, no_restart=True)
        if self.progress_counter is not None:
            ray.kill(self.progress_counter)
        self.slots = []
        self.progress_counter = None
