"""Planning: rows grouped so a shard's rows batch together, shards of bounded size.

The plan is deterministic for the same manifest and options: groups are ordered by their first
row, rows inside a group keep manifest order, and shards are numbered in that order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, TypeVar

from sdbatch.manifests.schema import GenerationRow


T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    name: str
    row_indices: tuple[int, ...]


def plan_shards(rows: list[GenerationRow], shard_size: int) -> list[Shard]:
    if shard_size < 1:
        raise ValueError("shard size must be at least 1")
    groups: dict[tuple, list[int]] = {}
    for row in rows:
        groups.setdefault(row.group_key(), []).append(row.row_index)
    shards: list[Shard] = []
    for indices in groups.values():
        for start in range(0, len(indices), shard_size):
            shards.append(Shard(f"{len(shards):05d}", tuple(indices[start : start + shard_size])))
    return shards


def group_batches(items: list[T], key: Callable[[T], Hashable], batch_size: int) -> list[list[T]]:
    """Items of equal key, at most ``batch_size`` per batch, groups in first-seen order.

    A row's image does not depend on its batch, so rows need not be consecutive to share one:
    grouping by key keeps batches full when effective settings (e.g. sizes taken from init
    images) interleave.
    """
    groups: dict[Hashable, list[T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
