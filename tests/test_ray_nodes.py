"""A Ray cluster of two nodes on this machine (Ray's own test cluster): a node lost mid-job, whose
actors all die with it, while the other node's actor finishes every row exactly once; and a local
--out refused on several nodes unless it is a shared filesystem."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from helpers import invoke, write_manifest
from helpers import images_by_id, markers

ROWS = 24


@pytest.fixture(scope="module")
def cluster():
    """The cluster's processes are this test's children; the sdbatch drivers join it from processes of
    their own (a process that was connected to another Ray instance before cannot reliably join
    a second one)."""
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = nodes.add_node(num_cpus=1)
    try:
        yield nodes, worker
    finally:
        nodes.shutdown()


def sdbatch(address: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdbatch.cli", "run", *args, "--address", address],
                          capture_output=True, text=True, timeout=240)


@pytest.fixture
def manifest(tmp_path):
    return write_manifest(tmp_path / "m.parquet", {
        "id": [f"row-{i:03d}" for i in range(ROWS)], "prompt": [f"object {i}" for i in range(ROWS)],
        "steps": [100] * ROWS,
    })


def test_a_local_out_is_refused_on_several_nodes_unless_shared(cluster, manifest, tiny_base, tmp_path):
    result = sdbatch(cluster[0].address, str(manifest), "--out", str(tmp_path / "out"), "--model", tiny_base,
                     "--device", "cpu")
    assert result.returncode == 2, result.stderr
    assert "2 nodes" in result.stderr and "--shared-fs" in result.stderr


def test_a_lost_node_costs_no_row(cluster, manifest, tiny_base, tmp_path):
    nodes, worker = cluster
    out = tmp_path / "out"

    def lose_the_worker_node():
        deadline = time.monotonic() + 240
        while markers(out) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        nodes.remove_node(worker)  # its actor, and everything it was running, dies with it

    threading.Thread(target=lose_the_worker_node, daemon=True).start()
    result = sdbatch(nodes.address, str(manifest), "--out", str(out), "--model", tiny_base, "--device", "cpu",
                     "--actors", "2", "--shard-size", "2", "--batch-size", "2", "--shared-fs")
    assert result.returncode == 0, result.stderr
    assert "node is gone" in result.stderr
    assert invoke("verify", str(out)).exit_code == 0
    images_by_id(out, ROWS)  # every row once, ok
