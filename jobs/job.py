"""A job: options, the plan written to ``OUT/_job/plan.json``, and which shards are still to do."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field

from sdbatch.manifests.schema import GenerationRow

from .plan import Shard, plan_shards
from .storage import Storage
from .worker import MARKER_DIR, ShardStats

log = logging.getLogger(__name__)

PLAN_PATH = "_job/plan.json"
SUMMARY_PATH = "_job/summary.json"


@dataclass(frozen=True)
class JobOptions:
    """The options that decide what a job's outputs are (resume refuses a change to these)."""

    manifest: str
    model: str
    shard_size: int = 1000


@dataclass
class JobPlan:
    options: JobOptions
    manifest_fingerprint: str
    models: list[str]
    shards: list[Shard]
    rows: int = 0

    def to_json(self) -> str:
        body = asdict(self)
        body["shards"] = [{"name": s.name, "rows": list(s.row_indices)} for s in self.shards]
        return json.dumps(body, indent=1)


def fingerprint_rows(rows: list[GenerationRow]) -> str:
    """A hash of every normalised row: same manifest content, same fingerprint."""
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(row).encode())
    return h.hexdigest()


def make_plan(rows: list[GenerationRow], options: JobOptions) -> JobPlan:
    return JobPlan(
        options=options,
        manifest_fingerprint=fingerprint_rows(rows),
        models=sorted({r.model for r in rows}),
        shards=plan_shards(rows, options.shard_size),
        rows=len(rows),
    )


def committed_shards(storage: Storage) -> dict[str, ShardStats]:
    done = {}
    for path in storage.list(MARKER_DIR):
        if path.endswith(".json"):
            stats = ShardStats(**json.loads(storage.read_bytes(path)))
            done[stats.shard] = stats
    return done
