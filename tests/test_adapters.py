"""Textual inversion and LoRA in the engine: rows equal stock diffusers with the same
``load_textual_inversion``, ``load_lora_weights`` and ``set_adapters`` weights, whatever order the
LoRA groups come in (an adapter never lingers into the next group), and batch-invariant."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

from conftest import invoke, stock_row_kwargs, to_uint8
from sdbatch.pipeline.adapters import load_embedding
from sdbatch.pipeline.batch import LoraWeight
from sdbatch.pipeline.engine import BatchedEngine, BatchSettings, RowInput
from sdbatch.pipeline.loading import load_model
from sdbatch.pipeline.schedulers import make_scheduler
from test_engine import assert_close

STEPS = 3
SETTINGS = BatchSettings(32, 32, STEPS, "ddim")
TOKEN = "<tiny-style>"


def sha256(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def lora(path: str, weight: float) -> LoraWeight:
    return LoraWeight(path, weight, sha256(path))


def stock_pipe(cls, folder: str):
    pipe = cls.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(SETTINGS.scheduler, pipe.scheduler)
    return pipe


def stock_image(pipe, row: RowInput, family: str = "sd") -> np.ndarray:
    return to_uint8(pipe(**stock_row_kwargs(row, SETTINGS, family), output_type="np").images[0])


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return np.abs(a.astype(int) - b.astype(int)).max() > 5


ROWS = [RowInput(f"a {TOKEN} fox in the snow", seed=41, negative_prompt="blurry"),
        RowInput("an old lighthouse", seed=42, guidance_scale=1.0),
        RowInput("a tall tower", seed=43, negative_prompt="ugly")]


# -- textual inversion ---------------------------------------------------------------------------
def test_textual_inversion_rows_equal_stock_sd(tiny_base, tiny_adapters):
    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    assert load_embedding(engine.model, tiny_adapters["embedding"], TOKEN) == ["text_encoder"]
    pipe = stock_pipe(StableDiffusionPipeline, tiny_base)
    plain = stock_image(pipe, ROWS[0])
    pipe.load_textual_inversion(tiny_adapters["embedding"], token=TOKEN)
    images = engine.generate(SETTINGS, ROWS[:2]).images
    assert_close(images[0], stock_image(pipe, ROWS[0]))
    assert differ(images[0], plain)  # the token means its vectors, not its letters
    assert_close(images[1], stock_image(pipe, ROWS[1]))


def test_textual_inversion_goes_into_both_sdxl_encoders(family_models, tiny_adapters):
    engine = BatchedEngine(load_model(family_models["xl"], "cpu", "fp32"))
    assert load_embedding(engine.model, tiny_adapters["embedding-xl"], TOKEN) == ["text_encoder", "text_encoder_2"]
    pipe = stock_pipe(StableDiffusionXLPipeline, family_models["xl"])
    vectors = load_file(tiny_adapters["embedding-xl"])
    pipe.load_textual_inversion(vectors["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(vectors["clip_g"], token=TOKEN, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    image = engine.generate(SETTINGS, ROWS[:1]).images[0]
    assert_close(image, stock_image(pipe, ROWS[0], "sdxl"))


def test_an_embedding_that_fits_no_encoder_is_refused(tiny_base, tmp_path):
    path = tmp_path / "wide.safetensors"
    save_file({TOKEN: torch.zeros(1, 99)}, str(path))
    with pytest.raises(ValueError, match="fits none"):
        load_embedding(load_model(tiny_base, "cpu", "fp32"), str(path), TOKEN)


# -- LoRA ----------------------------------------------------------------------------------------
def test_lora_groups_equal_stock_in_any_order(tiny_base, tiny_adapters):
    """Two LoRA groups (one with text-encoder weights, one UNet-only), both together and a no-LoRA
    group, one engine, several orders; the second pass with a cache of one adapter."""
    a, b = tiny_adapters["lora-a"], tiny_adapters["lora-b"]
    pipe = stock_pipe(StableDiffusionPipeline, tiny_base)
    rows = ROWS[1:]
    reference = {"none": [stock_image(pipe, r) for r in rows]}
    pipe.load_lora_weights(a, adapter_name="a")
    pipe.load_lora_weights(b, adapter_name="b")
    groups = {"none": (), "a": (lora(a, 0.7),), "b": (lora(b, 1.2),), "ab": (lora(a, 0.5), lora(b, 0.8))}
    for name, names, weights in (("a", ["a"], [0.7]), ("b", ["b"], [1.2]), ("ab", ["a", "b"], [0.5, 0.8])):
        pipe.set_adapters(names, adapter_weights=weights)
        reference[name] = [stock_image(pipe, r) for r in rows]
    assert differ(reference["a"][0], reference["none"][0]) and differ(reference["b"][0], reference["none"][0])

    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    for capacity, order in ((8, ["a", "none", "b", "ab", "a"]), (1, ["ab", "b", "none", "a", "b"])):
        engine.adapters.capacity = capacity
        for name in order:
            images = engine.generate(replace(SETTINGS, loras=groups[name]), rows).images
            for image, expected in zip(images, reference[name]):
                assert_close(image, expected)
            assert len(engine.adapters.loaded) <= max(capacity, len(groups[name]))


def test_lora_rows_are_batch_invariant(tiny_base, tiny_adapters):
    engine = BatchedEngine(load_model(tiny_base, "cpu", "fp32"))
    settings = replace(SETTINGS, loras=(lora(tiny_adapters["lora-a"], 0.9),))
    rows = ROWS[1:] + [RowInput("a (small:1.3) boat", seed=44, negative_prompt="ugly", prompt_syntax="a1111",
                                clip_skip=1)]
    batch = engine.generate(settings, rows).images
    for k, row in enumerate(rows):
        assert_close(engine.generate(settings, [row]).images[0], batch[k])


def test_sdxl_lora_equals_stock(family_models, tiny_adapters):
    engine = BatchedEngine(load_model(family_models["xl"], "cpu", "fp32"))
    pipe = stock_pipe(StableDiffusionXLPipeline, family_models["xl"])
    pipe.load_lora_weights(tiny_adapters["lora-xl"], adapter_name="xl")
    pipe.set_adapters(["xl"], adapter_weights=[0.6])
    row = RowInput("a red fox", seed=45, negative_prompt="blurry", prompt_2="oil painting")
    image = engine.generate(replace(SETTINGS, loras=(lora(tiny_adapters["lora-xl"], 0.6),)), [row]).images[0]
    assert_close(image, stock_image(pipe, row, "sdxl"))


def test_tiny_lora_command_writes_a_lora_diffusers_loads(tmp_path, tiny_base):
    result = invoke("tiny-lora", str(tmp_path), "--model", tiny_base, "--name", "style", "--seed", "5")
    assert result.exit_code == 0, result.output
    path = tmp_path / "style.safetensors"
    keys = set(load_file(str(path)))
    assert any(k.startswith("unet.") for k in keys) and any(k.startswith("text_encoder.") for k in keys)
    pipe = stock_pipe(StableDiffusionPipeline, tiny_base)
    pipe.load_lora_weights(str(path), adapter_name="style")
    assert "style" in pipe.get_list_adapters()["unet"]
