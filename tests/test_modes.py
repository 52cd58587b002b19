"""img2img, inpaint and depth2img: a row's image equals stock diffusers' and does not depend on
its batch (size, neighbours, position)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.schedulers import SCHEDULER_NAMES, make_scheduler
from helpers import assert_close
from helpers import half_mask, noise_image

STEPS = 10
REQUIRED_SCHEDULERS = ["ddim", "euler_a", "dpmpp_2m"]


def ramp_depth(width: int = 20, height: int = 12) -> np.ndarray:
    """A depth map of another size than the image: nearer towards the bottom right."""
    return np.add.outer(np.arange(height), np.arange(width)).astype(np.float32)


@dataclass(frozen=True)
class Case:
    """One mode on one tiny model, and the stock pipeline class that defines its output."""

    name: str
    model: str  # tiny model variant
    mode: str
    stock: type
    strength: float = 0.8
    size: tuple[int, int] = (32, 32)  # width, height
    given_depth: bool = False


CASES = [
    Case("img2img", "base", "img2img", StableDiffusionImg2ImgPipeline),
    Case("img2img-nonsquare", "base", "img2img", StableDiffusionImg2ImgPipeline, 0.6, (48, 32)),
    Case("inpaint9-full", "inpaint", "inpaint", StableDiffusionInpaintPipeline, 1.0),
    Case("inpaint9-partial", "inpaint", "inpaint", StableDiffusionInpaintPipeline, 0.6, (32, 48)),
    Case("inpaint4-full", "base", "inpaint", StableDiffusionInpaintPipeline, 1.0),
    Case("inpaint4-partial", "base", "inpaint", StableDiffusionInpaintPipeline, 0.6),
    Case("depth2img-estimated", "depth", "depth2img", StableDiffusionDepth2ImgPipeline),
    Case("depth2img-given", "depth", "depth2img", StableDiffusionDepth2ImgPipeline, 0.7, (48, 32), True),
]
CASE_BY_NAME = {c.name: c for c in CASES}


@pytest.fixture(scope="module")
def engines(tiny_models):
    return {v: BatchedEngine(load_model(tiny_models[v], "cpu", "fp32")) for v in ("base", "inpaint", "depth")}


@pytest.fixture(scope="module")
def stock_pipes(tiny_models):
    """Stock pipelines keyed by (class, variant); img2img and 4-channel inpaint run on the base model."""
    base = StableDiffusionPipeline.from_pretrained(tiny_models["base"], torch_dtype=torch.float32)
    pipes = {
        (StableDiffusionImg2ImgPipeline, "base"): StableDiffusionImg2ImgPipeline.from_pipe(base),
        (StableDiffusionInpaintPipeline, "base"): StableDiffusionInpaintPipeline.from_pipe(base),
        (StableDiffusionInpaintPipeline, "inpaint"): StableDiffusionInpaintPipeline.from_pretrained(
            tiny_models["inpaint"], torch_dtype=torch.float32),
        (StableDiffusionDepth2ImgPipeline, "depth"): StableDiffusionDepth2ImgPipeline.from_pretrained(
            tiny_models["depth"], torch_dtype=torch.float32),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        pipe.model_scheduler = pipe.scheduler
    return pipes


def case_rows(case: Case, n: int = 2) -> list[RowInput]:
    """Rows with their own prompts, seeds, guidance (some unguided), negative prompts and images."""
    w, h = case.size
    rows = []
    for i in range(n):
        rows.append(RowInput(
            prompt=f"a photo of the thing number {i % 5}",
            seed=[1234, 2**63 + 5][i] if i < 2 else 7_000 + 31 * i,
            guidance_scale=[7.5, 1.0, 3.0, 12.0][i % 4],
            negative_prompt=["blurry", ""][i % 2],
            init_image=noise_image(100 + i % 6, w, h),  # some rows share an image
            mask_image=half_mask(w, h, right=i % 3 != 1) if case.mode == "inpaint" else None,
            depth_map=ramp_depth() * (1 + i) if case.given_depth else None,
        ))
    return rows


def stock_image(pipe, scheduler: str | None, case: Case, row: RowInput) -> np.ndarray:
    pipe.scheduler = make_scheduler(scheduler, pipe.model_scheduler)
    kwargs = dict(
        prompt=row.prompt, negative_prompt=row.negative_prompt or None, guidance_scale=row.guidance_scale,
        num_inference_steps=STEPS, strength=case.strength, image=row.init_image, output_type="np",
        generator=torch.Generator("cpu").manual_seed(row.seed),
    )
    if case.mode == "inpaint":
        kwargs.update(mask_image=row.mask_image, width=case.size[0], height=case.size[1])
    if row.depth_map is not None:
        kwargs.update(depth_map=torch.from_numpy(row.depth_map)[None])
    return (pipe(**kwargs).images[0] * 255).round().astype(np.uint8)


def settings_for(case: Case, scheduler: str | None) -> BatchSettings:
    w, h = case.size
    return BatchSettings(w, h, STEPS, scheduler, case.mode, case.strength)


def check_against_stock(engines, stock_pipes, case: Case, scheduler: str | None) -> None:
    rows = case_rows(case)
    images = engines[case.model].generate(settings_for(case, scheduler), rows).images
    pipe = stock_pipes[(case.stock, case.model)]
    for row, image in zip(rows, images):
        assert image.shape == (case.size[1], case.size[0], 3)
        assert_close(image, stock_image(pipe, scheduler, case, row))


@pytest.mark.parametrize("scheduler", REQUIRED_SCHEDULERS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_row_equals_stock_diffusers(engines, stock_pipes, case, scheduler):
    check_against_stock(engines, stock_pipes, case, scheduler)


@pytest.mark.parametrize("scheduler", [s for s in SCHEDULER_NAMES if s not in REQUIRED_SCHEDULERS] + [None])
def test_img2img_equals_stock_for_every_scheduler(engines, stock_pipes, scheduler):
    """Strength starts the schedule part-way: multistep and second-order schedulers too."""
    check_against_stock(engines, stock_pipes, CASE_BY_NAME["img2img"], scheduler)


@pytest.mark.parametrize("name", ["img2img", "inpaint9-partial", "inpaint4-partial", "depth2img-estimated"])
def test_batch_invariance(engines, name):
    case = CASE_BY_NAME[name]
    rows = case_rows(case, 16)
    if case.mode == "depth2img":  # a batch mixing given and estimated depth maps
        rows = [replace(r, depth_map=ramp_depth() + i) if i % 3 == 0 else r for i, r in enumerate(rows)]
    settings = settings_for(case, "euler_a")
    engine = engines[case.model]
    batch = engine.generate(settings, rows).images
    for k in (0, 5, 15):
        assert_close(engine.generate(settings, [rows[k]]).images[0], batch[k])
    moved = engine.generate(settings, [rows[15]] + rows[3:9] + [rows[0]]).images
    assert_close(moved[0], batch[15])
    assert_close(moved[-1], batch[0])


def test_strength_and_inputs_change_the_image(engines):
    """Guards the tests above: the inputs reach the image (equality would hold trivially if not)."""
    case = CASE_BY_NAME["inpaint4-partial"]
    row = case_rows(case, 1)[0]
    engine = engines["base"]
    a = engine.generate(settings_for(case, "ddim"), [row]).images[0]
    b = engine.generate(replace(settings_for(case, "ddim"), strength=0.3), [row]).images[0]
    c = engine.generate(settings_for(case, "ddim"), [replace(row, init_image=noise_image(999))]).images[0]
    assert np.abs(a.astype(int) - b.astype(int)).max() > 10
    assert np.abs(a.astype(int) - c.astype(int)).max() > 10


def test_depth_mode_refused_on_a_model_without_depth(engines):
    case = CASE_BY_NAME["depth2img-estimated"]
    with pytest.raises(ValueError, match="depth model"):
        engines["base"].generate(settings_for(case, "ddim"), case_rows(case, 1))


def test_image_must_have_the_batch_size(engines):
    case = CASE_BY_NAME["img2img"]
    row = replace(case_rows(case, 1)[0], init_image=noise_image(1, 48, 32))
    with pytest.raises(ValueError, match="init_image is 48x32, the batch is 32x32"):
        engines["base"].generate(settings_for(case, "ddim"), [row])
