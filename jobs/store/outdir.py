"""The output folder, OUT: the job's plan, the commit protocol, resume, clearing, ``sdbatch status``
and ``sdbatch verify``. Its paths are named in ``paths.py``.

A shard commits in this order: its images (and its layout's own metadata) appear, then
``metadata/<shard>.parquet``, then the marker. A shard is committed exactly when its marker exists,
can be read and names this job; everything a reader should use is reachable from committed
markers. A marker records the size of the shard's metadata file (and tar), so a damaged or missing
one is found at every start by one listing (``damaged_shards``) and the shard is redone; the full
check (every image decodes) is ``verify``'s, and ``run --repair`` redoes the shards it faults.

A committed shard whose marker counts rows that failed for a storage reason (``retryable``) stays
committed for readers, but ``run`` redoes it: its marker is replaced when the redo commits.

Nothing here imports torch: ``status`` and ``verify`` answer in about a second.
"""

from __future__ import annotations

import io
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, fields

import pyarrow as pa
import pyarrow.parquet as pq

from .layouts import layout_named
from .metadata import table_bytes
from .paths import (INPUTS, LOGS, MARKERS, METADATA, OUTPUT_FILES, OUTPUT_PREFIXES, PLAN,
                    SUMMARY, image_folder, inputs_path, marker_path, metadata_path, pending_folder, tar_path)
from .storage import Storage

log = logging.getLogger(__name__)

PLAN_VERSION = 2


class DamagedOutput(RuntimeError):
    """A file of OUT's own that cannot be read (garbage, truncated): names it and what to do."""


# -- the plan ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputOptions:
    """The options that decide what a job writes (a rerun may not change them)."""

    dtype: str
    shard_size: int
    layout: str = "files"
    image_format: str = "png"
    quality: int | None = None  # jpeg / webp only
    quantize: str = "none"  # --quantize fp8 changes images (the other speed switches do not)


# How each option is spelled on the command line, for messages.
OPTION_FLAGS = {"dtype": "--dtype", "shard_size": "--shard-size", "layout": "--layout",
                "image_format": "--format", "quality": "--quality", "quantize": "--quantize"}


@dataclass(frozen=True)
class ShardPlan:
    name: str
    rows: int


@dataclass
class JobPlan:
    options: OutputOptions
    manifest: str  # where it was read from (informative; moving a manifest does not change the job)
    fingerprint: str  # every distinct row's id, parameters and labels (manifests.ids.ContentDigest)
    models: dict[str, str]  # model as written -> its fingerprint
    rows: int  # distinct rows planned
    shards: list[ShardPlan]
    duplicate_rows: int = 0  # manifest rows equal to an earlier row, generated once with it
    version: int = PLAN_VERSION

    @property
    def job_id(self) -> str:
        """What a commit marker records: which job's plan it belongs to."""
        import hashlib

        body = json.dumps([self.fingerprint, asdict(self.options), sorted(self.models.items())], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "JobPlan":
        body = json.loads(text)
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        if body.get("version") != PLAN_VERSION:
            raise ValueError(f"plan format {body.get('version', 1)}, this sdbatch writes {PLAN_VERSION}")
        body["options"] = OutputOptions(**body["options"])
        body["shards"] = [ShardPlan(**s) for s in body["shards"]]
        return cls(**body)

    def differences(self, other: "JobPlan") -> list[str]:
        """What differs between this (earlier) plan and ``other``, in the words a user knows."""
        out = []
        if self.fingerprint != other.fingerprint:
            out.append("the manifest's rows (their ids, parameters or labels)")
        for f in fields(OutputOptions):
            then, now = getattr(self.options, f.name), getattr(other.options, f.name)
            if then != now:
                out.append(f"{OPTION_FLAGS[f.name]} ({_shown(then)} then, {_shown(now)} now)")
        if self.models != other.models:
            changed = sorted(set(self.models.items()) ^ set(other.models.items()))
            names = sorted({name for name, _ in changed})
            out.append(f"the models or their weights ({', '.join(names)})")
        if not out and self.shards != other.shards:
            out.append("the shard plan")
        return out


def _shown(value) -> str:
    return "default" if value is None else str(value)


@dataclass
class ShardStats:
    """A shard's commit marker: written last, and naming its job (a marker of another job's plan
    is not a commit of this one)."""

    shard: str
    rows: int
    ok: int
    failed: int
    seconds: float
    worker: str = ""
    job: str = ""
    errors: dict[str, int] = field(default_factory=dict)  # failed rows by error kind
    files: dict[str, int] = field(default_factory=dict)  # the shard's metadata file (and tar): bytes
    compile_seconds: float = 0.0  # time the worker spent compiling while it ran this shard

    @property
    def retryable(self) -> int:
        """Rows that failed for a storage reason (not their own fault): the next run redoes them."""
        return self.errors.get("storage", 0)


# -- the folder -----------------------------------------------------------------------------------
class OutputFolder:
    """OUT, read and written through a ``Storage``."""

    def __init__(self, storage: Storage):
        self.storage = storage

    @property
    def root(self) -> str:
        return self.storage.root

    # plan and summary
    def read_plan(self) -> JobPlan | None:
        if not self.storage.exists(PLAN):
            return None
        try:
            return JobPlan.from_json(self.storage.read_bytes(PLAN).decode())
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
            raise DamagedOutput(f"{self.storage.url(PLAN)} cannot be read ({exc}); this OUT was not written by "
                                "this sdbatch or was damaged: use another --out, or --overwrite to start over") from None

    def write_plan(self, plan: JobPlan) -> None:
        self.storage.write_bytes(PLAN, plan.to_json().encode())

    def write_summary(self, summary: dict) -> None:
        self.storage.write_bytes(SUMMARY, json.dumps(summary, indent=1).encode())

    # shard inputs
    def move_inputs_in(self, shard: str, local_file) -> None:
        self.storage.move_in(inputs_path(shard), local_file)

    def shards_with_inputs(self) -> set[str]:
        return {p.rsplit("/", 1)[-1].removesuffix(".parquet") for p in self.storage.list(INPUTS)}

    def read_inputs(self, shard: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.storage.read_bytes(inputs_path(shard))))

    # commits
    def committed(self, job_id: str | None = None) -> dict[str, ShardStats]:
        """Committed shards (of the job ``job_id``, when given); unreadable markers are skipped."""
        return self.markers(job_id)[0]

    def markers(self, job_id: str | None = None) -> tuple[dict[str, ShardStats], dict[str, str]]:
        """(committed shards of ``job_id`` or of any job, {shard: why} for markers that cannot be
        read: a damaged marker is not a commit)."""
        done, damaged = {}, {}
        for path in self.storage.list(MARKERS):
            if not path.endswith(".json"):
                continue
            stats = self._marker(path)
            if stats is None:
                damaged[path.rsplit("/", 1)[-1].removesuffix(".json")] = f"its commit marker {path} is damaged"
            elif job_id is None or stats.job == job_id:
                done[stats.shard] = stats
        return done, damaged

    def committed_shard(self, shard: str, job_id: str) -> ShardStats | None:
        """The shard's commit marker, if this job committed it."""
        if not self.storage.exists(marker_path(shard)):
            return None
        stats = self._marker(marker_path(shard))
        return stats if stats is not None and stats.job == job_id else None

    def _marker(self, path: str) -> ShardStats | None:
        try:
            stats = ShardStats(**json.loads(self.storage.read_bytes(path)))
        except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
            log.warning("ignoring damaged commit marker %s (%s)", path, exc)
            return None
        counts = (stats.rows, stats.ok, stats.failed)
        if not isinstance(stats.errors, dict) or not isinstance(stats.files, dict) or \
                not all(isinstance(n, int) for n in counts) or \
                stats.shard != path.rsplit("/", 1)[-1].removesuffix(".json"):
            log.warning("ignoring damaged commit marker %s", path)
            return None
        return stats

    def commit(self, shard: str, metadata: pa.Table, stats: ShardStats) -> None:
        """The last two steps of a commit (the layout has published the images): metadata, marker
        (recording the metadata file's size)."""
        data = table_bytes(metadata)
        self.storage.write_bytes(metadata_path(shard), data)
        stats.files = {**stats.files, metadata_path(shard): len(data)}
        self.storage.write_bytes(marker_path(shard), json.dumps(asdict(stats)).encode())

    def damaged_shards(self, plan: JobPlan, committed: dict[str, ShardStats], full: bool = False) -> dict[str, str]:
        """Committed shards whose outputs are damaged, and what is wrong with each: at every start,
        the files the markers record are looked up (one listing per folder: present, and the size
        they had); ``full`` (``run --repair``) also checks every committed shard as ``verify`` does."""
        found: dict[str, str] = {}
        recorded = {path for stats in committed.values() for path in stats.files}
        sizes: dict[str, int] = {}
        for prefix in sorted({path.split("/", 1)[0] for path in recorded}):
            sizes.update(self.storage.sizes(prefix))
        for name, stats in committed.items():
            for path, size in stats.files.items():
                if path not in sizes:
                    found[name] = f"{path} is missing"
                elif sizes[path] != size:
                    found[name] = f"{path} holds {sizes[path]:,} bytes, {size:,} when committed"
        if full:
            layout = layout_named(plan.options.layout)
            for shard in plan.shards:
                if shard.name in committed and shard.name not in found:
                    problems, _ = check_committed_shard(self, layout, shard)
                    if problems:
                        found[shard.name] = problems[0]
        return found

    def commit_failed(self, shard: str, job_id: str, cause: str) -> ShardStats:
        """Commit every row of a shard that could not run (its workers kept dying) as an error row
        saying why."""
        from sdbatch.manifests.rows import extra_names, rows_of

        from .metadata import ResultRecord, records_to_table

        table = self.read_inputs(shard)
        records = [ResultRecord.failed(row, shard, cause, "internal") for row in rows_of(table)]
        self.discard_uncommitted(shard)
        stats = ShardStats(shard, len(records), 0, len(records), 0.0, "driver", job_id, {"internal": len(records)})
        self.commit(shard, records_to_table(records, table.select(extra_names(table))), stats)
        return stats

    def write_log(self, name: str, text: str) -> str:
        """A log file under _job/logs; returns where it is."""
        path = f"{LOGS}/{name}"
        self.storage.write_bytes(path, text.encode())
        return self.storage.url(path)

    def uncommit(self, shard: str) -> None:
        """Forget a shard's commit (its outputs are redone by the next run)."""
        self.storage.delete(marker_path(shard))

    def discard_uncommitted(self, shard: str) -> None:
        """Remove what an attempt at a shard wrote before it committed (its images in progress)."""
        for prefix in (pending_folder(shard), image_folder(shard)):
            self.storage.delete_prefix(prefix)
        self.storage.delete(tar_path(shard))
        self.storage.delete(metadata_path(shard))

    def clear(self) -> None:
        """Remove what an earlier, different job wrote into OUT (--overwrite, or a job that had
        committed nothing yet)."""
        for prefix in OUTPUT_PREFIXES:
            self.storage.delete_prefix(prefix)
        for path in OUTPUT_FILES:
            self.storage.delete(path)


# -- status and verify -------------------------------------------------------------------------------
@dataclass
class JobStatus:
    out: str
    planned_rows: int
    planned_shards: int
    done_shards: int
    done_rows: int
    ok: int
    failed: int
    retry_rows: int = 0  # failed for a storage reason: the same run command redoes them
    damaged: list[str] = field(default_factory=list)  # committed shards whose metadata file is damaged

    @property
    def found(self) -> bool:
        return self.planned_shards > 0

    @property
    def complete(self) -> bool:
        return self.found and self.done_shards == self.planned_shards and not self.retry_rows and not self.damaged

    def text(self) -> str:
        if not self.found:
            return f"{self.out}: no sdbatch job here (no {PLAN})"
        pct = 100 * self.done_rows / max(self.planned_rows, 1)
        retry = f" ({self.retry_rows:,} for a storage reason)" if self.retry_rows else ""
        if self.complete:
            state = "complete"
        elif self.damaged:
            state = (f"damaged: shard(s) {', '.join(self.damaged[:5])} lost committed files "
                     "(the same run command redoes them)")
        elif self.done_shards == self.planned_shards:
            state = "incomplete (rows failed for a storage reason: the same run command retries them)"
        else:
            state = "incomplete (running, or stopped: the same run command resumes)"
        return (f"{self.out}: {self.done_rows:,}/{self.planned_rows:,} rows ({pct:.1f}%), "
                f"{self.done_shards:,}/{self.planned_shards:,} shards, {self.ok:,} ok, {self.failed:,} failed{retry}: "
                f"{state}")


def job_status(folder: OutputFolder) -> JobStatus:
    plan = folder.read_plan()
    if plan is None:
        return JobStatus(folder.root, 0, 0, 0, 0, 0, 0)
    done = folder.committed(plan.job_id)
    return JobStatus(folder.root, plan.rows, len(plan.shards), len(done), sum(s.rows for s in done.values()),
                     sum(s.ok for s in done.values()), sum(s.failed for s in done.values()),
                     sum(s.retryable for s in done.values()), sorted(folder.damaged_shards(plan, done)))


@dataclass
class Verdict:
    """What ``verify`` found: problems (outputs that break a promise; ``damaged``: the committed
    shards among them, which ``run --repair`` redoes), shards not yet committed and rows to retry
    (an incomplete job, which the same run command completes)."""

    problems: list[str]
    uncommitted: list[str]
    planned: int
    damaged: list[str] = field(default_factory=list)
    retry_rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and not self.uncommitted and not self.retry_rows


def check_committed_shard(folder: OutputFolder, layout, shard: ShardPlan) -> tuple[list[str], set[str]]:
    """Problems with a committed shard (its metadata against the plan, its images against its
    layout), and the layout's files it accounts for."""
    name = shard.name
    meta = metadata_path(name)
    try:
        table = pq.read_table(io.BytesIO(folder.storage.read_bytes(meta)), columns=["row_index", "status", "image"])
    except FileNotFoundError:
        return [f"shard {name}: committed but {meta} is missing"], set()
    except (OSError, pa.ArrowException) as exc:
        return [f"shard {name}: {meta} cannot be read ({exc})"], set()
    problems: list[str] = []
    counts = Counter(table.column("row_index").to_pylist())
    if sum(counts.values()) != shard.rows or len(counts) != shard.rows:
        problems.append(f"shard {name}: {sum(counts.values())} metadata rows for {shard.rows} planned rows")
    twice = [i for i, c in counts.items() if c > 1]
    if twice:
        problems.append(f"shard {name}: rows with more than one metadata row: {sorted(twice)[:5]}")
    ok = [r for r in table.to_pylist() if r["status"] == "ok"]
    shard_problems, known = layout.check_shard(folder.storage, name, ok)
    return problems + shard_problems, known


def verify(folder: OutputFolder) -> Verdict:
    """Check every committed shard against the plan and its layout; list what is wrong."""
    storage = folder.storage
    plan = folder.read_plan()
    if plan is None:
        return Verdict([f"{folder.root}: no plan ({PLAN}); not an sdbatch output"], [], 0)
    layout = layout_named(plan.options.layout)
    done, damaged_markers = folder.markers(plan.job_id)
    problems: list[str] = []
    uncommitted: list[str] = []
    damaged: list[str] = []
    retrying: set[str] = {name for name, stats in done.items() if stats.retryable}
    known: set[str] = set()  # files the committed shards account for
    for shard in plan.shards:
        name = shard.name
        if name not in done:
            uncommitted.append(name)
            if name in damaged_markers:
                problems.append(f"shard {name}: {damaged_markers[name]}: not a commit (run the same command "
                                "again to redo the shard)")
            continue
        shard_problems, shard_files = check_committed_shard(folder, layout, shard)
        if shard_problems:
            damaged.append(name)
        problems.extend(shard_problems)
        known |= shard_files
    for path in storage.list(layout.prefix):
        if path in known:
            continue
        shard = path.split("/")[1].removesuffix(".tar") if "/" in path else ""
        if shard in uncommitted or shard in retrying:
            continue  # an interrupted attempt's, replaced when the shard is run again
        problems.append(f"stray file {path}: no ok metadata row refers to it")
    planned = {s.name for s in plan.shards}
    for path in storage.list(METADATA):
        shard = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        if shard not in planned:
            problems.append(f"stray file {path}: not a planned shard's metadata")
    problems.extend(f"partial file {p} left by an interrupted write" for p in storage.partial_writes()
                    if not uncommitted)
    return Verdict(problems, uncommitted, len(plan.shards), damaged, sum(done[s].retryable for s in retrying))
