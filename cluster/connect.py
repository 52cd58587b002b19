"""Connecting to Ray: join a cluster (``--address`` / ``RAY_ADDRESS``), use the instance this process
already started, or start a local one (and stop it again when the job ends)."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    nodes: int
    cpus: float
    gpus: float
    started_here: bool  # this process started Ray (and stops it when the job ends)


def connect(address: str | None, verbose: bool = False) -> ClusterInfo:
    """Join ``address`` (or ``RAY_ADDRESS``); with neither, start a local Ray instance. A process that
    already called ``ray.init`` (a test, a notebook) keeps its instance."""
    import ray

    if not verbose:  # importing ray set its logger up; its start-up notices are not the user's business
        logging.getLogger("ray").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS") or None
    started = False
    if not ray.is_initialized():
        # Ray installs its own SIGTERM handler, which aborts the driver; ours stops the job cleanly
        # (committed shards kept, a summary written), as a preempted pod needs.
        sigterm = signal.getsignal(signal.SIGTERM)
        kwargs = dict(logging_level=logging.INFO if verbose else logging.ERROR, log_to_driver=verbose,
                      configure_logging=verbose)
        if address is None:
            # "local" always starts a fresh instance; plain ray.init() would join whatever
            # `ray start` last left on this machine (or hang on its stale address).
            kwargs.update(include_dashboard=False)
        ray.init(address=address or "local", **kwargs)
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
        started = True
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    info = ClusterInfo(nodes=nodes, cpus=resources.get("CPU", 0.0), gpus=resources.get("GPU", 0.0), started_here=started)
    log.info("ray: %d node(s), %.0f CPUs, %.0f GPUs%s", info.nodes, info.cpus, info.gpus,
             " (local instance)" if started and address is None else "")
    return info


def disconnect(info: ClusterInfo) -> None:
    import ray

    if info.started_here and ray.is_initialized():
        ray.shutdown()
