"""Shared fixtures: tiny models written once per session through the real `sdbatch tiny-model` path,
and an S3-compatible server (moto) on loopback."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread per test process (subprocesses inherit it): the tiny model gains nothing from
# more, and on a shared 2-core machine competing OpenMP threads run several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import socket
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.pipeline.tiny import write_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {v: str(write_tiny_model(root / v, v, seed=0)) for v in ("base", "inpaint", "depth")}


@pytest.fixture(scope="session")
def tiny_base(tiny_models) -> str:
    return tiny_models["base"]


S3_ACCESS_KEY = "AKIASDBATCHTESTKEY01"
S3_SECRET = f"sdbatch-test-secret-{uuid.uuid4().hex}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    """A moto S3 server on loopback, and test credentials in the environment (inherited by the
    sdbatch subprocesses, as a real deployment's would be)."""
    from moto.server import ThreadedMotoServer

    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET,
                      AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
                      AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path_factory.getbasetemp() / "sdbatch-cache"))


def write_manifest(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path
