"""A job's plan (``OUT/_job/plan.json``), its resume check, and which shards are committed.

The plan records what decides the outputs: the output options, the manifest's fingerprint, the
models and their fingerprints, and the shard list. A rerun into the same OUT must produce the same
plan; a different one is refused unless ``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass

from sdbatch.manifests.schema import GenerationRow

from .plan import Shard, plan_shards
from .storage import Storage
from .worker import MARKER_DIR, ShardStats

log = logging.getLogger(__name__)

PLAN_PATH = "_job/plan.json"
SUMMARY_PATH = "_job/summary.json"


@dataclass(frozen=True)
class OutputOptions:
    """The options that decide what a job writes (resume refuses a change to these)."""

    model: str
    dtype: str
    shard_size: int
    layout: str = "files"  # plans written before layouts existed were "files" ...
    image_format: str = "png"  # ... of PNGs
    quality: int | None = None  # jpeg / webp only


@dataclass
class JobPlan:
    options: OutputOptions
    manifest: str
    manifest_fingerprint: str
    models: dict[str, str]  # model id -> fingerprint
    rows: int
    shards: list[Shard]

    def to_json(self) -> str:
        body = asdict(self)
        body["shards"] = [{"name": s.name, "rows": list(s.row_indices)} for s in self.shards]
        return json.dumps(body, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "JobPlan":
        body = json.loads(text)
        body["options"] = OutputOptions(**body["options"])
        body["shards"] = [Shard(s["name"], tuple(s["rows"])) for s in body["shards"]]
        return cls(**body)

    def differences(self, other: "JobPlan") -> list[str]:
        """What differs between two plans, in words, ignoring where the manifest file lives."""
        out = []
        if self.manifest_fingerprint != other.manifest_fingerprint:
            out.append("the manifest's content")
        if self.options != other.options:
            for key, value in asdict(self.options).items():
                if getattr(other.options, key) != value:
                    out.append(f"option {key} ({value!r} then, {getattr(other.options, key)!r} now)")
        if self.models != other.models:
            out.append(f"the models ({sorted(self.models)} then, {sorted(other.models)} now, or their weights)")
        if not out and self.shards != other.shards:
            out.append("the shard plan")
        return out


def fingerprint_rows(rows: list[GenerationRow]) -> str:
    """A hash of every normalised row: same manifest content, same fingerprint."""
    h = hashlib.sha256()
    for row in rows:
        h.update(repr(row).encode())
    return h.hexdigest()


def make_plan(rows: list[GenerationRow], manifest: str, options: OutputOptions,
              model_fingerprints: dict[str, str]) -> JobPlan:
    return JobPlan(
        options=options,
        manifest=manifest,
        manifest_fingerprint=fingerprint_rows(rows),
        models=model_fingerprints,
        rows=len(rows),
        shards=plan_shards(rows, options.shard_size),
    )


def read_plan(storage: Storage) -> JobPlan | None:
    if not storage.exists(PLAN_PATH):
        return None
    return JobPlan.from_json(storage.read_bytes(PLAN_PATH).decode())


def committed_shards(storage: Storage) -> dict[str, ShardStats]:
    done = {}
    for path in storage.list(MARKER_DIR):
        if path.endswith(".json"):
            stats = ShardStats(**json.loads(storage.read_bytes(path)))
            done[stats.shard] = stats
    return done


def clear_outputs(storage: Storage) -> None:
    """--overwrite: remove what an earlier, different job wrote into OUT."""
    for prefix in ("images", "shards", "metadata", "_job"):
        for path in storage.list(prefix):
            storage.delete(path)
