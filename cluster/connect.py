"""Connecting to Ray: join a cluster (``--address`` / ``RAY_ADDRESS``) or start a local instance."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterInfo:
    nodes: int
    cpus: float
    gpus: float
    started_locally: bool


def connect(address: str | None) -> ClusterInfo:
    """Join ``address`` (or ``RAY_ADDRESS``); with neither, start a local Ray instance."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
        if address is None:
            # "local" always starts a fresh instance; plain ray.init() would join whatever
            # `ray start` last left on this machine (or hang on its stale address).
            kwargs.update(include_dashboard=False)
        ray.init(address=address or "local", **kwargs)
    resources = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    info = ClusterInfo(nodes=nodes, cpus=resources.get("CPU", 0.0), gpus=resources.get("GPU", 0.0),
                       started_locally=address is None)
    log.info("ray: %d node(s), %.0f CPUs, %.0f GPUs%s", info.nodes, info.cpus, info.gpus,
             " (local instance)" if info.started_locally else f" at {address}")
    return info


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()
