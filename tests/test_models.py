"""Tiny models are real diffusers folders: they load with stock pipelines and with our loader."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from diffusers import (
    StableDiffusionDepth2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)
from PIL import Image

from sdbatch.cli.main import main
from sdbatch.pipeline.loading import ModelLoadError, load_model


def test_tiny_models_load_with_stock_pipelines(tiny_models):
    image = Image.new("RGB", (32, 32), (120, 40, 200))
    mask = Image.new("L", (32, 32), 255)
    kw = dict(num_inference_steps=3, output_type="np", generator=torch.Generator("cpu").manual_seed(0))
    base = StableDiffusionPipeline.from_pretrained(tiny_models["base"])
    assert base(prompt="a cat", **kw).images.shape == (1, 32, 32, 3)
    inpaint = StableDiffusionInpaintPipeline.from_pretrained(tiny_models["inpaint"])
    assert inpaint.unet.config.in_channels == 9
    assert inpaint(prompt="a cat", image=image, mask_image=mask, **kw).images.shape == (1, 32, 32, 3)
    depth = StableDiffusionDepth2ImgPipeline.from_pretrained(tiny_models["depth"])
    assert depth.unet.config.in_channels == 5
    assert depth(prompt="a cat", image=image, **kw).images.shape == (1, 32, 32, 3)


def _weights_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_tiny_model_cli_same_seed_same_weights(tmp_path):
    runner = CliRunner()
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        result = runner.invoke(main, ["tiny-model", str(tmp_path / name), "--seed", seed])
        assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert "model_index.json" in files and "diffusion_pytorch_model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".ckpt"))]
    assert _weights_digest(tmp_path / "a") == _weights_digest(tmp_path / "b")
    assert _weights_digest(tmp_path / "a") != _weights_digest(tmp_path / "c")


def test_loader_reads_architecture_from_configs(tiny_models):
    base = load_model(tiny_models["base"], "cpu")
    assert (base.vae_scale_factor, base.latent_channels, base.default_size) == (8, 4, 32)
    assert base.dtype == torch.float32 and not base.has_depth_estimator
    assert load_model(tiny_models["depth"], "cpu").has_depth_estimator


def test_pickle_checkpoints_are_refused(tiny_base, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base)
    folder = tmp_path / "pickled"
    pipe.save_pretrained(folder, safe_serialization=False)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(folder), "cpu")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_model(str(tmp_path), "cpu")
    with pytest.raises(ModelLoadError, match="nobody/no-such-model"):
        load_model("nobody/no-such-model", "cpu")


def test_tiny_depth_estimator_gives_a_usable_depth_map_in_half_precision(tiny_models):
    pipe = StableDiffusionDepth2ImgPipeline.from_pretrained(tiny_models["depth"])
    image = Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(0)) * 255)
                            .to(torch.uint8).numpy())
    pixels = pipe.feature_extractor(images=image, return_tensors="pt").pixel_values
    with torch.no_grad():
        depth = pipe.depth_estimator.half()(pixels.half()).predicted_depth
    assert torch.isfinite(depth).all() and depth.float().std() > 1e-4  # not constant after fp16 rounding
