"""What every executor (local, Ray) does with a list of shards, and what it reports back.

An executor runs each shard's ``ShardWorker.run_shard`` stream somewhere and feeds its events to a
``ShardTracker``, which turns them into progress and keeps the commit markers. A shard that could
not be committed (its storage failed, its actors kept dying with no way to write error rows) is a
``ShardFailure``: its rows are left for the next run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from sdbatch.jobs.store.outdir import ShardStats

from .progress import Progress


@dataclass(frozen=True)
class ShardProgress:
    """A worker's report after each batch: rows of ``shard`` with an outcome so far in this
    attempt (an attempt retried on a restarted actor counts from 0 again), on ``worker``."""

    shard: str
    rows: int
    failed: int
    worker: str


class ExecutorStopped(RuntimeError):
    """The executor cannot go on (e.g. every actor died for good): committed shards are kept, the
    rest are left for the next run; the message says why."""


@dataclass(frozen=True)
class ShardFailure:
    shard: str
    cause: str


@dataclass
class WorkerStats:
    """One worker's part of a run: the local process's, or one actor process's (a restarted actor
    is a new process, so it has an entry of its own: ``actor-0@host:pid``)."""

    shards: int = 0
    rows: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0


@dataclass
class ExecutionResult:
    committed: list[ShardStats] = field(default_factory=list)
    failures: list[ShardFailure] = field(default_factory=list)
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    ready_at: float | None = None  # perf_counter() when the first worker could take work


class Executor(Protocol):
    def run(self, shards: list[str], job_id: str, tracker: "ShardTracker") -> None:
        """Run ``shards`` (commit markers naming ``job_id``), reporting to ``tracker`` as they go;
        raises ``ModelLoadError`` when a model cannot load, ``KeyboardInterrupt`` when stopped."""


class ShardTracker:
    """Events of shard attempts -> progress deltas (an attempt's counts restart when it is retried)
    and, per shard, its commit marker."""

    def __init__(self, progress: Progress, result: ExecutionResult, earlier: dict[str, ShardStats] | None = None):
        self.progress = progress
        self.result = result
        self.earlier = earlier or {}  # markers of shards redone for their retryable rows, as the run found them
        self._seen: dict[str, ShardProgress] = {}

    def on_event(self, shard: str, event: ShardProgress | ShardStats) -> ShardStats | None:
        last = self._seen.get(shard)
        rows, failed = (last.rows, last.failed) if last else (0, 0)
        if isinstance(event, ShardProgress):
            self._seen[shard] = event
            self.progress.advance(event.rows - rows, event.failed - failed)
            return None
        self._seen.pop(shard, None)
        self.progress.advance(event.rows - rows, event.failed - failed)
        self.committed(event)
        return event

    def committed(self, stats: ShardStats) -> None:
        self.result.committed.append(stats)
        worker = self.result.workers.setdefault(stats.worker, WorkerStats())
        worker.shards += 1
        worker.rows += stats.rows
        worker.seconds = round(worker.seconds + stats.seconds, 3)
        worker.compile_seconds = round(worker.compile_seconds + stats.compile_seconds, 3)

    def forget(self, shard: str) -> None:
        """An attempt that ended without a commit: its rows no longer count as done."""
        last = self._seen.pop(shard, None)
        if last is not None:
            self.progress.advance(-last.rows, -last.failed)

    def settle(self, shard: str, marker: ShardStats | None) -> None:
        """A stopped attempt whose commit may have landed before the stop: ``marker`` is the
        shard's marker now. It counts as done when it is this attempt's commit, not one an earlier
        run left."""
        if marker is not None and marker != self.earlier.get(shard):
            self.on_event(shard, marker)
        else:
            self.forget(shard)

    def abandoned(self, shard: str, cause: str) -> None:
        """A shard left uncommitted for the next run, and why."""
        self.forget(shard)
        self.result.failures.append(ShardFailure(shard, cause))
