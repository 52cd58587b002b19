"""Shared fixtures: tiny models written once per session through the real `sdbatch tiny-model` path,
in-process CLI calls, the planner's rows, and an S3-compatible server (moto) on loopback."""

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


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path_factory.getbasetemp() / "sdbatch-cache"))


def write_manifest(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def planned_shards(manifest, default_model: str = "m", shard_size: int = 1000, batch_rows: int | None = None):
    """The shards the planner writes for the workers (rows validated, normalised, ids and seeds
    derived): ({shard name: its rows as GenerationRow objects}, the PlannedManifest)."""
    import tempfile

    from sdbatch.jobs.planning import plan_manifest
    from sdbatch.manifests.rows import rows_of
    from sdbatch.manifests.source import open_manifest

    with tempfile.TemporaryDirectory() as staging:
        kwargs = {"batch_rows": batch_rows} if batch_rows else {}
        planned = plan_manifest(open_manifest(manifest), default_model, shard_size, Path(staging), **kwargs)
        shards = {s.name: rows_of(pq.read_table(planned.planner.staged_file(s.name))) for s in planned.shards}
    return shards, planned


def planned_rows(manifest, default_model: str = "m", shard_size: int = 1000, batch_rows: int | None = None):
    """Every distinct row of ``manifest`` as planned (see ``planned_shards``), in manifest order."""
    shards, planned = planned_shards(manifest, default_model, shard_size, batch_rows)
    return sorted((r for rows in shards.values() for r in rows), key=lambda r: r.row_index), planned


def invoke(*args: str):
    """``sdbatch ARGS`` in this process (no interpreter start-up, no second import of torch)."""
    from click.testing import CliRunner

    from sdbatch.cli.main import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- S3: moto's server on loopback ------------------------------------------------------------------
ACCESS_KEY = "AKIASDBATCHTESTKEY01"
SECRET = f"sdbatch-test-secret-{uuid.uuid4().hex}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    port = _free_port()
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


def put(client, bucket: str, key: str, data: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=data)


def get(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


FAMILY_VARIANTS = ("v", "xl", "xl-inpaint", "xl-refiner")


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, str]:
    """The SD 2.1-style v-prediction model and the SDXL base, inpainting and refiner models."""
    root = tmp_path_factory.mktemp("family-models")
    return {v: str(write_tiny_model(root / v, v, seed=0)) for v in FAMILY_VARIANTS}


def stock_row_kwargs(row, settings, model_family: str = "sdxl") -> dict:
    """A RowInput and BatchSettings as stock diffusers' pipeline arguments for one image: what a
    user of stock diffusers writes for the same row (``None`` where the row leaves the default)."""
    import torch

    no_negative = not row.negative_prompt and not row.negative_prompt_2
    kwargs = dict(
        prompt=row.prompt,
        negative_prompt=None if no_negative else row.negative_prompt,
        guidance_scale=row.guidance_scale,
        num_inference_steps=settings.steps,
        generator=torch.Generator("cpu").manual_seed(row.seed),
    )
    if model_family == "sdxl" or settings.mode == "txt2img":  # SD's image pipelines have no rescale
        kwargs.update(guidance_rescale=row.guidance_rescale)
    if settings.mode == "txt2img" or settings.mode == "inpaint":
        kwargs.update(height=settings.height, width=settings.width)
    if settings.mode != "txt2img":
        kwargs.update(image=row.init_image, strength=settings.strength)
    if settings.mode == "inpaint":
        kwargs.update(mask_image=row.mask_image)
    if model_family == "sdxl":
        h, w = settings.height, settings.width
        kwargs.update(
            prompt_2=row.prompt_2,
            negative_prompt_2=row.negative_prompt_2,
            original_size=(row.original_height or h, row.original_width or w),
            crops_coords_top_left=(row.crop_top or 0, row.crop_left or 0),
            target_size=(row.target_height or h, row.target_width or w),
        )
        for name in ("aesthetic_score", "negative_aesthetic_score"):
            if getattr(row, name) is not None:
                kwargs[name] = getattr(row, name)
    return kwargs


def to_uint8(images):
    import numpy as np

    return (np.asarray(images) * 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory, tiny_models, family_models) -> dict[str, str]:
    """Random LoRAs and textual-inversion embeddings for the tiny SD and SDXL models, written once:
    ``lora-a`` (UNet and text encoder), ``lora-b`` (UNet only) and ``lora-xl`` in one LoRA folder
    (``loras``), and an embedding per family (token ``<tiny-style>``)."""
    from sdbatch.pipeline.tiny import write_tiny_embedding, write_tiny_lora

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
