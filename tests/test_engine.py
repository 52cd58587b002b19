"""The engine's images equal stock diffusers' and do not depend on batch size, neighbours or position."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.schedulers import SCHEDULER_NAMES, make_scheduler
from helpers import assert_close, mixed_rows

STEPS = 10


@pytest.fixture(scope="module")
def engine(tiny_base):
    return BatchedEngine(load_model(tiny_base, "cpu", "fp32"))


@pytest.fixture(scope="module")
def stock(tiny_base):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.model_scheduler = pipe.scheduler  # schedulers are always built from the model's own config
    return pipe


def stock_image(pipe, scheduler: str | None, row: RowInput, size=32, steps=STEPS) -> np.ndarray:
    pipe.scheduler = make_scheduler(scheduler, pipe.model_scheduler)
    out = pipe(
        row.prompt,
        negative_prompt=row.negative_prompt or None,
        guidance_scale=row.guidance_scale,
        num_inference_steps=steps,
        height=size,
        width=size,
        generator=torch.Generator("cpu").manual_seed(row.seed),
        output_type="np",
    ).images[0]
    return (out * 255).round().astype(np.uint8)


@pytest.mark.parametrize("scheduler", list(SCHEDULER_NAMES) + [None])
def test_row_equals_stock_diffusers(engine, stock, scheduler):
    rows = [
        RowInput("a red fox in the snow", seed=1234, guidance_scale=7.5, negative_prompt="blurry"),
        RowInput("an old lighthouse at dusk", seed=2**63 + 5, guidance_scale=1.0),
    ]
    images = engine.generate(BatchSettings(32, 32, STEPS, scheduler), rows).images
    for row, image in zip(rows, images):
        assert_close(image, stock_image(stock, scheduler, row))


def test_non_square_size_equals_stock(engine, stock):
    row = RowInput("a tall tower", seed=99, guidance_scale=5.0)
    image = engine.generate(BatchSettings(width=48, height=32, steps=STEPS, scheduler="euler"), [row]).images[0]
    stock.scheduler = make_scheduler("euler", stock.model_scheduler)
    ref = stock(row.prompt, guidance_scale=5.0, num_inference_steps=STEPS, height=32, width=48,
                generator=torch.Generator("cpu").manual_seed(99), output_type="np").images[0]
    assert image.shape == (32, 48, 3)
    assert_close(image, (ref * 255).round().astype(np.uint8))


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m", "pndm"])
def test_batch_invariance(engine, scheduler):
    rows = mixed_rows(16)
    settings = BatchSettings(32, 32, STEPS, scheduler)
    batch = engine.generate(settings, rows).images
    for k in (0, 5, 15):
        alone = engine.generate(settings, [rows[k]]).images[0]
        assert_close(alone, batch[k])
    # the same row at another position among other neighbours
    reordered = [rows[15]] + rows[3:9] + [rows[0]]
    moved = engine.generate(settings, reordered).images
    assert_close(moved[0], batch[15])
    assert_close(moved[-1], batch[0])


def test_different_seeds_give_different_images(engine):
    a, b = engine.generate(BatchSettings(32, 32, STEPS, "ddim"),
                           [RowInput("same prompt", seed=1), RowInput("same prompt", seed=2)]).images
    assert np.abs(a.astype(int) - b.astype(int)).max() > 10


def test_size_must_fit_the_vae(engine):
    with pytest.raises(ValueError, match="multiples of 8"):
        engine.generate(BatchSettings(36, 32, STEPS), [RowInput("x", seed=0)])
