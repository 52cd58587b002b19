"""Shared fixtures: tiny models written once per session through the real `sdbatch tiny-model` path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread per test process (subprocesses inherit it): the tiny model gains nothing from
# more, and on a shared 2-core machine competing OpenMP threads run several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

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
