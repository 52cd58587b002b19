"""Shared fixtures: tiny models written once per session through the real `sdbatch tiny-model` path,
adapters for them, and an S3-compatible server (moto) on loopback. Plain helpers are in helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread per test process (subprocesses inherit it): the tiny model gains nothing from
# more, and on a shared 2-core machine competing OpenMP threads run several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import uuid

import pytest

from helpers import ACCESS_KEY, SECRET, free_port
from sdbatch.pipeline.tiny import write_tiny_model


# Slow kinds of test a contributor's inner loop may skip (-m "not browser and not compile and not
# ray"); CI runs all. Marked by what they use: the headless browser, the compiled engine, Ray.
MARKED_BY_FIXTURE = {"chromium": "browser", "compiled": "compile"}
RAY_MODULES = ("test_ray_jobs.py", "test_ray_nodes.py")


def pytest_collection_modifyitems(items):
    for item in items:
        for fixture, marker in MARKED_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
        if item.path.name in RAY_MODULES:
            item.add_marker("ray")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {v: str(write_tiny_model(root / v, v, seed=0)) for v in ("base", "inpaint", "depth")}


@pytest.fixture(scope="session")
def tiny_base(tiny_models) -> str:
    return tiny_models["base"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path_factory.getbasetemp() / "sdbatch-cache"))


@pytest.fixture(scope="module")
def endpoint():
    """A moto S3 server on loopback, and test credentials in the environment (inherited by sdbatch
    subprocesses and Ray workers started after it, as a real deployment's would be)."""
    from moto.server import ThreadedMotoServer

    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/nonexistent",
                      AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
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


@pytest.fixture
def client(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture
def bucket(client) -> str:
    name = f"sdbatch-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


FAMILY_VARIANTS = ("v", "xl", "xl-inpaint", "xl-refiner")


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, str]:
    """The SD 2.1-style v-prediction model and the SDXL base, inpainting and refiner models."""
    root = tmp_path_factory.mktemp("family-models")
    return {v: str(write_tiny_model(root / v, v, seed=0)) for v in FAMILY_VARIANTS}


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_models, family_models) -> dict[str, str]:
    """Random LoRAs and textual-inversion embeddings for the tiny SD and SDXL models, written once:
    ``lora-a`` (UNet and text encoder), ``lora-b`` (UNet only) and ``lora-xl`` in one LoRA folder
    (``loras``), and an embedding per family (token ``<tiny-style>``)."""
    from sdbatch.pipeline.tiny_adapters import write_tiny_embedding, write_tiny_lora

    root = tmp_path_factory.mktemp("adapters")
    loras = root / "loras"
    return {
        "loras": str(loras),
        "lora-a": str(write_tiny_lora(loras, tiny_models["base"], "lora-a", seed=1)),
        "lora-b": str(write_tiny_lora(loras, tiny_models["base"], "lora-b", seed=2, text_encoders=False)),
        "lora-xl": str(write_tiny_lora(loras, family_models["xl"], "lora-xl", seed=3)),
        "embedding": str(write_tiny_embedding(root / "style.safetensors", tiny_models["base"], "<tiny-style>")),
        "embedding-xl": str(write_tiny_embedding(root / "style-xl.safetensors", family_models["xl"], "<tiny-style>")),
    }
