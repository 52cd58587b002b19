"""v-prediction, zero-terminal-SNR and trailing-spacing models, and guidance_rescale rows, for both
families: a row's image equals stock diffusers' under every scheduler name that can keep the
model's scheduler settings, and the others are refused by name."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from helpers import stock_row_kwargs, to_uint8
from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.schedulers import SCHEDULER_NAMES, SchedulerSettingError, make_scheduler
from helpers import assert_close
from helpers import half_mask, noise_image

STEPS = 8
# SD 2.1-style fine-tunes trained with "Common Diffusion Noise Schedules and Sample Steps are Flawed"
ZERO_SNR = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")
KEEPS_ZERO_SNR = ["ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc"]


def rows() -> list[RowInput]:
    """Guided rows with and without rescale, and an unguided row (rescale must not touch it)."""
    return [
        RowInput("a red fox in the snow", seed=1234, guidance_scale=7.5, negative_prompt="blurry",
                 guidance_rescale=0.7),
        RowInput("an old lighthouse at dusk", seed=2**63 + 5, guidance_scale=5.0),
        RowInput("a bowl of fruit", seed=99, guidance_scale=1.0, guidance_rescale=0.7),
    ]


def with_scheduler_config(pipe, **config):
    """The model as a fine-tune with these scheduler settings would ship it."""
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **config)
    return pipe


def engine_for(folder: str, **config) -> BatchedEngine:
    model = load_model(folder, "cpu", "fp32")
    with_scheduler_config(model.pipe, **config)
    return BatchedEngine(model)


def stock_for(cls, folder: str, **config):
    pipe = with_scheduler_config(cls.from_pretrained(folder, torch_dtype=torch.float32), **config)
    pipe.set_progress_bar_config(disable=True)
    pipe.model_scheduler = pipe.scheduler
    return pipe


def check(engine, pipe, settings: BatchSettings, batch: list[RowInput], family: str) -> None:
    images = engine.generate(settings, batch).images
    for row, image in zip(batch, images):
        pipe.scheduler = make_scheduler(settings.scheduler, pipe.model_scheduler)
        ref = pipe(**stock_row_kwargs(row, settings, family), output_type="np").images[0]
        assert_close(image, to_uint8(ref))


# -- SD 2.x v-prediction --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v_engine(family_models):
    return BatchedEngine(load_model(family_models["v"], "cpu", "fp32"))


@pytest.fixture(scope="module")
def v_stock(family_models):
    return stock_for(StableDiffusionPipeline, family_models["v"])


@pytest.mark.parametrize("scheduler", list(SCHEDULER_NAMES) + [None])
def test_v_prediction_rows_equal_stock(v_engine, v_stock, scheduler):
    check(v_engine, v_stock, BatchSettings(32, 32, STEPS, scheduler), rows(), "sd")


@pytest.fixture(scope="module")
def zero_snr(family_models):
    return engine_for(family_models["v"], **ZERO_SNR), stock_for(StableDiffusionPipeline, family_models["v"], **ZERO_SNR)


@pytest.mark.parametrize("scheduler", KEEPS_ZERO_SNR)
def test_zero_snr_trailing_rows_equal_stock(zero_snr, scheduler):
    engine, stock = zero_snr
    check(engine, stock, BatchSettings(32, 32, STEPS, scheduler), rows(), "sd")


@pytest.mark.parametrize("scheduler", [s for s in SCHEDULER_NAMES if s not in KEEPS_ZERO_SNR])
def test_schedulers_that_would_drop_zero_snr_are_refused(zero_snr, scheduler):
    engine, _ = zero_snr
    with pytest.raises(SchedulerSettingError, match=f"scheduler {scheduler} .* rescale_betas_zero_snr=True; "
                                                    "schedulers that can: ddim, euler"):
        engine.generate(BatchSettings(32, 32, STEPS, scheduler), rows())


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_keeps_the_models_settings(zero_snr, v_engine, scheduler):
    for engine in (v_engine, zero_snr[0]):
        config = engine.pipe.scheduler.config
        try:
            made = make_scheduler(scheduler, engine.pipe.scheduler).config
        except SchedulerSettingError:
            assert config.rescale_betas_zero_snr and scheduler not in KEEPS_ZERO_SNR
            continue
        for key in ("prediction_type", "timestep_spacing", "rescale_betas_zero_snr"):
            assert made.get(key, False) == config.get(key, False), key


def test_prediction_type_and_rescale_reach_the_image(v_engine, zero_snr):
    """Guards the tests above: the settings change the image (equality alone would hold if both
    stock and the engine ignored them)."""
    settings = BatchSettings(32, 32, STEPS, "euler")
    row = rows()[0]
    plain = v_engine.generate(settings, [row, RowInput(row.prompt, row.seed, 7.5, "blurry")]).images
    snr = zero_snr[0].generate(settings, [row]).images[0]
    assert abs(plain[0].astype(int) - plain[1].astype(int)).max() > 2  # guidance_rescale 0.7 vs 0
    assert abs(plain[0].astype(int) - snr.astype(int)).max() > 2


# -- SD 1.5 epsilon with guidance_rescale ---------------------------------------------------------
def test_sd15_guidance_rescale_rows_equal_stock(tiny_base):
    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    stock = stock_for(StableDiffusionPipeline, tiny_base)
    check(engine, stock, BatchSettings(32, 32, STEPS, "dpmpp_2m"), rows(), "sd")


# -- SDXL with a v-prediction, zero-SNR, trailing scheduler config, every mode ----------------------
@pytest.fixture(scope="module")
def xl_v(family_models):
    config = dict(prediction_type="v_prediction", **ZERO_SNR)
    base = stock_for(StableDiffusionXLPipeline, family_models["xl"], **config)
    pipes = {
        "txt2img": base,
        "img2img": StableDiffusionXLImg2ImgPipeline.from_pipe(base),
        "inpaint": stock_for(StableDiffusionXLInpaintPipeline, family_models["xl-inpaint"], **config),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
        pipe.model_scheduler = pipe.scheduler
    engines = {"xl": engine_for(family_models["xl"], **config),
               "xl-inpaint": engine_for(family_models["xl-inpaint"], **config)}
    return engines, pipes


@pytest.mark.parametrize("scheduler", ["ddim", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_sdxl_v_prediction_and_rescale_rows_equal_stock(xl_v, mode, scheduler):
    engines, pipes = xl_v
    batch = [RowInput(r.prompt, r.seed, r.guidance_scale, r.negative_prompt, guidance_rescale=r.guidance_rescale,
                      init_image=noise_image(100 + i) if mode != "txt2img" else None,
                      mask_image=half_mask() if mode == "inpaint" else None)
             for i, r in enumerate(rows())]
    engine = engines["xl-inpaint" if mode == "inpaint" else "xl"]
    check(engine, pipes[mode], BatchSettings(32, 32, STEPS, scheduler, mode, 0.7), batch, "sdxl")
