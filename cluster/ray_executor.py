"""The ``ray`` executor: shards fan out to ``GeneratorActor``s, a bounded number in flight per actor.

Ray Core restarts an actor that dies (``max_restarts``), reloading its models, and its ``ready()``
call is retried until the actor is back (``max_task_retries=-1``): that call is how the driver
learns what became of an actor. Shard attempts themselves are not retried by Ray (a streaming task
that already streamed cannot be, reliably); the driver decides, per shard:

* its actor came back as a new process (it died): the attempt failed; the shard runs again, on any
  actor, up to ``shard_retries`` times. Two shards in flight die together, so the shard beside a
  poisonous one spends its retries too: a shard out of retries runs once more alone on an actor,
  where it either commits or, killing its actor again, is given up (its rows committed as error
  rows naming the cause) while the actor goes on with other work;
* its actor came back as the same process (``ActorUnavailableError``: a network blip): the shard
  may still be running there, so it is asked for again on that same actor only, where the worker
  waits for the first attempt and does not redo a committed shard;
* its actor is dead for good (restarts spent) or its node is gone (the actor is then replaced): the
  shard goes to another actor, up to ``shard_retries`` times.

An actor gets work as soon as its models are loaded, however late it starts (a node joining, an
autoscaler). Every actor counts its own deaths (Ray does); no death is counted twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from sdbatch.jobs import defaults
from sdbatch.jobs.driver import JobRefused
from sdbatch.jobs.executor import ExecutorStopped, ShardTracker
from sdbatch.jobs.store.outdir import OutputFolder
from sdbatch.jobs.store.storage import LocalStorage
from sdbatch.jobs.worker.worker_config import WorkerConfig
from sdbatch.pipeline.model_files import ModelLoadError

from .actors import ActorReady, GeneratorActor
from .connect import ClusterInfo, connect, disconnect

log = logging.getLogger(__name__)

WAIT_SECONDS = 1.0
WAITING_NOTE_SECONDS = 30.0
NODE_CHECK_SECONDS = 2.0
KILL_WAIT_SECONDS = 10.0  # how long a stop waits for killed actors to be gone


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: RAY_ADDRESS, else a fresh local Ray instance
    actors: int | None = None  # None: one per GPU, or 1 on a machine without GPUs
    gpus_per_actor: float = 1.0
    shard_retries: int = defaults.SHARD_RETRIES
    actor_restarts: int = defaults.ACTOR_RESTARTS
    inflight_per_actor: int = 2  # one shard generates while the other writes and commits
    shared_fs: bool = False  # a local --out path is on a filesystem every node sees
    verbose: bool = False


@dataclass(frozen=True)
class ActorPlan:
    count: int
    num_cpus: float
    num_gpus: float
    threads: int


def plan_actors(info: ClusterInfo, config: RayConfig) -> ActorPlan:
    """One actor per GPU by default; on a cluster without GPUs, ``--actors`` CPU actors (default 1)
    each given an equal share of the CPUs."""
    if info.gpus > 0:
        count = config.actors or max(1, int(info.gpus // config.gpus_per_actor))
        return ActorPlan(count, num_cpus=1, num_gpus=config.gpus_per_actor, threads=2)
    count = config.actors or 1
    share = max(1, int(info.cpus // count))
    return ActorPlan(count, num_cpus=share, num_gpus=0, threads=share)


@dataclass
class Slot:
    """One actor as the driver sees it."""

    name: str
    handle: object
    ready: bool = False  # its models are loaded and it is known to be up
    dead: bool = False
    pid: int | None = None
    node_id: str | None = None
    inflight: int = 0
    alone: bool = False  # running a shard on its own (see the module doc)
    failed: list = field(default_factory=list)  # attempts that ended with an actor error, awaiting ready()
    pinned: deque = field(default_factory=deque)  # shards to ask for again on this actor only


@dataclass
class Attempt:
    shard: str
    slot: Slot
    alone: bool = False


class RayExecutor:
    def __init__(self, folder: OutputFolder, worker: WorkerConfig, config: RayConfig, models: list[str]):
        self.folder = folder
        self.worker = worker
        self.config = config
        self.models = models
        self.slots: list[Slot] = []
        self.streams: dict = {}  # ObjectRefGenerator -> Attempt
        self.calls: dict = {}  # ready() ObjectRef -> Slot
        self.queue: deque = deque()
        self.alone: deque = deque()  # shards out of retries, to run once more alone
        self.failures = Counter()  # attempts of a shard that died with its actor
        self.moves = Counter()  # times a shard left an actor that was dead for good
        self.job_id = ""
        self.tracker: ShardTracker | None = None

    # -- start ---------------------------------------------------------------------------------
    def _check_cluster(self, info: ClusterInfo) -> None:
        if info.nodes > 1 and isinstance(self.folder.storage, LocalStorage) and not self.config.shared_fs:
            raise JobRefused(
                f"the Ray cluster has {info.nodes} nodes and --out {self.folder.root} is a local path: each "
                "node would write to its own disk. Use an s3:// --out, or pass --shared-fs if the path is on "
                "a filesystem every node mounts.")

    def _start(self, plan: ActorPlan) -> None:
        import ray

        self._actor_cls = ray.remote(GeneratorActor).options(
            num_cpus=plan.num_cpus, num_gpus=plan.num_gpus,
            max_restarts=self.config.actor_restarts, max_task_retries=-1,  # ready() waits out a restart
            max_concurrency=self.config.inflight_per_actor + 1,  # shards in flight, and ready()
        )
        self._threads = plan.threads
        for i in range(plan.count):
            self._add_actor(f"actor-{i}")
        log.info("starting %d actor(s) (%s each), loading %d model(s)", plan.count,
                 f"{plan.num_gpus:g} GPU" if plan.num_gpus else f"{plan.num_cpus:g} CPUs", len(self.models))

    def _add_actor(self, name: str) -> None:
        handle = self._actor_cls.remote(name, self.folder.root, self.worker, self.models, self._threads,
                                        self.config.verbose)
        slot = Slot(name, handle)
        self.slots.append(slot)
        self.calls[handle.ready.remote()] = slot

    # -- the loop ------------------------------------------------------------------------------
    def run(self, shards: list[str], job_id: str, tracker: ShardTracker) -> None:
        info = connect(self.config.address, self.config.verbose)
        self.queue, self.job_id, self.tracker = deque(shards), job_id, tracker
        try:
            self._check_cluster(info)
            self._start(plan_actors(info, self.config))
            self._loop()
        finally:
            self._stop()
            disconnect(info)

    def _busy(self) -> bool:
        return bool(self.queue or self.alone or self.streams or any(s.failed or s.pinned for s in self.slots))

    def _loop(self) -> None:
        import ray

        last_note = last_nodes = time.monotonic()
        while self._busy():
            if time.monotonic() - last_nodes > NODE_CHECK_SECONDS:
                last_nodes = time.monotonic()
                self._replace_lost()
            self._dispatch()
            if not self.streams and not self.calls:
                left = len(self.queue) + len(self.alone)
                raise ExecutorStopped(f"every actor died for good; {left:,} shard(s) left for the next run")
            done, _ = ray.wait([*self.calls, *self.streams], num_returns=1, timeout=WAIT_SECONDS)
            for item in done:
                if item in self.calls:
                    self._on_ready(self.calls.pop(item), item)
                else:
                    self._on_stream(item)
            if time.monotonic() - last_note > WAITING_NOTE_SECONDS and not any(s.ready for s in self.slots):
                last_note = time.monotonic()
                log.info("waiting for actors to start (resources, model loads)")

    def _submit(self, slot: Slot, shard: str, alone: bool = False) -> None:
        stream = slot.handle.run_shard.options(num_returns="streaming", max_task_retries=0).remote(shard, self.job_id)
        self.streams[stream] = Attempt(shard, slot, alone)
        slot.inflight += 1
        slot.alone = alone

    def _dispatch(self) -> None:
        live = sorted((s for s in self.slots if s.ready and not s.dead and not s.alone), key=lambda s: s.inflight)
        for slot in live:
            while slot.pinned and slot.inflight < self.config.inflight_per_actor:
                self._submit(slot, slot.pinned.popleft())
            if self.alone and slot.inflight == 0:
                self._submit(slot, self.alone.popleft(), alone=True)
                continue
            while self.queue and slot.inflight < self.config.inflight_per_actor:
                self._submit(slot, self.queue.popleft())

    def _on_stream(self, stream) -> None:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        attempt: Attempt = self.streams[stream]
        try:
            event = ray.get(next(stream))
        except StopIteration:
            self._ended(self.streams.pop(stream))
            return
        except RayActorError as exc:  # died, restarting, or unreachable: ask the actor what it is now
            self._ended(self.streams.pop(stream))
            self.tracker.forget(attempt.shard)
            slot = attempt.slot
            slot.failed.append((attempt, _cause(exc)))
            if slot.dead:
                self._settle(slot, restarted=False, dead=True)
            elif slot.ready:  # no more work for it until ready() answers
                slot.ready = False
                self.calls[slot.handle.ready.remote()] = slot
            return
        except RayTaskError as exc:  # the shard raised (its storage failed): left for the next run
            self._ended(self.streams.pop(stream))
            cause = _cause(exc)
            log.error("shard %s failed: %s", attempt.shard, cause)
            self.tracker.abandoned(attempt.shard, cause)
            return
        if self.tracker.on_event(attempt.shard, event) is not None:  # its commit, the stream's last event:
            self._ended(self.streams.pop(stream))  # a stop from now on leaves it out of the shards in flight

    @staticmethod
    def _ended(attempt: Attempt) -> None:
        attempt.slot.inflight -= 1
        if attempt.alone:
            attempt.slot.alone = False

    def _on_ready(self, slot: Slot, ref) -> None:
        """An actor answered ready() (first start, or after an attempt failed on it), or is dead."""
        import ray
        from ray.exceptions import RayActorError

        try:
            ready: ActorReady = ray.get(ref)
        except RayActorError as exc:
            slot.dead = True
            log.warning("%s is gone for good: %s", slot.name, _cause(exc))
            self._settle(slot, restarted=False, dead=True)
            return
        if ready.error:
            raise ModelLoadError(ready.error)
        restarted = slot.pid is not None and ready.pid != slot.pid
        if slot.pid is None:
            log.info("%s ready: pid %d on %s (%s), models loaded in %.1fs", ready.name, ready.pid, ready.host,
                     ready.device, ready.load_seconds)
        elif restarted:
            log.warning("%s restarted (pid %d, was %d): back in service", slot.name, ready.pid, slot.pid)
        slot.pid, slot.node_id, slot.ready = ready.pid, ready.node_id, True
        if self.tracker.result.ready_at is None:
            self.tracker.result.ready_at = time.perf_counter()
        self._settle(slot, restarted=restarted, dead=False)

    def _settle(self, slot: Slot, restarted: bool, dead: bool) -> None:
        """Decide the fate of the attempts that failed on ``slot`` (see the module doc)."""
        failed, slot.failed = slot.failed, []
        if dead:  # shards asked for again on it go elsewhere
            self.queue.extend(slot.pinned)
            slot.pinned.clear()
        for attempt, cause in failed:
            shard = attempt.shard
            if not dead and not restarted:  # a blip: it may still be running there
                slot.pinned.append(shard)
            elif dead and self.moves[shard] < self.config.shard_retries:
                self.moves[shard] += 1
                self.queue.append(shard)
            elif dead:
                self._give_up(shard, f"{slot.name} died for good while running shard {shard}: {cause}")
            else:
                self.failures[shard] += 1
                log.warning("%s died while running shard %s (attempt %d%s): %s", slot.name, shard,
                            self.failures[shard], ", alone" if attempt.alone else "", cause)
                if attempt.alone:
                    self._give_up(shard, f"{slot.name} died every time it ran shard {shard} "
                                         f"({self.failures[shard]} attempts, the last alone): {cause}")
                elif self.failures[shard] > self.config.shard_retries:
                    self.alone.append(shard)
                else:
                    self.queue.append(shard)

    def _give_up(self, shard: str, cause: str) -> None:
        log.error("giving up shard %s: its rows are committed as error rows", shard)
        self.tracker.on_event(shard, self.folder.commit_failed(shard, self.job_id, cause))

    def _replace_lost(self) -> None:
        """Actors on nodes that are gone: killed (their shards fail over) and started anew."""
        import ray

        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        for slot in [s for s in self.slots if s.node_id and not s.dead and s.node_id not in alive]:
            log.warning("%s's node is gone: its shards go to the other actors, and a new actor starts where "
                        "the cluster has room", slot.name)
            ray.kill(slot.handle, no_restart=True)
            slot.node_id = None  # ready() now fails: the actor is dead for good
            if slot.ready:
                slot.ready = False
                self.calls[slot.handle.ready.remote()] = slot
            self._add_actor(f"{slot.name}'")

    # -- stop ----------------------------------------------------------------------------------
    def _stop(self) -> None:
        """Kill every actor and wait until they are dead: ``ray.kill`` returns at once, and an actor
        killed mid-commit may still write its marker, which must not happen after ``run`` returns
        (the summary counts commits; a rerun may start). A shard in flight that committed counts as
        done; what one that did not wrote is removed."""
        import ray

        for slot in self.slots:
            ray.kill(slot.handle, no_restart=True)
        inflight = {a.shard for a in self.streams.values()}
        if not inflight:
            return
        probes = [slot.handle.ready.options(max_task_retries=0).remote() for slot in self.slots]
        ray.wait(probes, num_returns=len(probes), timeout=KILL_WAIT_SECONDS)  # a dead actor's probe fails at once
        for shard in sorted(inflight):
            marker = self.folder.committed_shard(shard, self.job_id)
            self.tracker.settle(shard, marker)
            if marker is None:  # killed before its marker, perhaps after its images were put in place
                self.folder.discard_uncommitted(shard)


def _cause(exc: BaseException) -> str:
    """The first line of a Ray error's message, without Ray's framing."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and str(cause):
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1]}"
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
