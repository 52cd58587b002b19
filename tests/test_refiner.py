"""SDXL base + refiner rows equal stock diffusers' two-pipeline recipe (``denoising_end`` on the
base with ``output_type="latent"``, then ``denoising_start`` on the refiner, one generator), and
do not depend on their batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from helpers import stock_row_kwargs, to_uint8
from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.modes import ModeError
from sdbatch.pipeline.schedulers import make_scheduler
from helpers import assert_close
from helpers import xl_rows

STEPS = 10


@pytest.fixture(scope="module")
def engines(family_models):
    return {v: BatchedEngine(load_model(family_models[v], "cpu", "fp32")) for v in ("xl", "xl-inpaint", "xl-refiner")}


@pytest.fixture(scope="module")
def stock(family_models):
    def ready(pipe):
        pipe.set_progress_bar_config(disable=True)
        pipe.model_scheduler = pipe.scheduler
        return pipe

    f32 = dict(torch_dtype=torch.float32)
    base = StableDiffusionXLPipeline.from_pretrained(family_models["xl"], **f32)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(family_models["xl-refiner"], **f32)
    return {
        ("base", "txt2img", "xl"): ready(base),
        ("base", "img2img", "xl"): ready(StableDiffusionXLImg2ImgPipeline.from_pipe(base)),
        ("base", "inpaint", "xl"): ready(StableDiffusionXLInpaintPipeline.from_pipe(base)),
        ("base", "inpaint", "xl-inpaint"): ready(StableDiffusionXLInpaintPipeline.from_pretrained(
            family_models["xl-inpaint"], **f32)),
        ("refiner", "img2img"): ready(refiner),
        ("refiner", "inpaint"): ready(StableDiffusionXLInpaintPipeline.from_pipe(refiner)),
    }


def refiner_rows(n: int, mode: str) -> list[RowInput]:
    rows = xl_rows(n, images=mode != "txt2img", masks=mode == "inpaint")
    return [replace(r, aesthetic_score=[None, 7.5, 3.0][i % 3], negative_aesthetic_score=[None, None, 1.0][i % 3])
            for i, r in enumerate(rows)]


def stock_refined(stock, base_model: str, settings: BatchSettings, row: RowInput) -> torch.Tensor:
    """The diffusers documentation's base + refiner recipe for one row."""
    generator = torch.Generator("cpu").manual_seed(row.seed)
    base = stock[("base", settings.mode, base_model)]
    base.scheduler = make_scheduler(settings.scheduler, base.model_scheduler)
    kwargs = stock_row_kwargs(row, settings)
    latents = base(**{**kwargs, "generator": generator}, denoising_end=settings.refiner_start,
                   output_type="latent").images
    refiner = stock[("refiner", "inpaint" if settings.mode == "inpaint" else "img2img")]
    refiner.scheduler = make_scheduler(settings.scheduler, refiner.model_scheduler)
    kwargs.pop("strength", None)
    kwargs.update(image=latents, generator=generator, denoising_start=settings.refiner_start)
    if settings.mode == "txt2img":
        kwargs.pop("height"), kwargs.pop("width")
    return to_uint8(refiner(**kwargs, output_type="np").images[0])


def check(engines, stock, base_model: str, settings: BatchSettings, rows: list[RowInput]) -> None:
    images = engines[base_model].generate(settings, rows, refiner=engines["xl-refiner"]).images
    for row, image in zip(rows, images):
        assert_close(image, stock_refined(stock, base_model, settings, row))


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m", "heun", "unipc"])
def test_refined_txt2img_rows_equal_stock_recipe(engines, stock, scheduler):
    check(engines, stock, "xl", BatchSettings(32, 32, STEPS, scheduler, refiner_start=0.8), refiner_rows(3, "txt2img"))


@pytest.mark.parametrize("base_model, mode", [("xl", "img2img"), ("xl", "inpaint"), ("xl-inpaint", "inpaint")])
@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m"])
def test_refined_image_mode_rows_equal_stock_recipe(engines, stock, base_model, mode, scheduler):
    settings = BatchSettings(32, 32, STEPS, scheduler, mode, strength=0.9, refiner_start=0.7)
    check(engines, stock, base_model, settings, refiner_rows(3, mode))


def test_refined_rows_do_not_depend_on_their_batch(engines):
    rows = refiner_rows(16, "txt2img")
    settings = BatchSettings(32, 32, STEPS, "euler_a", refiner_start=0.75)
    base, refiner = engines["xl"], engines["xl-refiner"]
    batch = base.generate(settings, rows, refiner=refiner).images
    for k in (0, 5, 15):
        assert_close(base.generate(settings, [rows[k]], refiner=refiner).images[0], batch[k])
    moved = base.generate(settings, [rows[15]] + rows[3:9] + [rows[0]], refiner=refiner).images
    assert_close(moved[0], batch[15])
    assert_close(moved[-1], batch[0])


def test_the_refiner_changes_the_image(engines):
    """Guards the recipe tests: the refiner's steps reach the image."""
    row = refiner_rows(1, "txt2img")[0]
    base, refiner = engines["xl"], engines["xl-refiner"]
    alone = base.generate(BatchSettings(32, 32, STEPS, "ddim"), [row]).images[0]
    refined = base.generate(BatchSettings(32, 32, STEPS, "ddim", refiner_start=0.5), [row], refiner=refiner).images[0]
    assert abs(alone.astype(int) - refined.astype(int)).max() > 2


def test_refiner_misuse_is_refused_naming_the_column(engines, tiny_base):
    row = refiner_rows(1, "txt2img")[0]
    base, refiner = engines["xl"], engines["xl-refiner"]
    with pytest.raises(ModeError, match="must be a fraction") as err:
        base.generate(BatchSettings(32, 32, STEPS, refiner_start=1.0), [row], refiner=refiner)
    assert err.value.column == "refiner_start"
    sd = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    with pytest.raises(ModeError, match="not an SDXL model"):
        sd.generate(BatchSettings(32, 32, STEPS, refiner_start=0.8), [RowInput("a", seed=0)], refiner=refiner)
    with pytest.raises(ValueError, match="needs a refiner model"):
        base.generate(BatchSettings(32, 32, STEPS, refiner_start=0.8), [row])
    scored = refiner_rows(2, "txt2img")[1]
    with pytest.raises(ModeError, match="aesthetic_score is used only by SDXL refiner-style"):
        base.generate(BatchSettings(32, 32, STEPS), [scored])  # no refiner: its inputs have no model
