"""Helpers the test modules share (plain functions; the fixtures are in conftest.py): in-process CLI
calls, manifests and the planner's rows, small random images, reading an output folder, the
row sets several engine tests run, and the one image comparison (every uint8 within 1)."""

from __future__ import annotations

import io
import socket
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image


# -- the CLI, manifests and plans -------------------------------------------------------------------
def invoke(*args: str):
    """``sdbatch ARGS`` in this process (no interpreter start-up, no second import of torch)."""
    from click.testing import CliRunner

    from sdbatch.cli.main import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write_manifest(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def planned_shards(manifest, default_model: str = "m", shard_size: int = 1000, batch_rows: int | None = None):
    """The shards the planner writes for the workers (rows validated, normalised, ids and seeds
    derived): ({shard name: its rows as GenerationRow objects}, the PlannedManifest)."""
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


# -- images -----------------------------------------------------------------------------------------
def png(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """A random RGB (or ``L``) PNG, the same for the same seed."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def noise_image(seed: int, width: int = 32, height: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def half_mask(width: int = 32, height: int = 32, right: bool = True) -> Image.Image:
    """White (repaint) on one half, black (keep) on the other."""
    mask = np.zeros((height, width), dtype=np.uint8)
    if right:
        mask[:, width // 2 :] = 255
    else:
        mask[:, : width // 2] = 255
    return Image.fromarray(mask, mode="L")


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    """The promise: every uint8 within 1."""
    assert a.shape == b.shape
    diff = np.abs(a.astype(int) - b.astype(int)).max()
    assert diff <= 1, f"max uint8 difference {diff}"


# -- output folders ---------------------------------------------------------------------------------
def read_metadata(out: Path) -> list[dict]:
    return ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()


def metadata_by_id(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in read_metadata(out)}


def images_by_id(out: Path, rows: int) -> dict[str, np.ndarray]:
    """Every image of a job of ``rows`` rows, all ok, by id."""
    meta = read_metadata(out)
    assert len(meta) == rows and len({r["id"] for r in meta}) == rows
    assert all(r["status"] == "ok" for r in meta), [r["error"] for r in meta if r["error"]][:3]
    return {r["id"]: np.asarray(Image.open(out / r["image"])).astype(int) for r in meta}


def markers(out: Path) -> int:
    """Committed shards (their markers) in ``out``."""
    folder = out / "_job" / "shards"
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


# -- row sets ---------------------------------------------------------------------------------------
def mixed_rows(n: int):
    from sdbatch.pipeline.batch import RowInput

    return [
        RowInput(
            prompt=f"a photo of the thing number {i % 5}",
            seed=7_000 + 31 * i,
            guidance_scale=[7.5, 1.0, 3.0, 12.0][i % 4],
            negative_prompt=["", "blurry, low quality"][i % 2],
        )
        for i in range(n)
    ]


def xl_rows(n: int, width: int = 32, height: int = 32, images: bool = False, masks: bool = False):
    """Rows that vary everything SDXL lets a row vary: guidance (some unguided, some rescaled),
    negative prompts (some absent: zero embeddings), second prompts, original size and crop."""
    from sdbatch.pipeline.batch import RowInput

    rows = []
    for i in range(n):
        rows.append(RowInput(
            prompt=f"a photo of the thing number {i % 5}",
            seed=[1234, 2**63 + 5, 77][i] if i < 3 else 7_000 + 31 * i,
            guidance_scale=[7.5, 5.0, 1.0, 12.0][i % 4],
            negative_prompt=["blurry", "", "", "low quality"][i % 4],
            negative_prompt_2=[None, None, None, "ugly"][i % 4],
            prompt_2=[None, "oil painting", None][i % 3],
            guidance_rescale=[0.0, 0.0, 0.0, 0.7][i % 4],
            original_width=[None, 64, None, 128][i % 4],
            original_height=[None, 48, None, 96][i % 4],
            crop_top=[None, 8, None, 0][i % 4],
            crop_left=[None, 4, None, 16][i % 4],
            init_image=noise_image(100 + i % 6, width, height) if images else None,
            mask_image=half_mask(width, height, right=i % 3 != 1) if masks else None,
        ))
    return rows


def mixed_columns(tiny_models, family_models) -> dict:
    """SD 1.5, SD 2.x-style v-prediction and SDXL rows, every mode, one row failing alone."""
    xl, v, base, inpaint = family_models["xl"], family_models["v"], tiny_models["base"], tiny_models["inpaint"]
    rows = [
        dict(id="sd-txt", model=base, mode="txt2img"),
        dict(id="sd-img", model=base, mode="img2img", init_image=png(32, 32, 1)),
        dict(id="sd-inpaint", model=inpaint, mode="inpaint", init_image=png(32, 32, 2),
             mask_image=png(32, 32, 3, mode="L")),
        dict(id="v-txt", model=v, mode="txt2img", guidance_rescale=0.7),
        dict(id="xl-txt", model=xl, mode="txt2img", prompt_2="a second prompt", crop_top=8, original_width=64),
        dict(id="xl-txt-2", model=xl, mode="txt2img", guidance_rescale=0.5),
        dict(id="xl-img", model=xl, mode="img2img", init_image=png(32, 32, 4)),
        dict(id="xl-inpaint", model=xl, mode="inpaint", init_image=png(32, 32, 5), mask_image=png(32, 32, 6, mode="L")),
        dict(id="xl-depth", model=xl, mode="depth2img", init_image=png(32, 32, 7)),  # fails alone: SDXL has no depth
    ]
    names = ["id", "model", "mode", "init_image", "mask_image", "guidance_rescale", "prompt_2", "crop_top",
             "original_width"]
    columns = {n: [r.get(n) for r in rows] for n in names}
    columns.update(prompt=[f"a picture {i}" for i in range(len(rows))], steps=[3] * len(rows),
                   seed=list(range(len(rows))), strength=[0.7] * len(rows))
    return columns


def check_mixed(out: Path, result) -> None:
    """What a run of ``mixed_columns`` leaves: every row but the SDXL depth row ok, the conditioning
    columns in the metadata, and a folder that verifies."""
    assert result.exit_code == 1, result.output  # one row failed, alone
    meta = metadata_by_id(out)
    failed = {k: r for k, r in meta.items() if r["status"] == "error"}
    assert list(failed) == ["xl-depth"]
    assert "column mode" in failed["xl-depth"]["error"] and "SDXL" in failed["xl-depth"]["error"]
    assert meta["xl-txt"]["prompt_2"] == "a second prompt" and meta["xl-txt"]["crop_top"] == 8
    assert meta["v-txt"]["guidance_rescale"] == 0.7
    assert invoke("verify", str(out)).exit_code == 0


# -- stock diffusers --------------------------------------------------------------------------------
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


# -- S3 (moto on loopback: see conftest's endpoint) -------------------------------------------------
ACCESS_KEY = "AKIASDBATCHTESTKEY01"
SECRET = f"sdbatch-test-secret-{uuid.uuid4().hex}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def put(client, bucket: str, key: str, data: bytes) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=data)


def get(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def keys(client, bucket: str, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))
