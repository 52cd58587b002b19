"""SDXL rows: a row's image equals stock diffusers' SDXL pipelines and does not depend on its batch."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from helpers import stock_row_kwargs, to_uint8
from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.model_files import ModelLoadError
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.modes import ModeError
from sdbatch.pipeline.schedulers import SCHEDULER_NAMES, make_scheduler
from sdbatch.pipeline.tiny import resolve_builtin_model
from helpers import assert_close
from helpers import xl_rows

STEPS = 8
IMAGE_SCHEDULERS = ["ddim", "euler_a", "dpmpp_2m"]


@pytest.fixture(scope="module")
def engines(family_models):
    return {v: BatchedEngine(load_model(family_models[v], "cpu", "fp32")) for v in ("xl", "xl-inpaint")}


def _ready(pipe):
    pipe.set_progress_bar_config(disable=True)
    pipe.model_scheduler = pipe.scheduler
    return pipe


@pytest.fixture(scope="module")
def stock(family_models):
    """Stock pipelines by (class, variant); img2img and 4-channel inpaint run on the base model."""
    base = StableDiffusionXLPipeline.from_pretrained(family_models["xl"], torch_dtype=torch.float32)
    return {
        (StableDiffusionXLPipeline, "xl"): _ready(base),
        (StableDiffusionXLImg2ImgPipeline, "xl"): _ready(StableDiffusionXLImg2ImgPipeline.from_pipe(base)),
        (StableDiffusionXLInpaintPipeline, "xl"): _ready(StableDiffusionXLInpaintPipeline.from_pipe(base)),
        (StableDiffusionXLInpaintPipeline, "xl-inpaint"): _ready(StableDiffusionXLInpaintPipeline.from_pretrained(
            family_models["xl-inpaint"], torch_dtype=torch.float32)),
    }


def stock_image(pipe, scheduler: str | None, settings: BatchSettings, row: RowInput) -> np.ndarray:
    pipe.scheduler = make_scheduler(scheduler, pipe.model_scheduler)
    return to_uint8(pipe(**stock_row_kwargs(row, settings), output_type="np").images[0])


def check_against_stock(engine, pipe, settings: BatchSettings, rows: list[RowInput]) -> None:
    images = engine.generate(settings, rows).images
    for row, image in zip(rows, images):
        assert image.shape == (settings.height, settings.width, 3)
        assert_close(image, stock_image(pipe, settings.scheduler, settings, row))


# -- the model -------------------------------------------------------------------------------------
def test_family_and_configs_are_read_from_the_model(family_models):
    xl, refiner, v = (load_model(family_models[k], "cpu") for k in ("xl", "xl-refiner", "v"))
    assert (xl.family, xl.requires_aesthetics_score, xl.force_zeros_for_empty_prompt) == ("sdxl", False, True)
    assert (refiner.family, refiner.requires_aesthetics_score, refiner.text_encoder_count) == ("sdxl", True, 1)
    assert (v.family, v.prediction_type) == ("sd", "v_prediction")
    assert xl.pipe.vae.config.force_upcast and xl.pipe.text_encoder_2.__class__.__name__ == "CLIPTextModelWithProjection"


def test_builtin_names_resolve_to_loadable_models():
    model = load_model(resolve_builtin_model("tiny:xl-inpaint"), "cpu")
    assert model.family == "sdxl" and model.unet_in_channels == 9
    with pytest.raises(ModelLoadError, match="tiny:xl-refiner"):
        resolve_builtin_model("tiny:xxl")


# -- equality with stock -----------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", list(SCHEDULER_NAMES) + [None])
def test_txt2img_equals_stock(engines, stock, scheduler):
    settings = BatchSettings(32, 32, STEPS, scheduler)
    check_against_stock(engines["xl"], stock[(StableDiffusionXLPipeline, "xl")], settings, xl_rows(4))


def test_non_square_txt2img_equals_stock(engines, stock):
    settings = BatchSettings(48, 32, STEPS, "euler")
    check_against_stock(engines["xl"], stock[(StableDiffusionXLPipeline, "xl")], settings, xl_rows(2, 48, 32))


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    mode: str
    stock: type
    strength: float = 0.8
    size: tuple[int, int] = (32, 32)


CASES = [
    Case("img2img", "xl", "img2img", StableDiffusionXLImg2ImgPipeline),
    Case("img2img-nonsquare", "xl", "img2img", StableDiffusionXLImg2ImgPipeline, 0.6, (48, 32)),
    Case("inpaint9-full", "xl-inpaint", "inpaint", StableDiffusionXLInpaintPipeline, 1.0),
    Case("inpaint9-partial", "xl-inpaint", "inpaint", StableDiffusionXLInpaintPipeline, 0.6, (32, 48)),
    Case("inpaint4-full", "xl", "inpaint", StableDiffusionXLInpaintPipeline, 1.0),
    Case("inpaint4-partial", "xl", "inpaint", StableDiffusionXLInpaintPipeline, 0.6),
]


def case_rows(case: Case, n: int) -> list[RowInput]:
    return xl_rows(n, *case.size, images=True, masks=case.mode == "inpaint")


@pytest.mark.parametrize("scheduler", IMAGE_SCHEDULERS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_image_modes_equal_stock(engines, stock, case, scheduler):
    settings = BatchSettings(*case.size, STEPS, scheduler, case.mode, case.strength)
    check_against_stock(engines[case.model], stock[(case.stock, case.model)], settings, case_rows(case, 3))


# -- batch invariance --------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["txt2img", "img2img", "inpaint"])
def test_batch_invariance(engines, mode):
    """16 rows with per-row guidance, rescale, second prompts, original size and crop in one batch."""
    engine = engines["xl-inpaint" if mode == "inpaint" else "xl"]
    rows = xl_rows(16, images=mode != "txt2img", masks=mode == "inpaint")
    settings = BatchSettings(32, 32, STEPS, "euler_a", mode, 0.7)
    batch = engine.generate(settings, rows).images
    for k in (0, 5, 15):
        assert_close(engine.generate(settings, [rows[k]]).images[0], batch[k])
    moved = engine.generate(settings, [rows[15]] + rows[3:9] + [rows[0]]).images
    assert_close(moved[0], batch[15])
    assert_close(moved[-1], batch[0])


# -- inputs reach the image ---------------------------------------------------------------------
def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() > 2  # well past the equality tolerance (1)


def test_each_sdxl_row_input_changes_the_image(engines):
    """Guards the equality tests: each SDXL input reaches the image (a lost input would pass them
    only if stock lost it too)."""
    engine, settings = engines["xl"], BatchSettings(32, 32, STEPS, "ddim")
    row = RowInput("a red fox in the snow", seed=3, guidance_scale=7.5)
    variants = [
        replace(row, prompt_2="a blue whale"),
        replace(row, negative_prompt="blurry"),
        replace(row, negative_prompt_2="blurry"),
        replace(row, original_width=256, original_height=512),
        replace(row, crop_top=200, crop_left=100),
        replace(row, target_width=512, target_height=256),
        replace(row, guidance_rescale=0.9),
    ]
    images = engine.generate(settings, [row] + variants).images
    for k in range(1, len(images)):
        assert _differ(images[0], images[k]), f"variant {k - 1} made no difference"


# -- what a model cannot run ----------------------------------------------------------------------
def test_depth2img_on_sdxl_is_refused_naming_what_it_needs(engines):
    row = xl_rows(1, images=True)[0]
    with pytest.raises(ModeError, match="SDXL model; depth2img needs an SD 2 depth model") as err:
        engines["xl"].generate(BatchSettings(32, 32, STEPS, "ddim", "depth2img"), [row])
    assert err.value.column == "mode"


def test_sdxl_inputs_are_refused_on_sd_models(tiny_base):
    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    for field, value in (("prompt_2", "x"), ("crop_top", 8), ("aesthetic_score", 5.0)):
        with pytest.raises(ModeError, match=f"{field} is used only by SDXL") as err:
            engine.generate(BatchSettings(32, 32, 2), [replace(RowInput("a", seed=0), **{field: value})])
        assert err.value.column == field


def test_refiner_style_model_refuses_txt2img_and_target_size(family_models):
    refiner = BatchedEngine(load_model(family_models["xl-refiner"], "cpu", "fp32"))
    with pytest.raises(ModeError, match="refiner-style"):
        refiner.generate(BatchSettings(32, 32, 2), [RowInput("a", seed=0)])
    row = replace(xl_rows(1, images=True)[0], target_width=64)
    with pytest.raises(ModeError, match="target_width"):
        refiner.generate(BatchSettings(32, 32, 4, mode="img2img"), [row])


# -- VAE configs stock reads ------------------------------------------------------------------------
def test_vae_latent_mean_and_std_are_used_as_stock_does(family_models, tmp_path):
    """Some SDXL-architecture models (e.g. Playground v2.5) normalise latents per channel."""
    folder = tmp_path / "xl-stats"
    shutil.copytree(family_models["xl"], folder)
    config_file = folder / "vae" / "config.json"
    config = json.loads(config_file.read_text())
    config.update(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.9, 1.2, 0.8, 1.1])
    config_file.write_text(json.dumps(config))
    engine = BatchedEngine(load_model(str(folder), "cpu", "fp32"))
    base = _ready(StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=torch.float32))
    check_against_stock(engine, base, BatchSettings(32, 32, STEPS, "ddim"), xl_rows(2))
    img2img = _ready(StableDiffusionXLImg2ImgPipeline.from_pipe(base))
    check_against_stock(engine, img2img, BatchSettings(32, 32, STEPS, "ddim", "img2img"), xl_rows(2, images=True))


def test_fp16_sdxl_runs_its_vae_in_fp32_as_stock_does(family_models):
    """SDXL's VAE overflows in fp16, so stock SDXL pipelines encode and decode in fp32 when the VAE
    config says force_upcast; the UNet stays fp16. (On the tiny model fp16 and fp32 VAEs give
    images within 1 of each other, so the precision is checked where the VAE runs.)"""
    engine = BatchedEngine(load_model(family_models["xl"], "cpu", "fp16"))
    seen = []
    hooks = [module.register_forward_pre_hook(lambda m, args: seen.append((m.__class__.__name__, args[0].dtype)))
             for module in (engine.pipe.vae.encoder, engine.pipe.vae.decoder, engine.pipe.unet)]
    try:
        image = engine.generate(BatchSettings(32, 32, 2, "euler", "img2img", 1.0), xl_rows(1, images=True)).images
    finally:
        for hook in hooks:
            hook.remove()
    assert dict(seen) == {"Encoder": torch.float32, "Decoder": torch.float32, "UNet2DConditionModel": torch.float16}
    assert image.shape == (1, 32, 32, 3)


def test_each_distinct_text_is_encoded_once_per_batch_and_encoder(engines):
    engine = engines["xl"]
    rows = xl_rows(16)  # 5 prompts, 2 second prompts, negatives shared between rows
    seen = {}
    hooks = [encoder.register_forward_pre_hook(lambda m, args, name=name: seen.setdefault(name, []).append(len(args[0])))
             for name, encoder in (("first", engine.pipe.text_encoder), ("second", engine.pipe.text_encoder_2))]
    try:
        engine.generate(BatchSettings(32, 32, 1, "ddim"), rows)
    finally:
        for hook in hooks:
            hook.remove()
    guided = [r for r in rows if r.guidance_scale > 1]
    firsts = {r.prompt for r in rows} | {r.negative_prompt for r in guided if r.negative_prompt or r.negative_prompt_2}
    seconds = ({r.prompt_2 or r.prompt for r in rows}
               | {r.negative_prompt_2 or r.negative_prompt for r in guided if r.negative_prompt or r.negative_prompt_2})
    assert seen == {"first": [len(firsts)], "second": [len(seconds)]}


def test_tiny_sdxl_pair_shares_vae_and_second_text_encoder_and_seed_fixes_weights():
    """Like the real SDXL base and refiner, the tiny pair shares its VAE and second text encoder,
    so a base's latents mean the same to its refiner; same seed, same weights."""
    from sdbatch.pipeline.tiny import build_tiny_pipeline

    base, again, refiner = (build_tiny_pipeline(v, seed=3) for v in ("xl", "xl", "xl-refiner"))
    other = build_tiny_pipeline("xl", seed=4)

    def same(a, b) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    assert same(base.unet, again.unet) and not same(base.unet, other.unet)
    assert same(base.vae, refiner.vae) and same(base.text_encoder_2, refiner.text_encoder_2)
