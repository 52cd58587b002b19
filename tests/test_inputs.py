"""Row inputs are read, checked and sized before batching: bad input fails its row alone, with an
error naming the row, the column and the cause; good input gets its effective size and trace."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusionDepth2ImgPipeline
from PIL import Image

from sdbatch.jobs.worker.inputs import FailedRow, ReadyRow, prepare_row, prepare_rows
from sdbatch.manifests.schema import GenerationRow
from sdbatch.pipeline.loading import load_model
from helpers import png


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def make_row(**kw) -> GenerationRow:
    base = dict(row_index=3, key="row-a", id="row-a", prompt="a cat", seed=1, steps=10)
    base.update(kw)
    return GenerationRow(**base)


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory):
    """The tiny models, plus a real depth model folder saved without its depth estimator."""
    depth = StableDiffusionDepth2ImgPipeline.from_pretrained(tiny_models["depth"])
    folder = tmp_path_factory.mktemp("depth-no-estimator")
    StableDiffusionDepth2ImgPipeline(
        vae=depth.vae, text_encoder=depth.text_encoder, tokenizer=depth.tokenizer, unet=depth.unet,
        scheduler=depth.scheduler, depth_estimator=None, feature_extractor=None,
    ).save_pretrained(folder, safe_serialization=True)
    names = {**tiny_models, "depth-no-estimator": str(folder)}
    return {name: load_model(path, "cpu", "fp32") for name, path in names.items()}


def prepare(row: GenerationRow, models, variant: str = "base"):
    return prepare_row(replace(row, model=models[variant].name), lambda name: models[variant])


def failure(row: GenerationRow, models, variant: str = "base") -> str:
    result = prepare(row, models, variant)
    assert isinstance(result, FailedRow), result
    assert "row 'row-a' (manifest row 3)" in result.error
    return result.error


def test_missing_file_names_row_column_and_path(models, tmp_path):
    error = failure(make_row(mode="img2img", init_image=str(tmp_path / "nope.png")), models)
    assert "column init_image: file not found" in error and "nope.png" in error


def test_a_file_that_is_not_an_image(models, tmp_path):
    path = write(tmp_path / "notes.png", b"these are words, not pixels")
    assert "column init_image: not an image" in failure(make_row(mode="img2img", init_image=path), models)
    assert "column init_image: not an image" in failure(make_row(mode="img2img", init_image=b"\x00" * 40), models)


def test_truncated_image_is_refused(models):
    data = png(32, 32)[:200]
    assert "column init_image" in failure(make_row(mode="img2img", init_image=data), models)


def test_mask_must_match_the_image_size(models, tmp_path):
    row = make_row(mode="inpaint", init_image=png(32, 32), mask_image=png(32, 24, mode="L"))
    error = failure(row, models, "inpaint")
    assert "column mask_image: mask is 32x24 but init_image is 32x32" in error


def test_image_too_small_for_the_model(models):
    # tiny model: 8x VAE and two UNet down blocks, so at least 8 * 2**1 = 16 pixels a side
    assert models["base"].min_size == 16
    error = failure(make_row(mode="img2img", init_image=png(8, 24)), models)
    assert "column init_image: image too small: 8x24" in error and "16x16" in error
    assert isinstance(prepare(make_row(mode="img2img", init_image=png(16, 16)), models), ReadyRow)
    assert "column width: 8 is below" in failure(make_row(width=8, height=32), models)


def test_size_must_fit_the_vae(models):
    assert "column height: 36 is not a multiple of 8" in failure(make_row(width=32, height=36), models)


def test_size_comes_from_the_init_image(models):
    data = png(48, 32)
    ready = prepare(make_row(mode="img2img", init_image=data), models)
    assert (ready.settings.width, ready.settings.height) == (48, 32)
    assert ready.input.init_image.size == (48, 32)
    assert ready.trace.init_image_resized is False
    assert ready.trace.init_image_sha256 == hashlib.sha256(data).hexdigest()
    assert (ready.trace.init_image_width, ready.trace.init_image_height) == (48, 32)


def test_image_is_resized_to_the_rows_size_and_the_trace_says_so(models):
    row = make_row(mode="inpaint", init_image=png(48, 40), mask_image=png(48, 40, mode="L"),
                   width=32, height=32, strength=0.5)
    ready = prepare(row, models, "inpaint")
    assert (ready.settings.width, ready.settings.height, ready.settings.strength) == (32, 32, 0.5)
    assert ready.input.init_image.size == ready.input.mask_image.size == (32, 32)
    assert ready.trace.init_image_resized is True
    assert (ready.trace.init_image_width, ready.trace.init_image_height) == (48, 40)


def test_odd_image_size_is_rounded_down_as_diffusers_does(models):
    ready = prepare(make_row(mode="img2img", init_image=png(37, 41)), models)
    assert (ready.settings.width, ready.settings.height) == (32, 40)
    assert ready.input.init_image.size == (32, 40) and ready.trace.init_image_resized is True


def test_path_uri_and_bytes_cells_read_the_same_image(models, tmp_path):
    data = png(32, 32, seed=5)
    path = write(tmp_path / "in.png", data)
    results = [prepare(make_row(mode="img2img", init_image=cell), models)
               for cell in (path, Path(path).as_uri(), data)]
    assert len({r.trace.init_image_sha256 for r in results}) == 1
    pixels = [np.asarray(r.input.init_image) for r in results]
    assert all((p == pixels[0]).all() for p in pixels)


def test_unsupported_uri_scheme(models):
    error = failure(make_row(mode="img2img", init_image="gs://bucket/cat.png"), models)
    assert "column init_image" in error and "gs:// URIs are not supported" in error


def test_a_row_with_an_image_its_mode_does_not_use_fails_alone(models):
    """(Missing images, unknown modes and out-of-range values are validation's: test_manifest_validation.)"""
    error = failure(make_row(init_image=png(32, 32)), models)
    assert "column init_image: given, but mode txt2img does not use it" in error


def test_strength_must_leave_a_step(models):
    image = png(32, 32)
    assert "leaves no denoising step" in failure(
        make_row(mode="img2img", init_image=image, strength=0.05, steps=10), models)


def test_mode_must_suit_the_model(models):
    image = png(32, 32)
    error = failure(make_row(mode="depth2img", init_image=image), models, "base")
    assert "column mode" in error and "needs a depth model" in error
    error = failure(make_row(mode="img2img", init_image=image), models, "inpaint")
    assert "9-channel inpainting UNet" in error
    plain_inpaint = make_row(mode="inpaint", init_image=image, mask_image=image)
    assert isinstance(prepare(plain_inpaint, models, "base"), ReadyRow)


def test_depth_without_estimator_needs_a_depth_map(models):
    image = png(32, 32)
    error = failure(make_row(mode="depth2img", init_image=image), models, "depth-no-estimator")
    assert "column depth_map: not given" in error and "no depth estimator" in error
    depth = png(20, 12, seed=3, mode="L")
    ready = prepare(make_row(mode="depth2img", init_image=image, depth_map=depth), models, "depth-no-estimator")
    assert ready.input.depth_map.shape == (12, 20)
    assert ready.trace.depth_map_sha256 == hashlib.sha256(depth).hexdigest()


def test_sixteen_bit_depth_maps_keep_their_precision(models):
    buf = io.BytesIO()
    levels = np.arange(600, dtype=np.uint16).reshape(20, 30) * 109  # up to 65_291: more than 8 bits
    Image.fromarray(levels).save(buf, format="PNG")
    ready = prepare(make_row(mode="depth2img", init_image=png(32, 32), depth_map=buf.getvalue()),
                    models, "depth")
    assert len(np.unique(ready.input.depth_map)) == 600
    assert (ready.input.depth_map.min(), ready.input.depth_map.max()) == (0.0, 1.0)


def test_constant_depth_map_is_refused(models):
    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, format="PNG")
    error = failure(make_row(mode="depth2img", init_image=png(32, 32), depth_map=buf.getvalue()),
                    models, "depth")
    assert "column depth_map: the depth map is constant" in error


def test_a_model_that_cannot_load_fails_its_rows_and_is_tried_once(tmp_path):
    calls = []

    def model_for(name):
        calls.append(name)
        return load_model(name, "cpu")

    rows = [make_row(model=str(tmp_path), row_index=i) for i in range(3)]
    results = prepare_rows(rows, model_for)
    assert all(isinstance(r, FailedRow) and "column model: cannot load the model" in r.error for r in results)
    assert "no model_index.json" in results[0].error
    assert calls == [str(tmp_path)]
