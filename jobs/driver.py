"""The driver: lease -> manifest -> plan (validated, in Arrow) -> models checked -> resume check ->
shards to (re)do -> executor -> summary. Everything ``sdbatch run`` does between parsing its options
and choosing an exit code; ``dry_run`` is the same up to the plan, writing nothing to OUT.

The executor is given, not chosen, here (``ExecutorFactory``): the CLI composes the job layer with
the local executor or with ``sdbatch.cluster``'s Ray executor, so jobs never imports cluster.

Shards a run (re)does: those not committed; those committed with rows that failed for a storage
reason (their marker stays until the redo commits); those whose committed outputs are damaged
(``outdir.damaged_shards``: the files their markers record, at every start; everything ``verify``
checks, with ``--repair``), uncommitted first.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from sdbatch.jobs.store.backends import open_storage
from sdbatch.jobs.store.layouts import warn_about_split_words
from sdbatch.jobs.store.lease import Lease, LeaseHeld
from sdbatch.jobs.store.outdir import DamagedOutput, JobPlan, OutputFolder, OutputOptions
from sdbatch.jobs.store.paths import PLAN
from sdbatch.jobs.store.storage import StorageError
from sdbatch.jobs.worker.adapter_files import AdapterError, LoraFiles
from sdbatch.jobs.worker.worker_config import WorkerConfig
from sdbatch.manifests.problems import ManifestError, Problem
from sdbatch.manifests.remote import is_s3_uri
from sdbatch.manifests.schema import DEFAULT_PROMPT_SYNTAX
from sdbatch.manifests.source import open_manifest

from . import defaults
from .adapter_checks import check_adapters
from .executor import ExecutionResult, Executor, ExecutorStopped, ShardTracker
from .model_checks import ModelCheck, check_models
from .planning import PlannedManifest, ShardPlanner, plan_manifest, planned_batches
from .progress import Progress

log = logging.getLogger(__name__)

__all__ = ["DryRun", "JobRefused", "ManifestError", "RunRequest", "Summary", "check_job", "dry_run", "run_job"]


class JobRefused(RuntimeError):
    """The job cannot start as asked (exit code 2); the message says why and what to do."""


@dataclass(frozen=True)
class RunRequest:
    manifest: str
    out: str
    model: str  # as given: a hub id, a folder, or a built-in name such as "tiny"
    worker: WorkerConfig
    shard_size: int = defaults.SHARD_SIZE
    overwrite: bool = False
    labels: Sequence[str] = ()  # manifest columns declared labels (never read as a misspelt column)
    allow_paths: Sequence[str] = ()  # --allow-path: local folders image cells may name, besides the manifest's
    repair: bool = False  # --repair: check every committed shard as verify does, redo the damaged ones
    prompt_syntax: str = DEFAULT_PROMPT_SYNTAX  # how rows that name no prompt_syntax read their prompts


# (the output folder, the models the job's rows name, how workers run) -> the executor of its shards
ExecutorFactory = Callable[[OutputFolder, list[str], WorkerConfig], Executor]


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
    retry_rows: int = 0  # rows failed for a storage reason: the next run redoes their shards
    repaired: list[str] = field(default_factory=list)  # committed shards redone because damaged

    @property
    def incomplete(self) -> int:
        return self.rows - self.ok - self.failed

    def line(self) -> str:
        return (f"{self.ok:,} ok, {self.failed:,} failed of {self.rows:,} rows ({self.skipped:,} already done) "
                f"in {self.wall_seconds:.1f}s ({self.startup_seconds + self.planning_seconds:.1f}s start-up), "
                f"{self.generation_images_per_second:.2f} img/s generating")


def image_roots(base: Path | str, allow_paths: Sequence[str]) -> tuple[str, ...]:
    """The local folders a job's image cells may name: the manifest's folder (when local) and the
    --allow-path folders."""
    roots = [] if is_s3_uri(str(base)) else [str(base)]
    return tuple(roots + [os.path.abspath(p) for p in allow_paths])


@dataclass
class _Planned:
    plan: JobPlan | None  # None where problems refuse the job
    manifest: PlannedManifest
    models: ModelCheck | None  # None where the manifest itself was refused
    image_roots: tuple[str, ...]
    problems: list[Problem] = field(default_factory=list)


def _plan(request: RunRequest, staging, collect: bool = False) -> _Planned:
    """The job's plan (its shards' rows staged in ``staging``), its models, LoRAs and embeddings
    located and checked. ``run`` is refused at the first failing check (``ManifestError``;
    ``ModelLoadError`` for a model that cannot be used); with ``collect`` (``validate``,
    ``--dry-run``) every problem is gathered in ``problems`` instead, the models' as rows too."""
    source = open_manifest(request.manifest, request.worker.s3)
    planned = plan_manifest(source, request.model, request.shard_size, staging, labels=request.labels,
                            prompt_syntax=request.prompt_syntax, refuse=not collect)
    planner, shards = planned.planner, planned.shards
    roots = image_roots(source.base, request.allow_paths)
    if planned.report.problems:  # collect: the rows themselves are refused; nothing else is asked
        return _Planned(None, planned, None, roots, list(planned.report.problems))
    if not collect:
        for note in planned.report.notes:
            log.warning("%s: %s", request.manifest, note)
        warn_about_split_words(planner.split_word_ids, planner.split_word_count, request.worker.output.layout)
    checked = check_models(planner.usage, request.worker.refiner)
    if not collect:
        checked.raise_if_refused()
    try:
        adapters = check_adapters(planner.adapters, LoraFiles(request.worker.lora_dir, request.worker.s3),
                                  list(request.worker.embeddings), quantize=request.worker.speed.quantize)
    except AdapterError as exc:
        raise JobRefused(str(exc)) from None
    if collect:
        planned.report.notes += adapters.notes  # printed with the report
    else:
        adapters.raise_if_refused()
        for note in adapters.notes:
            log.warning("%s: %s", request.manifest, note)
    problems = checked.unusable + checked.problems + adapters.problems
    if problems:
        return _Planned(None, planned, checked, roots, problems)
    models = {name: location.fingerprint for name, location in checked.locations.items()}
    if checked.refiner is not None:
        models[f"--refiner {checked.refiner.name}"] = checked.refiner.fingerprint
    models.update(adapters.fingerprints())  # LoRA and embedding files: a resume refuses a changed one
    output = request.worker.output
    options = OutputOptions(dtype=request.worker.dtype or "auto", shard_size=request.shard_size,
                            layout=output.layout, image_format=output.image.name,
                            quality=output.image.effective_quality, quantize=request.worker.speed.quantize)
    plan = JobPlan(options=options, manifest=request.manifest, fingerprint=planner.fingerprint, models=models,
                   rows=planned.rows, shards=shards, duplicate_rows=planned.report.duplicate_rows)
    return _Planned(plan, planned, checked, roots)


def _previous(request: RunRequest, folder: OutputFolder, plan: JobPlan) -> tuple[JobPlan | None, list[str]]:
    """OUT's earlier plan and what differs from ``plan`` (nothing: a resume); JobRefused where the
    run may not replace it (a different job with shards done, or a damaged plan, without
    --overwrite). Reads only: ``dry_run`` asks the same."""
    try:
        previous = folder.read_plan()
    except DamagedOutput as exc:
        if not request.overwrite:
            raise JobRefused(str(exc)) from None
        return None, ["a damaged plan"]
    if previous is None:
        foreign = [s for s in folder.committed().values() if s.job != plan.job_id]
        if foreign and not request.overwrite:
            raise JobRefused(
                f"{request.out} holds {len(foreign):,} committed shard(s) of another job and no plan ({PLAN}); "
                "use another --out, or --overwrite to replace them")
        return None, ["another job's shards"] if foreign else []
    changed = previous.differences(plan)
    if changed and folder.committed(previous.job_id) and not request.overwrite:
        raise JobRefused(
            f"{request.out} holds a different job ({len(folder.committed(previous.job_id)):,} shards done): "
            f"{'; '.join(changed)} changed. Use another --out, or --overwrite to replace it.")
    return previous, changed


def _adopt(request: RunRequest, folder: OutputFolder, plan: JobPlan) -> bool:
    """Make ``plan`` OUT's job; returns whether OUT already held it (a resume)."""
    previous, changed = _previous(request, folder, plan)
    if previous is None:
        if changed:
            log.warning("--overwrite: removing %s from %s", changed[0], request.out)
            folder.clear()
        return False
    if not changed:
        return True
    committed = folder.committed(previous.job_id)
    if committed:
        log.warning("--overwrite: removing the earlier job's outputs in %s", request.out)
    else:
        log.info("replacing the earlier plan in %s (it had no shard done)", request.out)
    folder.clear()
    return False


def _publish_inputs(folder: OutputFolder, plan: JobPlan, planner: ShardPlanner, resumed: bool) -> None:
    """Each shard's input rows into OUT: all of them for a new job, the missing ones on a resume
    (the others are this job's already)."""
    present = folder.shards_with_inputs() if resumed else set()
    missing = [s.name for s in plan.shards if s.name not in present]
    with ThreadPoolExecutor(max_workers=16) as pool:
        for _ in pool.map(lambda name: folder.move_inputs_in(name, planner.staged_file(name)), missing):
            pass


def models_to_load(plan: JobPlan, worker: WorkerConfig) -> list[str]:
    """Every model the job's rows name, and the refiner: each worker loads them all at start. (The
    plan's other entries, ``--refiner``, ``--lora`` and ``--embedding``, are files it fingerprints.)"""
    return sorted(name for name in plan.models if not name.startswith("--")) + \
        ([worker.refiner] if worker.refiner else [])


def _open_out(request: RunRequest) -> OutputFolder:
    try:
        storage = open_storage(request.out, request.worker.s3)
        storage.check_writable()
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    return OutputFolder(storage)


@contextmanager
def _holding_lease(folder: OutputFolder):
    """OUT's lease, held (and its heartbeat kept) while the block runs; JobRefused when another
    live driver holds it."""
    lease = Lease(folder)
    try:
        lease.acquire()
    except LeaseHeld as exc:
        raise JobRefused(str(exc)) from None
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    lease.start()
    try:
        yield lease
    finally:
        lease.release()


def run_job(request: RunRequest, make_executor: ExecutorFactory, executor_name: str = "local") -> Summary:
    started = time.perf_counter()
    folder = _open_out(request)
    try:
        with _holding_lease(folder):
            return _run(request, folder, make_executor, executor_name, started)
    finally:
        folder.storage.remove_if_empty()  # a refused job leaves no OUT behind


def _shards_to_run(request: RunRequest, folder: OutputFolder,
                   plan: JobPlan) -> tuple[list[str], dict, dict, list[str]]:
    """(shards to run, committed shards kept, damaged shards to redo); see the module doc."""
    committed = folder.committed(plan.job_id)
    damaged = folder.damaged_shards(plan, committed, full=request.repair)
    for shard, why in sorted(damaged.items()):
        log.warning("shard %s: %s; redoing it", shard, why)
        folder.uncommit(shard)
        committed.pop(shard)
    retry = {name for name, stats in committed.items() if stats.retryable}
    if retry:
        rows = sum(committed[name].retryable for name in retry)
        log.info("retrying %s row(s) that failed for a storage reason (%s shard(s))", f"{rows:,}", f"{len(retry):,}")
    done = {name: stats for name, stats in committed.items() if name not in retry}
    first = [s.name for s in plan.shards if s.name not in committed]  # never attempted (or damaged) first
    todo = first + [s.name for s in plan.shards if s.name in retry]
    earlier = {name: committed[name] for name in retry}  # markers that stay until a redo commits
    return todo, done, earlier, sorted(damaged)


def _run(request: RunRequest, folder: OutputFolder, make_executor: ExecutorFactory, executor_name: str,
         started: float) -> Summary:
    storage = folder.storage
    try:
        storage.discard_partial_writes()  # a killed run's unfinished writes and plans
        staging = storage.staging_folder()
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    try:
        planned_job = _plan(request, staging)
        plan, roots = planned_job.plan, planned_job.image_roots
        resumed = _adopt(request, folder, plan)
        _publish_inputs(folder, plan, planned_job.manifest.planner, resumed)
        folder.write_plan(plan)
        todo, done, earlier, repaired = _shards_to_run(request, folder, plan)
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    except OSError as exc:  # staging the shards' rows (in OUT) on a full disk
        raise JobRefused(f"--out {storage.root}: cannot write the plan: {exc.strerror or exc}") from None
    finally:
        storage.discard_staging(staging)
    planned = time.perf_counter()
    skipped = sum(s.rows for s in done.values())
    log.info("planned %s row(s) in %s shard(s) in %.1fs%s", f"{plan.rows:,}", f"{len(plan.shards):,}",
             planned - started, f"; {skipped:,} rows already done" if resumed else "")
    if plan.duplicate_rows:
        log.info("%s exact duplicate rows: each distinct row is generated once", f"{plan.duplicate_rows:,}")
    progress = Progress(total=plan.rows, already_done=skipped, already_failed=sum(s.failed for s in done.values()))
    result = ExecutionResult()
    interrupted, stopped = False, None
    worker = replace(request.worker, image_roots=roots)
    try:
        if todo:
            executor = make_executor(folder, models_to_load(plan, worker), worker)
            executor.run(todo, plan.job_id, ShardTracker(progress, result, earlier))
    except KeyboardInterrupt:
        interrupted = True
    except ExecutorStopped as exc:
        stopped = str(exc)
        log.error("%s", exc)
    finally:
        progress.close()
    summary = _summarise(folder, plan, result, skipped, started, planned, executor_name, interrupted)
    summary.stopped = stopped
    summary.repaired = repaired
    folder.write_summary(asdict(summary))
    return summary


@dataclass
class DryRun:
    """What ``validate`` and ``run --dry-run`` print: the plan ``run`` would make (None where it
    would refuse), every problem that refuses it, and (``--dry-run``) what OUT holds now."""

    plan: JobPlan | None
    planned: PlannedManifest
    models: ModelCheck | None
    problems: list[Problem]
    out_state: str | None = None  # one line on OUT: empty, this job (how far), or what run would replace

    def batches(self, batch_size: int) -> int:
        """The batches ``run`` makes, from the planner's shards (none where the rows are refused)."""
        return planned_batches(self.planned.shards, batch_size)


def check_job(request: RunRequest) -> DryRun:
    """Validate, plan (into a temporary folder) and check the models and adapters as ``run`` does,
    collecting every problem; OUT is not looked at (``request.out`` may be empty): ``validate``."""
    with tempfile.TemporaryDirectory(prefix="sdbatch-check-") as staging:
        planned = _plan(request, Path(staging), collect=True)
    return DryRun(planned.plan, planned.manifest, planned.models, planned.problems)


def dry_run(request: RunRequest) -> DryRun:
    """``check_job`` and a comparison with OUT, writing nothing: refused (``ManifestError``,
    ``JobRefused``) exactly where ``run`` would refuse."""
    try:
        storage = open_storage(request.out, request.worker.s3)
        storage.check()
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    folder = OutputFolder(storage)
    found = check_job(request)
    if found.problems:
        raise ManifestError.from_problems(found.problems)
    plan = found.plan
    try:
        previous, changed = _previous(request, folder, plan)
        if previous is None and not changed:
            state = "empty: the run starts a new job"
        elif not changed:
            done = folder.committed(plan.job_id)
            state = (f"holds this job: {len(done):,} of {len(plan.shards):,} shards done; the run resumes")
        else:
            state = f"holds another job ({'; '.join(changed)}): the run replaces it"
    except StorageError as exc:
        raise JobRefused(f"--out {exc}") from None
    found.out_state = state
    return found


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
        retry_rows=sum(s.retryable for s in committed.values()),
    )
