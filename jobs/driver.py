"""The driver: manifest -> plan -> resume check -> executor -> summary.

Everything `sdbatch run` does between parsing its options and choosing an exit code.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace

from sdbatch.manifests.reader import load_manifest
from sdbatch.pipeline.loading import model_fingerprint
from sdbatch.pipeline.tiny import resolve_builtin_model

from .executor import ExecutorConfig, ShardTask
from .job import (PLAN_PATH, SUMMARY_PATH, JobPlan, OutputOptions, clear_outputs, committed_shards,
                  make_plan, read_plan)
from .layouts import warn_about_split_words
from .progress import Progress
from .storage import LocalStorage, Storage, StorageError, open_storage
from .worker import ShardStats, WorkerConfig

log = logging.getLogger(__name__)


class JobRefused(RuntimeError):
    """The job cannot start as asked (exit code 2); the message says why and what to do."""


@dataclass(frozen=True)
class RunRequest:
    manifest: str
    out: str
    model: str  # as given: a hub id, a folder, or a built-in name such as "tiny"
    worker: WorkerConfig
    executor: ExecutorConfig
    shard_size: int = 1000
    overwrite: bool = False


@dataclass
class Summary:
    rows: int
    ok: int
    failed: int
    skipped: int  # rows of shards committed by an earlier run
    generated: int  # rows run by this run
    wall_seconds: float
    images_per_second: float  # rows run by this run / wall time (start-up and model loads included)
    generation_seconds: float  # from workers ready (models loaded) to the last shard committed
    generation_images_per_second: float
    executor: str
    duplicate_rows: int = 0  # manifest rows equal to an earlier row, generated once with it
    per_actor: dict[str, dict] = field(default_factory=dict)
    interrupted: bool = False

    def line(self) -> str:
        return (f"{self.ok} ok, {self.failed} failed of {self.rows} rows ({self.skipped} already done) "
                f"in {self.wall_seconds:.1f}s, {self.images_per_second:.2f} img/s")


def _resolve_builtin_models(rows):
    """Per-row ``model`` cells may name the built-in tiny models too (``tiny``, ``tiny:inpaint``)."""
    resolved = {m: resolve_builtin_model(m) for m in {r.model for r in rows}}
    if all(k == v for k, v in resolved.items()):
        return rows
    return [replace(r, model=resolved[r.model]) for r in rows]


def _prepare_plan(request: RunRequest, storage: Storage):
    loaded = load_manifest(request.manifest, default_model=request.model, storage=request.worker.storage)
    rows = _resolve_builtin_models(loaded.rows)
    models = sorted({r.model for r in rows})
    output = request.worker.output
    options = OutputOptions(model=request.model, dtype=request.worker.dtype or "auto",
                            shard_size=request.shard_size, layout=output.layout,
                            image_format=output.image.name, quality=output.image.effective_quality)
    plan = make_plan(rows, request.manifest, options, {m: model_fingerprint(m) for m in models})
    warn_about_split_words([r.key for r in rows], request.worker.output.layout)
    previous = read_plan(storage)
    if previous is not None:
        changed = previous.differences(plan)
        if changed and not request.overwrite:
            raise JobRefused(
                f"{request.out} holds a different job: {'; '.join(changed)} changed. "
                "Use another --out, or --overwrite to replace it."
            )
        if changed:
            log.warning("--overwrite: removing the earlier job's outputs in %s", request.out)
            clear_outputs(storage)
    discarded = storage.discard_partial_writes()  # a killed run's unfinished writes
    if discarded:
        log.info("discarded %d unfinished write(s) of an earlier run", discarded)
    storage.write_bytes(PLAN_PATH, plan.to_json().encode())
    return rows, plan, loaded.report.duplicate_rows


def _executor(request: RunRequest, storage: Storage, plan: JobPlan):
    if request.executor.kind == "local":
        from .local import LocalExecutor

        return LocalExecutor(storage, request.worker, sorted(plan.models)), None
    from sdbatch.cluster.connect import connect
    from sdbatch.cluster.pool import RayExecutor

    info = connect(request.executor.address)
    if info.nodes > 1 and isinstance(storage, LocalStorage) and not request.executor.shared_fs:
        raise JobRefused(
            f"the Ray cluster has {info.nodes} nodes and --out {request.out} is a local path: each node "
            "would write to its own disk. Use an s3:// --out, or pass --shared-fs if the path is on a "
            "filesystem every node mounts."
        )
    return RayExecutor(storage, request.worker, request.executor, info, sorted(plan.models)), info


def run_job(request: RunRequest) -> Summary:
    started = time.perf_counter()
    try:
        storage = open_storage(request.out, request.worker.storage)
        storage.check()
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    rows, plan, duplicate_rows = _prepare_plan(request, storage)
    done = committed_shards(storage)
    by_index = {r.row_index: r for r in rows}
    tasks = [ShardTask(s.name, tuple(by_index[i] for i in s.row_indices))
             for s in plan.shards if s.name not in done]
    skipped = sum(s.rows for s in done.values())
    progress = Progress(total=plan.rows, already_done=skipped)
    progress.add_failed(sum(s.failed for s in done.values()))
    interrupted = False
    new: list[ShardStats] = []
    executor = None
    try:
        executor, _ = _executor(request, storage, plan) if tasks else (None, None)
        if executor is not None:
            new = executor.run(tasks, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        if request.executor.kind == "ray" and tasks:
            from sdbatch.cluster.connect import disconnect

            disconnect()
    ended = time.perf_counter()
    ready_at = getattr(executor, "ready_at", None)
    generation = ended - ready_at if ready_at else 0.0
    summary = _summarise(plan, storage, new, skipped, ended - started, generation, request, interrupted)
    summary.duplicate_rows = duplicate_rows
    storage.write_bytes(SUMMARY_PATH, json.dumps(asdict(summary), indent=1).encode())
    return summary


def _summarise(plan, storage, new, skipped, wall, generation, request, interrupted) -> Summary:
    committed = committed_shards(storage)
    per_actor: dict[str, dict] = {}
    for stats in new:
        entry = per_actor.setdefault(stats.worker, {"shards": 0, "rows": 0, "seconds": 0.0})
        entry["shards"] += 1
        entry["rows"] += stats.rows
        entry["seconds"] = round(entry["seconds"] + stats.seconds, 3)
    generated = sum(s.rows for s in new)
    return Summary(
        rows=plan.rows,
        ok=sum(s.ok for s in committed.values()),
        failed=sum(s.failed for s in committed.values()),
        skipped=skipped,
        generated=generated,
        wall_seconds=round(wall, 3),
        images_per_second=round(generated / wall, 3) if wall > 0 else 0.0,
        generation_seconds=round(generation, 3),
        generation_images_per_second=round(generated / generation, 3) if generation > 0 else 0.0,
        executor=request.executor.kind,
        per_actor=per_actor,
        interrupted=interrupted,
    )
