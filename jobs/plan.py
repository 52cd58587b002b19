"""Planning: rows grouped so a shard's rows batch together, shards of bounded size.

The plan is deterministic for the same manifest and options: groups are ordered by their first
row, rows inside a group keep manifest order, and shards are numbered in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdbatch.manifests.schema import GenerationRow


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


def batches(rows: list[GenerationRow], batch_size: int) -> list[list[GenerationRow]]:
    """Consecutive rows of equal group key, at most ``batch_size`` each."""
    out: list[list[GenerationRow]] = []
    for row in rows:
        if out and len(out[-1]) < batch_size and out[-1][0].group_key() == row.group_key():
            out[-1].append(row)
        else:
            out.append([row])
    return out
