"""Distributed jobs on a real local Ray instance with two CPU actors: completion, equality with the
local executor, and exactly-once outputs when the driver or an actor is killed mid-job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.dataset as ds
import pytest
from PIL import Image

from conftest import write_manifest

ROWS = 48
CLI = [sys.executable, "-m", "sdbatch.jobs.cli"]


def sdbatch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def images_by_id(out: Path) -> dict[str, np.ndarray]:
    rows = ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()
    assert len(rows) == ROWS and len({r["id"] for r in rows}) == ROWS
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["error"]][:3]
    return {r["id"]: np.asarray(Image.open(out / r["image"])).astype(int) for r in rows}


def assert_same_images(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(np.abs(a[k] - b[k]).max() for k in a)
    assert worst <= 1, f"max uint8 difference {worst}"


def markers(out: Path) -> int:
    folder = out / "_job" / "shards"
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"job ended early: {proc.stdout.read()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def job(tiny_base, tmp_path_factory):
    """A manifest and the local executor's images for it (the reference)."""
    root = tmp_path_factory.mktemp("rayjob")
    manifest = write_manifest(root / "m.parquet", {
        "id": [f"row-{i:03d}" for i in range(ROWS)],
        "prompt": [f"a picture of object {i % 7}" for i in range(ROWS)],
        "seed": [100 + i for i in range(ROWS)],
        "guidance_scale": [7.5, 1.0, 4.0][:1] * ROWS,
        "steps": [25] * ROWS,
        "scheduler": ["euler_a", "ddim"] * (ROWS // 2),
    })
    common = ["--model", tiny_base, "--device", "cpu", "--shard-size", "4", "--batch-size", "4"]
    ref = root / "ref"
    result = sdbatch("run", str(manifest), "--out", str(ref), "--executor", "local", *common)
    assert result.returncode == 0, result.stderr
    return manifest, common, images_by_id(ref)


def test_two_actor_job_completes_verifies_and_equals_local(job, tmp_path):
    manifest, common, reference = job
    out = tmp_path / "out"
    result = sdbatch("run", str(manifest), "--out", str(out), "--actors", "2", *common)
    assert result.returncode == 0, result.stderr
    assert sdbatch("verify", str(out)).returncode == 0
    assert_same_images(images_by_id(out), reference)
    summary = (out / "_job" / "summary.json").read_text()
    assert '"actor-0"' in summary and '"actor-1"' in summary


def test_driver_killed_mid_job_then_rerun_gives_exactly_once(job, tmp_path):
    manifest, common, reference = job
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--actors", "2", *common]
    proc = start(*args)
    wait_for(lambda: markers(out) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= markers(out) < ROWS // 4, "the kill should land mid-job"
    rerun = sdbatch(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "already done" in rerun.stdout
    assert sdbatch("verify", str(out)).returncode == 0
    assert_same_images(images_by_id(out), reference)


def _actor_pids(driver: subprocess.Popen) -> list[int]:
    """This job's actors only: the Ray instance the driver started is its descendant (other jobs on
    a shared machine have actors of their own, not ours to kill)."""
    pids = []
    for proc in psutil.Process(driver.pid).children(recursive=True):
        try:
            if "GeneratorActor" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def test_actor_killed_mid_shard_job_still_completes_exactly_once(job, tmp_path):
    manifest, common, reference = job
    out = tmp_path / "out"
    proc = start("run", str(manifest), "--out", str(out), "--actors", "2", *common)
    wait_for(lambda: markers(out) >= 1 and len(_actor_pids(proc)) >= 2, proc)
    os.kill(_actor_pids(proc)[0], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "died while running shard" in output
    assert sdbatch("verify", str(out)).returncode == 0
    assert_same_images(images_by_id(out), reference)


def test_verify_finds_a_missing_image_and_a_stray_file(job, tmp_path):
    manifest, common, _ = job
    out = tmp_path / "out"
    assert sdbatch("run", str(manifest), "--out", str(out), "--executor", "local", *common).returncode == 0
    victim = next((out / "images").rglob("*.png"))
    victim.rename(out / "images" / "stray.png")
    result = sdbatch("verify", str(out))
    assert result.returncode == 1
    assert "is missing" in result.stdout and "stray file images/stray.png" in result.stdout


def test_rerun_with_other_options_is_refused(job, tmp_path):
    manifest, common, _ = job
    out = tmp_path / "out"
    assert sdbatch("run", str(manifest), "--out", str(out), "--executor", "local", *common).returncode == 0
    other = [a if a != "4" else "8" for a in common]  # shard size 4 -> 8
    refused = sdbatch("run", str(manifest), "--out", str(out), "--executor", "local", *other)
    assert refused.returncode == 2 and "shard_size" in refused.stderr
    again = sdbatch("run", str(manifest), "--out", str(out), "--executor", "local", *other, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert sdbatch("verify", str(out)).returncode == 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_cleanly_and_rerun_resumes(job, tmp_path, stop):
    manifest, common, reference = job
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--executor", "local", *common]
    proc = start(*args)
    wait_for(lambda: markers(out) >= 1, proc)
    proc.send_signal(stop)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "run the same command again to resume" in output
    assert markers(out) < ROWS // 4
    assert not list((out / "_job" / "tmp").glob("*")), "partial files left behind"
    assert sdbatch("verify", str(out)).returncode == 1  # incomplete, and says so
    assert sdbatch(*args).returncode == 0
    assert sdbatch("verify", str(out)).returncode == 0
    assert_same_images(images_by_id(out), reference)
