"""sdbatch against a real S3-compatible HTTP server on loopback (moto's server mode): manifests and
init images read from a bucket, outputs written there, verify and status on the bucket, a driver
killed mid-job resumed exactly once, multipart uploads, clear errors, and no credential anywhere
in what the job writes or logs."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from helpers import invoke, write_manifest
from helpers import ACCESS_KEY, SECRET, get, keys, put
from sdbatch.jobs.store.backends import open_storage
from sdbatch.manifests.remote import S3Options
from helpers import png

CLI = [sys.executable, "-m", "sdbatch.cli"]
ROWS = 24


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def sdbatch(*args: str, env: dict | None = None) -> Ran:
    """``sdbatch ARGS`` in this process, with ``env`` added to the environment meanwhile."""
    saved = {name: os.environ.get(name) for name in env or {}}
    os.environ.update(env or {})
    try:
        result = invoke(*args)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return Ran(result.exit_code, result.stdout, result.stderr)


def manifest_columns(cells: list[str]) -> dict:
    """img2img rows whose init images are ``cells``; ids and seeds given, so a row's image does not
    depend on where its manifest and inputs live."""
    return {
        "id": [f"row-{i:03d}" for i in range(ROWS)],
        "prompt": [f"a picture of object {i % 5}" for i in range(ROWS)],
        "seed": [100 + i for i in range(ROWS)],
        "steps": [20] * ROWS,
        "mode": ["img2img"] * ROWS,
        "strength": [0.75] * ROWS,
        "scheduler": ["euler_a"] * ROWS,
        "init_image": cells,
    }


@pytest.fixture(scope="module")
def inputs():
    return {f"in-{i}.png": png(32, 32, i) for i in range(4)}


def cells_for(i: int, absolute_prefix: str | None) -> str:
    """Half the rows name their init image relative to the manifest, half by absolute URI."""
    name = f"in-{i % 4}.png"
    return f"{absolute_prefix}/{name}" if absolute_prefix and i % 2 else f"inputs/{name}"


@pytest.fixture(scope="module")
def reference(tiny_base, inputs, tmp_path_factory):
    """The same job on local disk (manifest and init images local): the images to expect."""
    root = tmp_path_factory.mktemp("s3-reference")
    (root / "inputs").mkdir()
    for name, data in inputs.items():
        (root / "inputs" / name).write_bytes(data)
    manifest = write_manifest(root / "m.parquet", manifest_columns([cells_for(i, None) for i in range(ROWS)]))
    out = root / "out"
    result = sdbatch("run", str(manifest), "--out", str(out), "--executor", "local", "--model", tiny_base,
                     "--device", "cpu", "--shard-size", "2", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(out / "metadata").to_pylist()
    return {r["id"]: np.asarray(Image.open(out / r["image"])).astype(int) for r in rows}


def upload_job(client, bucket: str, inputs: dict) -> str:
    """Manifest and init images in the bucket; returns the manifest's URI."""
    for name, data in inputs.items():
        put(client, bucket, f"job/inputs/{name}", data)
    sink = io.BytesIO()
    pq.write_table(pa.table(manifest_columns([cells_for(i, f"s3://{bucket}/job/inputs") for i in range(ROWS)])), sink)
    put(client, bucket, "job/m.parquet", sink.getvalue())
    return f"s3://{bucket}/job/m.parquet"


def s3_metadata(client, bucket: str, prefix: str) -> list[dict]:
    rows = []
    for key in keys(client, bucket, f"{prefix}/metadata/"):
        rows.extend(pq.read_table(io.BytesIO(get(client, bucket, key))).to_pylist())
    return rows


def s3_images(client, bucket: str, prefix: str) -> dict[str, np.ndarray]:
    rows = s3_metadata(client, bucket, prefix)
    assert len(rows) == ROWS and len({r["id"] for r in rows}) == ROWS, "each row exactly once"
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["error"]][:3]
    return {r["id"]: np.asarray(Image.open(io.BytesIO(get(client, bucket, f"{prefix}/{r['image']}")))).astype(int)
            for r in rows}


def assert_same_images(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max(np.abs(a[k] - b[k]).max() for k in a)
    assert worst <= 1, f"max uint8 difference {worst}"


def assert_no_credentials(*texts: str | bytes) -> None:
    for text in texts:
        blob = text.encode() if isinstance(text, str) else text
        assert SECRET.encode() not in blob and ACCESS_KEY.encode() not in blob


def test_s3_job_killed_mid_run_resumes_exactly_once_and_verifies(tiny_base, endpoint, client, bucket, inputs,
                                                                 reference):
    manifest = upload_job(client, bucket, inputs)
    out = f"s3://{bucket}/out"
    args = ["-v", "run", manifest, "--out", out, "--executor", "local", "--model", tiny_base, "--device", "cpu",
            "--shard-size", "2", "--batch-size", "2", "--s3-endpoint-url", endpoint]
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while len(keys(client, bucket, "out/_job/shards/")) < 2:
        assert proc.poll() is None, f"job ended early: {proc.stdout.read().decode()}"
        assert time.monotonic() < deadline, "timed out waiting for two committed shards"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    first_log = proc.communicate()[0]
    committed = len(keys(client, bucket, "out/_job/shards/"))
    assert 2 <= committed < ROWS // 2, "the kill should land mid-job"

    status = sdbatch("status", out, "--s3-endpoint-url", endpoint)
    assert status.returncode == 3 and f"{committed}/{ROWS // 2} shards" in status.stdout
    rerun = sdbatch(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"({2 * committed} already done)" in rerun.stdout
    assert not [k for k in keys(client, bucket, "out/images/")  # the killed run's uncommitted images went
                if not k.split("/")[2] + ".json" in {m.rsplit("/", 1)[1] for m in keys(client, bucket, "out/_job/shards/")}]
    verify = sdbatch("verify", out, "--s3-endpoint-url", endpoint)
    assert verify.returncode == 0, verify.stdout
    assert "complete" in sdbatch("status", out, "--s3-endpoint-url", endpoint).stdout

    assert_same_images(s3_images(client, bucket, "out"), reference)
    rows = s3_metadata(client, bucket, "out")
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in inputs.items()}
    assert {r["init_image_sha256"] for r in rows} == set(digests.values())
    assert_no_credentials(first_log, rerun.stdout, rerun.stderr, verify.stdout,
                          get(client, bucket, "out/_job/plan.json"), get(client, bucket, "out/_job/summary.json"),
                          *(get(client, bucket, k) for k in keys(client, bucket, "out/")))


def test_webdataset_layout_on_s3_via_aws_endpoint_url(tiny_base, endpoint, client, bucket, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": [f"s{i}" for i in range(6)], "prompt": [f"prompt {i}" for i in range(6)],
        "seed": list(range(6)), "steps": [3] * 6,
    })
    out = f"s3://{bucket}/wds"
    env = {"AWS_ENDPOINT_URL": endpoint}  # the standard variable, no option
    # its own process, so everything the most verbose log holds reaches its stderr
    result = subprocess.run([*CLI, "-vv", "run", str(manifest), "--out", out, "--executor", "local", "--model",
                             tiny_base, "--device", "cpu", "--shard-size", "4", "--layout", "webdataset",
                             "--format", "jpeg", "--s3-path-style"], capture_output=True, text=True,
                            env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    assert "debug:" in result.stderr and "botocore" in result.stderr  # the most verbose log there is ...
    assert_no_credentials(result.stdout, result.stderr)  # ... and still no credential in it
    assert sdbatch("verify", out, "--s3-path-style", env=env).returncode == 0
    assert keys(client, bucket, "wds/shards/") == ["wds/shards/00000.tar", "wds/shards/00001.tar"]
    assert not keys(client, bucket, "wds/images/")
    meta = {r["id"]: r for r in s3_metadata(client, bucket, "wds")}
    for key in keys(client, bucket, "wds/shards/"):
        local = tmp_path / Path(key).name
        local.write_bytes(get(client, bucket, key))
        for sample in wds.WebDataset(str(local), shardshuffle=False).decode("pil"):
            row = meta[sample["json"]["id"]]
            assert row["image"] == f"shards/{local.name}#{sample['__key__']}.jpg"
            assert sample["jpg"].size == (32, 32) and sample["json"]["seed"] == row["seed"]


def test_large_objects_are_written_whole_by_multipart_upload(endpoint, bucket, client):
    storage = open_storage(f"s3://{bucket}/big", S3Options(endpoint_url=endpoint, multipart_bytes=5 * 2**20))
    data = os.urandom(11 * 2**20)
    storage.write_fileobj("shards/00000.tar", io.BytesIO(data))
    head = client.head_object(Bucket=bucket, Key="big/shards/00000.tar")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # three parts, completed as one object
    assert storage.read_bytes("shards/00000.tar") == data
    assert storage.list("shards") == ["shards/00000.tar"]
    assert storage.partial_writes() == []


def test_an_unfinished_multipart_upload_is_invisible_reported_and_discarded(tiny_base, endpoint, client, bucket,
                                                                            tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": ["a", "b"], "prompt": ["x", "y"], "steps": [2, 2]})
    out = f"s3://{bucket}/job"
    args = ["run", str(manifest), "--out", out, "--executor", "local", "--model", tiny_base, "--device", "cpu",
            "--s3-endpoint-url", endpoint]
    assert sdbatch(*args).returncode == 0
    # what a writer killed mid-upload leaves behind: parts of an object that does not exist
    upload = client.create_multipart_upload(Bucket=bucket, Key="job/shards/00009.tar")
    client.upload_part(Bucket=bucket, Key="job/shards/00009.tar", UploadId=upload["UploadId"], PartNumber=1,
                       Body=b"x" * 1024)
    assert "job/shards/00009.tar" not in keys(client, bucket, "job/")
    verify = sdbatch("verify", out, "--s3-endpoint-url", endpoint)
    assert verify.returncode == 1 and "partial file shards/00009.tar" in verify.stdout
    assert sdbatch(*args).returncode == 0  # a rerun clears a killed run's leftovers
    assert not client.list_multipart_uploads(Bucket=bucket, Prefix="job/").get("Uploads")
    assert sdbatch("verify", out, "--s3-endpoint-url", endpoint).returncode == 0


def test_bad_s3_locations_get_clear_errors(tiny_base, endpoint, client, bucket, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": ["ok", "gone"], "prompt": ["x", "y"], "steps": [2, 2], "mode": ["img2img", "img2img"],
        "init_image": [f"s3://{bucket}/in/a.png", f"s3://{bucket}/in/missing.png"],
    })
    put(client, bucket, "in/a.png", png(32, 32, 1))
    common = ["--executor", "local", "--model", tiny_base, "--device", "cpu", "--s3-endpoint-url", endpoint]

    no_bucket = sdbatch("run", str(manifest), "--out", "s3://no-such-bucket-here/out", *common)
    assert no_bucket.returncode == 2 and "bucket 'no-such-bucket-here' does not exist" in no_bucket.stderr

    no_manifest = sdbatch("run", f"s3://{bucket}/nothing.parquet", "--out", f"s3://{bucket}/o1", *common)
    assert no_manifest.returncode == 2 and f"s3://{bucket}/nothing.parquet" in no_manifest.stderr

    missing_input = sdbatch("run", str(manifest), "--out", f"s3://{bucket}/o2", *common)
    assert missing_input.returncode == 1
    rows = {r["id"]: r for r in s3_metadata(client, bucket, "o2")}
    assert rows["ok"]["status"] == "ok"
    assert rows["gone"]["error"].endswith(f"column init_image: object not found: s3://{bucket}/in/missing.png")

    no_credentials = subprocess.run(  # a process of its own: credentials are found once per process
        [*CLI, "run", str(manifest), "--out", f"s3://{bucket}/o3", *common], capture_output=True, text=True,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""})
    assert no_credentials.returncode == 2 and "no AWS credentials found" in no_credentials.stderr

    verify = sdbatch("verify", "s3://no-such-bucket-here/out", "--s3-endpoint-url", endpoint)
    assert verify.returncode == 2 and "does not exist" in verify.stderr


def test_an_interrupted_job_on_s3_leaves_no_image_of_an_uncommitted_shard(tiny_base, endpoint, client, bucket,
                                                                           inputs):
    manifest = upload_job(client, bucket, inputs)
    out = f"s3://{bucket}/int"
    proc = subprocess.Popen([*CLI, "run", manifest, "--out", out, "--executor", "local", "--model", tiny_base,
                             "--device", "cpu", "--shard-size", "2", "--batch-size", "1", "--s3-endpoint-url",
                             endpoint], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not keys(client, bucket, "int/_job/shards/"):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    committed = {k.rsplit("/", 1)[1].removesuffix(".json") for k in keys(client, bucket, "int/_job/shards/")}
    visible = {k.split("/")[2] for k in keys(client, bucket, "int/images/")}
    assert visible <= committed, f"images of uncommitted shards: {sorted(visible - committed)}"
