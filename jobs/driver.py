"""The driver: manifest -> plan (validated, in Arrow) -> models checked -> resume check -> executor
-> summary. Everything ``sdbatch run`` does between parsing its options and choosing an exit code.

The executor is given, not chosen, here (``ExecutorFactory``): the CLI composes the job layer with
the local executor or with ``sdbatch.cluster``'s Ray executor, so jobs never imports cluster.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from sdbatch.manifests.problems import ManifestError
from sdbatch.manifests.source import open_manifest

from .executor import ExecutionResult, Executor, ExecutorStopped, ShardTracker
from .adapter_files import AdapterError, LoraFiles
from .layouts import warn_about_split_words
from .model_columns import check_models
from .outdir import DamagedOutput, JobPlan, OutputFolder, OutputOptions
from .planning import ShardPlanner, plan_manifest
from .prompt_columns import check_adapters
from .progress import Progress
from .storage import StorageError, open_storage
from .worker_config import WorkerConfig

log = logging.getLogger(__name__)

__all__ = ["JobRefused", "ManifestError", "RunRequest", "Summary", "run_job"]


class JobRefused(RuntimeError):
    """The job cannot start as asked (exit code 2); the message says why and what to do."""


@dataclass(frozen=True)
class RunRequest:
    manifest: str
    out: str
    model: str  # as given: a hub id, a folder, or a built-in name such as "tiny"
    worker: WorkerConfig
    shard_size: int = 1000
    overwrite: bool = False
    labels: Sequence[str] = ()  # manifest columns declared labels (never read as a misspelt column)
    prompt_syntax: str = "plain"  # how rows that name no prompt_syntax read their prompts


# (the output folder, the models the job's rows name) -> the executor that runs its shards
ExecutorFactory = Callable[[OutputFolder, list[str]], Executor]


@dataclass
class Summary:
    rows: int  # distinct rows planned
    ok: int
    failed: int
    skipped: int  # rows of shards committed by an earlier run
    generated: int  # rows committed by this run
    wall_seconds: float  # the whole run, start-up included
    planning_seconds: float  # reading, validating and planning the manifest
    startup_seconds: float  # from the plan to the first worker ready (Ray, model loads, compiles)
    generation_seconds: float  # from the first worker ready to the end
    images_per_second: float  # rows committed by this run / wall time
    generation_images_per_second: float  # rows committed by this run / generation time
    executor: str
    duplicate_rows: int = 0  # manifest rows equal to an earlier row, generated once with it
    per_worker: dict[str, dict] = field(default_factory=dict)
    failed_shards: list[dict] = field(default_factory=list)  # shards left uncommitted, and why
    stopped: str | None = None  # why the executor stopped before the end (every actor died, ...)
    interrupted: bool = False

    @property
    def incomplete(self) -> int:
        return self.rows - self.ok - self.failed

    def line(self) -> str:
        return (f"{self.ok:,} ok, {self.failed:,} failed of {self.rows:,} rows ({self.skipped:,} already done) "
                f"in {self.wall_seconds:.1f}s ({self.startup_seconds + self.planning_seconds:.1f}s start-up), "
                f"{self.generation_images_per_second:.2f} img/s generating")


def _plan(request: RunRequest, folder: OutputFolder, staging) -> tuple[JobPlan, ShardPlanner]:
    planned = plan_manifest(open_manifest(request.manifest, request.worker.s3), request.model, request.shard_size,
                            staging, labels=request.labels, prompt_syntax=request.prompt_syntax)
    planner, shards = planned.planner, planned.shards
    for note in planned.report.notes:
        log.warning("%s: %s", request.manifest, note)
    warn_about_split_words(planner.split_word_ids, planner.split_word_count, request.worker.output.layout)
    checked = check_models(planner.usage, request.worker.refiner)
    checked.raise_if_refused()
    models = {name: location.fingerprint for name, location in checked.locations.items()}
    if checked.refiner is not None:
        models[f"--refiner {checked.refiner.name}"] = checked.refiner.fingerprint
    try:
        adapters = check_adapters(planner.adapters, LoraFiles(request.worker.lora_dir, request.worker.s3),
                                  list(request.worker.embeddings))
    except AdapterError as exc:
        raise JobRefused(str(exc)) from None
    adapters.raise_if_refused()
    for note in adapters.notes:
        log.warning("%s: %s", request.manifest, note)
    models.update(adapters.fingerprints())  # LoRA and embedding files: a resume refuses a changed one
    output = request.worker.output
    options = OutputOptions(dtype=request.worker.dtype or "auto", shard_size=request.shard_size,
                            layout=output.layout, image_format=output.image.name,
                            quality=output.image.effective_quality)
    plan = JobPlan(options=options, manifest=request.manifest, fingerprint=planner.fingerprint, models=models,
                   rows=planned.rows, shards=shards, duplicate_rows=planned.report.duplicate_rows)
    return plan, planner


def _adopt(request: RunRequest, folder: OutputFolder, plan: JobPlan) -> bool:
    """Make ``plan`` OUT's job; returns whether OUT already held it (a resume)."""
    try:
        previous = folder.read_plan()
    except DamagedOutput as exc:
        if not request.overwrite:
            raise JobRefused(str(exc)) from None
        previous = None
        folder.clear()
    if previous is None:
        return False
    changed = previous.differences(plan)
    if not changed:
        return True
    committed = folder.committed(previous.job_id)
    if committed and not request.overwrite:
        raise JobRefused(
            f"{request.out} holds a different job ({len(committed):,} shards done): {'; '.join(changed)} changed. "
            "Use another --out, or --overwrite to replace it.")
    if committed:
        log.warning("--overwrite: removing the earlier job's outputs in %s", request.out)
    else:
        log.info("replacing the earlier plan in %s (it had no shard done)", request.out)
    folder.clear()
    return False


def _publish_inputs(folder: OutputFolder, plan: JobPlan, planner: ShardPlanner) -> None:
    """Each shard's input rows into OUT, once (a resumed job's are there already)."""
    present = folder.shards_with_inputs()
    missing = [s.name for s in plan.shards if s.name not in present]
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in pool.map(lambda name: folder.move_inputs_in(name, planner.staged_file(name)), missing):
            pass


def models_to_load(plan: JobPlan, worker: WorkerConfig) -> list[str]:
    """Every model the job's rows name, and the refiner: each worker loads them all at start. (The
    plan's other entries, ``--refiner``, ``--lora`` and ``--embedding``, are files it fingerprints.)"""
    return sorted(name for name in plan.models if not name.startswith("--")) + \
        ([worker.refiner] if worker.refiner else [])


def run_job(request: RunRequest, make_executor: ExecutorFactory, executor_name: str = "local") -> Summary:
    started = time.perf_counter()
    try:
        storage = open_storage(request.out, request.worker.s3)
        storage.check()
        storage.discard_partial_writes()  # a killed run's unfinished writes and plans
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    folder = OutputFolder(storage)
    staging = storage.staging_folder()
    try:
        plan, planner = _plan(request, folder, staging)
        resumed = _adopt(request, folder, plan)
        _publish_inputs(folder, plan, planner)
        folder.write_plan(plan)
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    finally:
        storage.discard_staging(staging)
    planned = time.perf_counter()
    done = folder.committed(plan.job_id)
    todo = [s.name for s in plan.shards if s.name not in done]
    skipped = sum(s.rows for s in done.values())
    log.info("planned %s row(s) in %s shard(s) in %.1fs%s", f"{plan.rows:,}", f"{len(plan.shards):,}",
             planned - started, f"; {skipped:,} rows already done" if resumed else "")
    if plan.duplicate_rows:
        log.info("%s exact duplicate rows: each distinct row is generated once", f"{plan.duplicate_rows:,}")
    progress = Progress(total=plan.rows, already_done=skipped, already_failed=sum(s.failed for s in done.values()))
    result = ExecutionResult()
    interrupted, stopped = False, None
    try:
        if todo:
            executor = make_executor(folder, models_to_load(plan, request.worker))
            executor.run(todo, plan.job_id, ShardTracker(progress, result))
    except KeyboardInterrupt:
        interrupted = True
    except ExecutorStopped as exc:
        stopped = str(exc)
        log.error("%s", exc)
    finally:
        progress.close()
    summary = _summarise(folder, plan, result, skipped, started, planned, executor_name, interrupted)
    summary.stopped = stopped
    folder.write_summary(asdict(summary))
    return summary


def _summarise(folder: OutputFolder, plan: JobPlan, result: ExecutionResult, skipped: int, started: float,
               planned: float, executor: str, interrupted: bool) -> Summary:
    ended = time.perf_counter()
    committed = folder.committed(plan.job_id)
    generated = sum(s.rows for s in result.committed)
    ready = result.ready_at or ended
    generation = ended - ready
    wall = ended - started
    return Summary(
        rows=plan.rows,
        ok=sum(s.ok for s in committed.values()),
        failed=sum(s.failed for s in committed.values()),
        skipped=skipped,
        generated=generated,
        wall_seconds=round(wall, 3),
        planning_seconds=round(planned - started, 3),
        startup_seconds=round(ready - planned, 3),
        generation_seconds=round(generation, 3),
        images_per_second=round(generated / wall, 3) if wall > 0 else 0.0,
        generation_images_per_second=round(generated / generation, 3) if generation > 0 else 0.0,
        executor=executor,
        duplicate_rows=plan.duplicate_rows,
        per_worker={name: asdict(stats) for name, stats in result.workers.items()},
        failed_shards=[asdict(f) for f in result.failures],
        interrupted=interrupted,
    )
