"""Faults a bad night brings (issue 14): storage that fails for a while, a second driver, a full
disk, an unwritable OUT, a lost plan, an unexpected exception, a model that is not a diffusers
pipeline, control characters in prompts. Each ends in one clear line and the right exit code, and
nothing is lost, doubled or left partial."""

from __future__ import annotations

import json
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from helpers import invoke, write_manifest
from sdbatch.jobs.store.storage import LocalStorage, StorageError


def manifest_of(path: Path, rows: int, prompt: str = "a fox", **extra) -> Path:
    return write_manifest(path, {"id": [f"r{i}" for i in range(rows)], "prompt": [f"{prompt} {i}" for i in range(rows)],
                                 "steps": [1] * rows, "width": [16] * rows, "height": [16] * rows, **extra})


def run_args(manifest: Path, out: Path, model: str, *more: str) -> list[str]:
    return ["run", str(manifest), "--model", model, "--out", str(out), "--device", "cpu", "--executor", "local", *more]


def metadata(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()}


def marker(out: Path, shard: str) -> dict:
    return json.loads((out / "_job" / "shards" / f"{shard}.json").read_text())


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


# -- storage that fails for a while -----------------------------------------------------------
def test_rows_that_failed_for_a_storage_reason_are_retried_until_done(tiny_base, tmp_path, monkeypatch):
    manifest = manifest_of(tmp_path / "m.parquet", 4)
    out = tmp_path / "out"
    args = run_args(manifest, out, tiny_base, "--shard-size", "2")
    original = LocalStorage.write_bytes
    failures = {"left": 1}

    def flaky(self, relpath, data):  # the first image write fails, as a full or unmounted disk would
        if relpath.endswith(".png") and failures["left"]:
            failures["left"] -= 1
            raise StorageError(f"{relpath}: cannot write: No space left on device")
        return original(self, relpath, data)

    monkeypatch.setattr(LocalStorage, "write_bytes", flaky)
    first = invoke(*args)
    assert first.exit_code == 3, first.output
    assert "incomplete: 1 rows failed for a storage reason" in first.output
    assert "run the same command again to retry them" in first.output
    (failed,) = [r for r in metadata(out).values() if r["status"] == "error"]
    assert failed["error_kind"] == "storage" and "No space left on device" in failed["error"]
    shard = failed["shard"]
    assert invoke("status", str(out)).exit_code == 3
    verified = invoke("verify", str(out))
    assert verified.exit_code == 3 and "storage reason" in verified.output, verified.output

    def interrupted(self, relpath, data):  # the redo stops half way: the earlier commit stays whole
        if relpath.endswith(".png"):
            raise KeyboardInterrupt
        return original(self, relpath, data)

    monkeypatch.setattr(LocalStorage, "write_bytes", interrupted)
    assert invoke(*args).exit_code == 130
    assert marker(out, shard)["errors"] == {"storage": 1}
    assert invoke("verify", str(out)).exit_code == 3  # sound, still to retry

    monkeypatch.setattr(LocalStorage, "write_bytes", original)
    last = invoke(*args)
    assert last.exit_code == 0, last.output
    assert "(2 already done)" in last.output  # the other shard was not redone
    rows = metadata(out)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
    assert marker(out, shard)["errors"] == {} and invoke("verify", str(out)).exit_code == 0
    assert invoke("run", *args[1:]).exit_code == 0  # and now nothing is left to do


# -- one driver at a time ---------------------------------------------------------------------
def plant_lease(out: Path, host: str, pid: int, heartbeat: float) -> None:
    (out / "_job").mkdir(parents=True, exist_ok=True)
    (out / "_job" / "lease.json").write_text(json.dumps(
        {"host": host, "pid": pid, "started": heartbeat, "heartbeat": heartbeat, "token": "t"}))


def test_a_live_drivers_lease_refuses_a_second_driver_and_a_dead_ones_is_taken_over(tiny_base, tmp_path):
    manifest = manifest_of(tmp_path / "m.parquet", 1)
    host = socket.gethostname()
    for i, (holder, pid) in enumerate([(host, os.getpid()), ("other-host", 1)]):
        out = tmp_path / f"live{i}"
        plant_lease(out, holder, pid, time.time())
        refused = invoke(*run_args(manifest, out, tiny_base))
        assert refused.exit_code == 2, refused.output
        (line,) = error_lines(refused.output)
        assert f"is in use by another sdbatch run (pid {pid} on {holder}, heartbeat 0s ago)" in line
        assert not (out / "_job" / "plan.json").exists()  # refused before touching OUT

    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    for name, (holder, pid, beat) in {"dead": (host, gone.pid, time.time()),
                                      "stale": ("other-host", 1, time.time() - 3600)}.items():
        out = tmp_path / name
        plant_lease(out, holder, pid, beat)
        taken = invoke(*run_args(manifest, out, tiny_base))
        assert taken.exit_code == 0, taken.output
        assert "taking over the lease of a run that died" in taken.output
        assert not (out / "_job" / "lease.json").exists()  # given back at the end


def test_two_drivers_at_once_the_second_is_refused_while_the_first_beats(tiny_base, tmp_path, monkeypatch):
    from sdbatch.jobs.store import lease
    from sdbatch.jobs.driver import RunRequest, run_job
    from sdbatch.jobs.worker.worker_config import WorkerConfig

    monkeypatch.setattr(lease, "HEARTBEAT_SECONDS", 0.05)
    manifest = manifest_of(tmp_path / "m.parquet", 1)
    out = tmp_path / "out"
    working, finish = threading.Event(), threading.Event()

    class Busy:  # an executor that holds the job until told to finish
        def run(self, shards, job_id, tracker):
            working.set()
            finish.wait(60)

    first = threading.Thread(target=run_job, args=(RunRequest(str(manifest), str(out), tiny_base, WorkerConfig()),
                                                   lambda folder, models, worker: Busy()), daemon=True)
    first.start()
    try:
        assert working.wait(60)
        beat = json.loads((out / "_job" / "lease.json").read_text())["heartbeat"]
        second = invoke(*run_args(manifest, out, tiny_base))
        assert second.exit_code == 2 and f"pid {os.getpid()} on {socket.gethostname()}" in second.output
        deadline = time.monotonic() + 30
        while json.loads((out / "_job" / "lease.json").read_text())["heartbeat"] == beat:
            assert time.monotonic() < deadline, "the heartbeat was never refreshed"
            time.sleep(0.02)
    finally:
        finish.set()
        first.join(60)
    assert not (out / "_job" / "lease.json").exists()
    assert invoke(*run_args(manifest, out, tiny_base)).exit_code == 0  # the first left; the next one runs


# -- OUT and the disk ---------------------------------------------------------------------------
def test_an_unwritable_out_or_one_under_a_file_is_refused_in_one_line_before_work(tiny_base, tmp_path):
    manifest = manifest_of(tmp_path / "m.parquet", 1)
    (tmp_path / "file").write_text("not a folder")
    outs = [tmp_path / "file" / "out"]
    if os.geteuid() == 0:  # root writes through permissions: a kernel filesystem refuses it instead
        outs.append(Path("/sys/sdbatch-out" if Path("/sys").is_dir() else "/proc/sdbatch-out"))
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        outs.append(tmp_path / "ro" / "out")
    for out in outs:
        result = invoke(*run_args(manifest, out, tiny_base))
        assert result.exit_code == 2, result.output
        (line,) = error_lines(result.output)
        assert line.startswith(f"error: --out {out}") and "Traceback" not in result.output, result.output


@pytest.mark.parametrize("limit, code, words", [(4 * 1024, 2, "cannot write the plan: "), (64 * 1024, 3, "")],
                         ids=["planning", "committing"])
def test_a_full_disk_is_one_line_and_a_rerun_completes(tiny_base, tmp_path, limit, code, words):
    """A child process whose files may not grow past ``limit`` (RLIMIT_FSIZE: writes fail with
    EFBIG, as on a full disk). Each row's JSON carries a 6 KB label: the shard's staged rows
    (compressed) outgrow 4 KiB, its tar 64 KiB while everything before it fits."""
    rows = 16
    manifest = manifest_of(tmp_path / "m.parquet", rows, label_note=["n" * 6000] * rows)
    out = tmp_path / "out"
    args = run_args(manifest, out, tiny_base, "--layout", "webdataset")
    child = subprocess.run([sys.executable, "-m", "sdbatch.cli", *args], capture_output=True, text=True, timeout=300,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert child.returncode == code, child.stderr
    assert "Traceback" not in child.stderr + child.stdout, child.stderr
    (line,) = [line for line in child.stderr.splitlines() if line.startswith(("error:", "incomplete:"))]
    assert words in line and "File too large" in line, child.stderr
    assert not (out / "shards").exists() or not list((out / "shards").iterdir())  # nothing partial
    rerun = invoke(*args)
    assert rerun.exit_code == 0, rerun.output
    assert invoke("verify", str(out)).exit_code == 0


def test_a_lost_plan_does_not_let_another_manifest_take_the_old_shards(tiny_base, tmp_path):
    out = tmp_path / "out"
    first = manifest_of(tmp_path / "a.parquet", 2, prompt="an owl")
    assert invoke(*run_args(first, out, tiny_base)).exit_code == 0
    (out / "_job" / "plan.json").unlink()
    other = manifest_of(tmp_path / "b.parquet", 2, prompt="a cat")
    refused = invoke(*run_args(other, out, tiny_base))
    assert refused.exit_code == 2 and "committed shard(s) of another job and no plan" in refused.output
    assert invoke(*run_args(other, out, tiny_base, "--overwrite")).exit_code == 0
    assert sorted(r["prompt"] for r in metadata(out).values()) == ["a cat 0", "a cat 1"]
    assert invoke("verify", str(out)).exit_code == 0


# -- the unexpected ---------------------------------------------------------------------------
def test_an_unexpected_failure_is_one_line_naming_the_log_with_its_traceback(tiny_base, tmp_path, monkeypatch):
    from sdbatch.cli.run_command import write_traceback
    from sdbatch.manifests.remote import S3Options

    def broken(self, shard, job_id=""):
        raise RuntimeError("a bug\nwith a second line")
        yield  # noqa: unreachable - a generator, as the real one

    monkeypatch.setattr("sdbatch.jobs.worker.shard_worker.ShardWorker.run_shard", broken)
    out = tmp_path / "out"
    result = invoke(*run_args(manifest_of(tmp_path / "m.parquet", 1), out, tiny_base))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = error_lines(result.output)
    assert "error: unexpected failure: RuntimeError: a bug (the full traceback is in " in line
    log = Path(re.search(r"traceback is in (.+?)\)", line).group(1))
    assert log.parent == out / "_job" / "logs"
    assert "Traceback" in log.read_text() and "a bug\nwith a second line" in log.read_text()
    assert not (out / "_job" / "lease.json").exists()
    elsewhere = Path(write_traceback("/proc/no/such/out", S3Options(), "the text"))  # OUT unusable: a temp file
    assert elsewhere.read_text() == "the text"
    elsewhere.unlink()


def test_a_ctrl_c_while_a_shard_commits_lands_after_its_marker(tiny_base, tmp_path, monkeypatch):
    """Ctrl-C just after a shard's images were put in place: the commit finishes (metadata, marker)
    before the interrupt, so no reader sees images without their marker, and the summary counts it."""
    import signal

    put_in_place = LocalStorage.replace_folder

    def then_ctrl_c(self, source, target):
        put_in_place(self, source, target)
        if target.startswith("images/00001"):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(LocalStorage, "replace_folder", then_ctrl_c)
    out = tmp_path / "out"
    args = run_args(manifest_of(tmp_path / "m.parquet", 6), out, tiny_base, "--shard-size", "2")
    result = invoke(*args)
    assert result.exit_code == 130, result.output
    shards = sorted(p.name for p in (out / "images").iterdir())
    assert shards == ["00000", "00001"] and marker(out, "00001")["ok"] == 2
    assert (out / "metadata" / "00001.parquet").exists()
    summary = json.loads((out / "_job" / "summary.json").read_text())
    assert summary["interrupted"] and summary["generated"] == 4
    monkeypatch.setattr(LocalStorage, "replace_folder", put_in_place)
    assert invoke(*args).exit_code == 0 and invoke("verify", str(out)).exit_code == 0
    assert sorted(metadata(out)) == [f"r{i}" for i in range(6)]


@pytest.mark.parametrize("index", [{"_class_name": "FluxPipeline"}, {"_class_name": ["os", "system"]}, []])
def test_a_model_that_is_not_a_stable_diffusion_pipeline_is_refused_in_one_line(tmp_path, index):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps(index))
    manifest = manifest_of(tmp_path / "m.parquet", 1)
    for args in (run_args(manifest, tmp_path / "out", str(model)), ["validate", str(manifest), "--model", str(model)]):
        result = invoke(*args)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "model_index.json" in result.output
    assert not (tmp_path / "out").exists()


def test_parameters_text_holds_no_control_characters_and_the_metadata_keeps_the_exact_prompt(tiny_base, tmp_path):
    prompt = "a fox\x00\nNegative prompt: evil\r\nSteps: 99\u2028end"
    negative = "blurry\x07\nugly"
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": [prompt], "negative_prompt": [negative],
                                                       "steps": [1], "width": [16], "height": [16]})
    out = tmp_path / "out"
    assert invoke(*run_args(manifest, out, tiny_base)).exit_code == 0
    (row,) = metadata(out).values()
    assert row["prompt"] == prompt and row["negative_prompt"] == negative
    text = Image.open(out / row["image"]).info["parameters"]
    lines = text.split("\n")
    assert lines[:2] == ["a fox  Negative prompt: evil  Steps: 99 end", "Negative prompt: blurry  ugly"]
    assert len(lines) == 3 and lines[2].startswith("Steps: 1, ")
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]", text)
    assert np.asarray(Image.open(out / row["image"])).shape == (16, 16, 3)


@pytest.mark.parametrize("layout", ["files", "webdataset"])
def test_labels_named_like_metadata_columns_and_map_labels_run_and_verify(tiny_base, tmp_path, layout):
    import pyarrow as pa

    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a fox"], "steps": [1], "width": [16], "height": [16],
        "status": ["s"], "manifest_status": ["ms"], "file_name": ["f"], "manifest_file_name": ["mf"],
        "attrs": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64()))})
    out = tmp_path / "out"
    args = run_args(manifest, out, tiny_base, "--layout", layout)
    assert invoke(*args).exit_code == 0
    (row,) = metadata(out).values()
    assert (row["status"], row["manifest_status"], row["manifest_manifest_status"]) == ("ok", "s", "ms")
    assert (row["file_name"], row["manifest_file_name"], row["attrs"]) == ("f", "mf", [("k", 1)])
    assert invoke("verify", str(out)).exit_code == 0
    assert invoke(*args).exit_code == 0  # and every rerun
