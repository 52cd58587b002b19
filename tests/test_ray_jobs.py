"""Distributed jobs on one real local Ray instance (shared by this module) with CPU actors:
completion, equality with the local executor, and exactly-once outputs when the driver or an actor
is killed mid-job, when a shard kills its actor every time, and when a model cannot load."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import invoke, write_manifest
from helpers import ACCESS_KEY, SECRET, get, keys
from helpers import images_by_id, markers

ROWS = 48
CLI = [sys.executable, "-m", "sdbatch.cli"]


@pytest.fixture(scope="module")
def ray_address(endpoint):
    """One local Ray instance for the module: in-process runs use it, subprocess runs join it. Its
    workers see the S3 test server's credentials (set in the environment before it starts)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_same_images(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(np.abs(a[k] - b[k]).max() for k in a)
    assert worst <= 1, f"max uint8 difference {worst}"


def summary(out: Path) -> dict:
    return json.loads((out / "_job" / "summary.json").read_text())


def actor_processes() -> list[psutil.Process]:
    """This test process's Ray actors (the module's Ray instance is its descendant)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "GeneratorActor" in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


def wait_for(predicate, timeout: float = 240, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc is None or proc.poll() is None, f"job ended early: {proc.stdout.read()}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


class Killer(threading.Thread):
    """Kills actor processes from outside, as the OOM killer or a preemption would: ``when(out)``
    says whether to kill now; each actor process is killed at most once."""

    def __init__(self, out: Path, when, limit: int = 1):
        super().__init__(daemon=True)
        self.out, self.when, self.limit = out, when, limit
        self.killed: list[int] = []
        self.last_kill = 0.0  # time.time() of the last kill
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and len(self.killed) < self.limit:
            for proc in actor_processes():
                if proc.pid not in self.killed and self.when(self.out, proc):
                    proc.send_signal(signal.SIGKILL)
                    self.killed.append(proc.pid)
                    self.last_kill = time.time()
                    break
            time.sleep(0.02)


@pytest.fixture(scope="module")
def job(tiny_base, tmp_path_factory):
    """A manifest and the local executor's images for it (the reference)."""
    root = tmp_path_factory.mktemp("rayjob")
    manifest = write_manifest(root / "m.parquet", {
        "id": [f"row-{i:03d}" for i in range(ROWS)],
        "prompt": [f"a picture of object {i % 7}" for i in range(ROWS)],
        "seed": [100 + i for i in range(ROWS)],
        "guidance_scale": [[7.5, 1.0, 4.0][i % 3] for i in range(ROWS)],
        "steps": [25] * ROWS,
        "scheduler": ["euler_a", "ddim"] * (ROWS // 2),
    })
    common = ["--model", tiny_base, "--device", "cpu", "--shard-size", "4", "--batch-size", "4"]
    ref = root / "ref"
    result = invoke("run", str(manifest), "--out", str(ref), "--executor", "local", *common)
    assert result.exit_code == 0, result.output
    return manifest, common, images_by_id(ref, ROWS)


def test_two_actor_job_completes_verifies_and_equals_local(job, ray_address, tmp_path):
    manifest, common, reference = job
    out = tmp_path / "out"
    result = invoke("run", str(manifest), "--out", str(out), "--actors", "2", *common)
    assert result.exit_code == 0, result.output
    assert invoke("verify", str(out)).exit_code == 0
    assert_same_images(images_by_id(out, ROWS), reference)
    workers = summary(out)["per_worker"]
    assert sorted(name.split("@")[0] for name in workers) == ["actor-0", "actor-1"]
    assert sum(w["rows"] for w in workers.values()) == ROWS


def test_two_actors_write_to_s3(job, ray_address, endpoint, client, bucket):
    manifest, common, reference = job
    out = f"s3://{bucket}/ray"
    result = invoke("run", str(manifest), "--out", out, "--actors", "2", "--s3-endpoint-url", endpoint, *common)
    assert result.exit_code == 0, result.output
    assert invoke("verify", out, "--s3-endpoint-url", endpoint).exit_code == 0
    meta = [row for key in keys(client, bucket, "ray/metadata/")
            for row in pq.read_table(io.BytesIO(get(client, bucket, key))).to_pylist()]
    images = {r["id"]: np.asarray(Image.open(io.BytesIO(get(client, bucket, f"ray/{r['image']}")))).astype(int)
              for r in meta if r["status"] == "ok"}
    assert len(meta) == ROWS and len(images) == ROWS
    assert_same_images(images, reference)
    written = [result.output, get(client, bucket, "ray/_job/plan.json"), get(client, bucket, "ray/_job/summary.json")]
    assert not any(secret in (w if isinstance(w, bytes) else w.encode()) for w in written
                   for secret in (SECRET.encode(), ACCESS_KEY.encode()))


def test_driver_killed_mid_job_then_rerun_gives_exactly_once(job, ray_address, tmp_path):
    manifest, common, reference = job
    out = tmp_path / "out"
    args = ["run", str(manifest), "--out", str(out), "--actors", "2", *common]
    proc = start(*args, "--address", ray_address)
    wait_for(lambda: markers(out) >= 2, proc=proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= markers(out) < ROWS // 4, "the kill should land mid-job"
    wait_for(lambda: not actor_processes(), timeout=60)  # Ray ends a dead driver's actors
    rerun = invoke(*args)
    assert rerun.exit_code == 0, rerun.output
    assert "rows already done" in rerun.output
    assert invoke("verify", str(out)).exit_code == 0
    assert_same_images(images_by_id(out, ROWS), reference)


def work_after_restart(out: Path, output: str) -> list[int]:
    """Shards committed by each actor process that replaced a killed one (a restart is a new process,
    which the summary lists as actor-N@host:pid)."""
    restarts = re.findall(r"(actor-\d+) restarted \(pid (\d+), was \d+\): back in service", output)
    workers = summary(out)["per_worker"]
    return [next((w["shards"] for n, w in workers.items() if n.startswith(f"{actor}@") and n.endswith(f":{pid}")), 0)
            for actor, pid in restarts]


def test_a_killed_single_actor_is_restarted_and_the_job_completes_exactly_once(job, ray_address, tmp_path):
    manifest, common, reference = job
    out = tmp_path / "out"
    killer = Killer(out, lambda out, proc: markers(out) >= 1)
    killer.start()
    try:
        result = invoke("run", str(manifest), "--out", str(out), "--actors", "1", *common)
    finally:
        killer.stop.set()
    assert len(killer.killed) == 1
    assert result.exit_code == 0, result.output
    assert invoke("verify", str(out)).exit_code == 0
    assert_same_images(images_by_id(out, ROWS), reference)
    (shards,) = work_after_restart(out, result.output)
    assert shards >= 1  # the restarted process did work


def test_with_two_actors_the_restarted_one_gets_work_again(ray_address, tiny_base, tmp_path):
    rows = 32
    manifest = write_manifest(tmp_path / "m.parquet", {  # long enough to outlast a restart
        "id": [f"row-{i:03d}" for i in range(rows)], "prompt": [f"object {i}" for i in range(rows)],
        "steps": [200] * rows,
    })
    out = tmp_path / "out"
    killer = Killer(out, lambda out, proc: markers(out) >= 1)
    killer.start()
    try:
        result = invoke("run", str(manifest), "--out", str(out), "--actors", "2", "--model", tiny_base,
                        "--device", "cpu", "--shard-size", "2", "--batch-size", "2")
    finally:
        killer.stop.set()
    assert len(killer.killed) == 1
    assert result.exit_code == 0, result.output
    assert invoke("verify", str(out)).exit_code == 0
    images_by_id(out, rows)  # one ok row each, exactly once
    (shards,) = work_after_restart(out, result.output)
    assert shards >= 1, result.output  # the restarted actor got work again


def test_a_shard_that_kills_its_actor_every_time_is_given_up_and_the_rest_completes(ray_address, tiny_base,
                                                                                     tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {  # four slow rows: a shard of their own
        "id": [f"slow-{i}" for i in range(4)] + [f"row-{i}" for i in range(8)],
        "prompt": [f"object {i}" for i in range(12)],
        "steps": [100] * 4 + [10] * 8,
    })
    out = tmp_path / "out"

    def running_the_slow_shard(out, proc) -> bool:  # an image of it was written since the last kill
        try:
            return any(f.stat().st_mtime > killer.last_kill for f in (out / "_job" / "pending").glob("*/slow-*"))
        except FileNotFoundError:
            return False

    killer = Killer(out, running_the_slow_shard, limit=10)
    killer.start()
    try:
        # batches of one row: the shard's first image appears while its other rows still generate
        result = invoke("run", str(manifest), "--out", str(out), "--actors", "1", "--shard-retries", "1",
                        "--model", tiny_base, "--device", "cpu", "--shard-size", "4", "--batch-size", "1")
    finally:
        killer.stop.set()
    assert result.exit_code == 1, result.output  # some rows failed, each with its error row
    assert len(killer.killed) == 3  # two attempts (one retry), then one alone
    meta = ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()
    failed = sorted(r["id"] for r in meta if r["status"] == "error")
    assert failed == [f"slow-{i}" for i in range(4)]
    assert all("died every time it ran shard" in r["error"] and r["error_kind"] == "internal"
               for r in meta if r["status"] == "error")
    assert sum(r["status"] == "ok" for r in meta) == 8
    assert invoke("verify", str(out)).exit_code == 0


def test_a_model_that_cannot_load_on_the_actors_is_refused_like_on_the_local_executor(job, ray_address,
                                                                                      tiny_base, tmp_path):
    manifest, _, _ = job
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", tiny_base, str(broken)], check=True)
    (broken / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel", "block_out_channels": 7}')
    common = ["--device", "cpu", "--shard-size", "4", "--batch-size", "4"]
    outputs = {}
    for executor in ("local", "ray"):
        out = tmp_path / f"out-{executor}"
        result = invoke("run", str(manifest), "--out", str(out), "--model", str(broken), "--executor", executor,
                        *common)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        outputs[executor] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert outputs["ray"] == outputs["local"] and len(outputs["ray"]) == 1
    assert f"{broken}: failed to load" in outputs["ray"][0]
    fixed = invoke("run", str(manifest), "--out", str(tmp_path / "out-ray"), "--model", tiny_base, *common)
    assert fixed.exit_code == 0, fixed.output  # the corrected rerun runs (nothing was committed)


def test_verify_finds_a_missing_image_and_a_stray_file(job, tmp_path):
    manifest, common, _ = job
    out = tmp_path / "out"
    assert invoke("run", str(manifest), "--out", str(out), "--executor", "local", *common).exit_code == 0
    victim = next((out / "images").rglob("*.png"))
    victim.rename(out / "images" / "stray.png")
    result = invoke("verify", str(out))
    assert result.exit_code == 1
    assert "is missing" in result.output and "stray file images/stray.png" in result.output


def test_rerun_with_other_options_is_refused(job, tmp_path):
    manifest, common, _ = job
    out = tmp_path / "out"
    assert invoke("run", str(manifest), "--out", str(out), "--executor", "local", *common).exit_code == 0
    other = [a if a != "4" else "8" for a in common]  # shard size 4 -> 8
    refused = invoke("run", str(manifest), "--out", str(out), "--executor", "local", *other)
    assert refused.exit_code == 2 and "--shard-size (4 then, 8 now)" in refused.output
    again = invoke("run", str(manifest), "--out", str(out), "--executor", "local", *other, "--overwrite")
    assert again.exit_code == 0, again.output
    assert invoke("verify", str(out)).exit_code == 0


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_cleanly_and_a_rerun_resumes(job, ray_address, tmp_path, stop):
    """Both executors: the local one in its own process, the Ray one joining the module's Ray."""
    manifest, common, reference = job
    for executor in ("local", "ray"):
        out = tmp_path / executor
        args = ["run", str(manifest), "--out", str(out), "--executor", executor, *common]
        proc = start(*args, "--address", ray_address)
        wait_for(lambda: markers(out) >= 1, proc=proc)
        proc.send_signal(stop)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130, output
        assert "run the same command again to resume" in output and "Traceback" not in output
        for noise in ("torchvision", "Token authentication", "core_worker", "WARNING"):
            assert noise not in output, noise  # third-party start-up noise stays off without -v
        stopped_at = markers(out)
        time.sleep(1.0)  # nothing of the run commits after its driver has returned
        assert markers(out) == stopped_at < ROWS // 4
        assert summary(out)["interrupted"] and summary(out)["generated"] == 4 * stopped_at
        assert not list((out / "images").glob("*")) or all(  # nothing of an uncommitted shard visible
            (out / "_job" / "shards" / f"{d.name}.json").exists() for d in (out / "images").iterdir())
        verified = invoke("verify", str(out))
        assert verified.exit_code == 3 and "incomplete" in verified.output, verified.output
        assert invoke(*args).exit_code == 0
        assert invoke("verify", str(out)).exit_code == 0
        assert_same_images(images_by_id(out, ROWS), reference)


def test_a_mixed_family_manifest_runs_on_ray(ray_address, tiny_models, family_models, tmp_path):
    """SD 1.5, v-prediction and SDXL rows of every mode, batched apart, on two actors."""
    from helpers import check_mixed, mixed_columns

    manifest = write_manifest(tmp_path / "m.parquet", mixed_columns(tiny_models, family_models))
    out = tmp_path / "out"
    check_mixed(out, invoke("run", str(manifest), "--out", str(out), "--actors", "2", "--device", "cpu"))
