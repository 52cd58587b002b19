"""What executors share: the unit of work they fan out and how they are configured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sdbatch.manifests.schema import GenerationRow

from .progress import Progress
from .worker import ShardStats


@dataclass(frozen=True)
class ShardTask:
    shard: str
    rows: tuple[GenerationRow, ...]


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "ray"  # "ray" | "local"
    address: str | None = None  # None: RAY_ADDRESS, else a fresh local Ray instance
    actors: int | None = None  # None: one per GPU, or 1 on a machine without GPUs
    gpus_per_actor: float = 1.0
    shard_retries: int = 2  # times a shard is retried after its actor died
    inflight_per_actor: int = 2
    shared_fs: bool = False  # a local --out path is on a filesystem every node sees


class Executor(Protocol):
    def run(self, tasks: list[ShardTask], progress: Progress) -> list[ShardStats]: ...
