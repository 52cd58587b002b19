"""`sdbatch run` on one manifest mixing all four modes, per-row models and bad rows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import invoke, read_metadata
from helpers import png


FILES = {
    "photo.png": png(48, 32, 1),
    "mask.png": png(48, 32, 2, "L"),
    "square.png": png(40, 40, 3),
    "mask32.png": png(32, 32, 4, "L"),
    "small.png": png(8, 8, 5),
    "notes.png": b"not an image at all",
}
DEPTH = png(12, 10, 6, "L")

# id, mode, model variant (None: --model), init_image, mask_image, depth_map bytes, width, height, strength
ROWS = [
    ("t2i", "txt2img", None, None, None, None, None, None, None),
    ("i2i", "img2img", None, "photo.png", None, None, None, None, 0.6),
    ("i2i-resized", "img2img", None, "square.png", None, None, 32, 32, None),
    ("bad-missing", "img2img", None, "missing.png", None, None, None, None, None),
    ("inp9", "inpaint", "inpaint", "photo.png", "mask.png", None, None, None, 1.0),
    ("inp4", "inpaint", None, "photo.png", "mask.png", None, None, None, 0.75),
    ("bad-mask-size", "inpaint", "inpaint", "photo.png", "mask32.png", None, None, None, None),
    ("d2i", "depth2img", "depth", "square.png", None, None, None, None, None),
    ("d2i-given", "depth2img", "depth", "photo.png", None, DEPTH, None, None, 0.9),
    ("bad-not-image", "img2img", None, "notes.png", None, None, None, None, None),
    ("bad-too-small", "img2img", None, "small.png", None, None, None, None, None),
    ("bad-no-depth-model", "depth2img", None, "photo.png", None, None, None, None, None),
    ("t2i-wide", "txt2img", None, None, None, None, 48, 32, None),
]
EXPECTED_SIZE = {"t2i": (32, 32), "i2i": (48, 32), "i2i-resized": (32, 32), "inp9": (48, 32), "inp4": (48, 32),
                 "d2i": (40, 40), "d2i-given": (48, 32), "t2i-wide": (48, 32)}
EXPECTED_ERROR = {
    "bad-missing": "column init_image: file not found",
    "bad-mask-size": "column mask_image: mask is 32x32 but init_image is 48x32",
    "bad-not-image": "column init_image: not an image",
    "bad-too-small": "column init_image: image too small: 8x8",
    "bad-no-depth-model": "column mode",
}


def write_mixed_manifest(folder: Path, tiny_models: dict[str, str]) -> Path:
    """Image paths relative to the manifest (string columns); depth maps as bytes (binary column)."""
    (folder / "inputs").mkdir(parents=True)
    for name, data in FILES.items():
        (folder / "inputs" / name).write_bytes(data)
    column = {name: [row[i] for row in ROWS] for i, name in enumerate(
        ["id", "mode", "model", "init_image", "mask_image", "depth_map", "width", "height", "strength"])}
    table = pa.table({
        "id": pa.array(column["id"], pa.string()),
        "prompt": pa.array([f"a picture of {i}" for i in column["id"]], pa.string()),
        "negative_prompt": pa.array(["blurry" if i % 3 else "" for i in range(len(ROWS))], pa.string()),
        "seed": pa.array([1000 + i for i in range(len(ROWS))], pa.uint64()),
        "guidance_scale": pa.array([[7.5, 1.0][i % 2] for i in range(len(ROWS))], pa.float64()),
        "steps": pa.array([5] * len(ROWS), pa.int64()),
        "scheduler": pa.array(["euler_a"] * len(ROWS), pa.string()),
        "mode": pa.array(column["mode"], pa.string()),
        "model": pa.array([tiny_models[m] if m else None for m in column["model"]], pa.string()),
        "init_image": pa.array([f"inputs/{p}" if p else None for p in column["init_image"]], pa.string()),
        "mask_image": pa.array([f"inputs/{p}" if p else None for p in column["mask_image"]], pa.string()),
        "depth_map": pa.array(column["depth_map"], pa.binary()),
        "width": pa.array(column["width"], pa.int64()),
        "height": pa.array(column["height"], pa.int64()),
        "strength": pa.array(column["strength"], pa.float64()),
    })
    path = folder / "manifest.parquet"
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def mixed_run(tiny_models, tmp_path_factory):
    """The mixed manifest run twice, with batch sizes 16 and 1."""
    folder = tmp_path_factory.mktemp("mixed")
    manifest = write_mixed_manifest(folder / "job", tiny_models)
    runs = {}
    for batch in ("16", "1"):
        out = folder / f"out-{batch}"
        result = invoke("run", str(manifest), "--model", tiny_models["base"], "--out", str(out),
                         "--device", "cpu", "--batch-size", batch, "--executor", "local")
        runs[batch] = (result, out, {r["id"]: r for r in read_metadata(out)})
    return runs


def test_every_good_row_gets_its_image_and_the_exit_code_says_some_failed(mixed_run):
    result, out, meta = mixed_run["16"]
    assert result.exit_code == 1, result.output
    assert f"{len(EXPECTED_SIZE)} ok, {len(EXPECTED_ERROR)} failed of {len(ROWS)} rows" in result.output
    assert sorted(meta) == sorted(r[0] for r in ROWS)
    for row_id, (width, height) in EXPECTED_SIZE.items():
        row = meta[row_id]
        assert row["status"] == "ok" and row["error"] is None, row
        image = Image.open(out / row["image"])
        assert image.size == (width, height) and image.mode == "RGB"
        assert (row["width"], row["height"]) == (width, height)


def test_every_bad_row_gets_an_error_naming_row_column_and_cause(mixed_run):
    _, _, meta = mixed_run["16"]
    for row_id, cause in EXPECTED_ERROR.items():
        row = meta[row_id]
        assert row["status"] == "error" and row["image"] is None
        assert f"row {row_id!r}" in row["error"] and cause in row["error"], row["error"]
    assert "depth model" in meta["bad-no-depth-model"]["error"]


def test_metadata_traces_each_image_to_its_inputs(mixed_run):
    _, _, meta = mixed_run["16"]
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    for row_id, mode, _, init, mask, depth, _, _, strength in ROWS:
        row = meta[row_id]
        assert row["mode"] == mode
        assert row["strength"] == (None if mode == "txt2img" else strength or 0.8)
        if row["status"] == "ok" or row_id == "bad-mask-size":  # hashes are known once the files are read
            assert row["init_image_sha256"] == (sha[init] if init else None)
            assert row["mask_image_sha256"] == (sha[mask] if mask else None)
        assert row["depth_map_sha256"] == (hashlib.sha256(depth).hexdigest() if depth else None)
    assert meta["i2i-resized"]["init_image_resized"] is True
    assert (meta["i2i-resized"]["init_image_width"], meta["i2i-resized"]["init_image_height"]) == (40, 40)
    assert meta["i2i"]["init_image_resized"] is False
    assert meta["t2i"]["init_image_resized"] is None and meta["t2i"]["init_image_sha256"] is None


def test_same_row_same_image_whatever_the_batch_size(mixed_run):
    _, out16, meta16 = mixed_run["16"]
    result, out1, meta1 = mixed_run["1"]
    assert result.exit_code == 1
    for row_id in EXPECTED_SIZE:
        a = np.asarray(Image.open(out16 / meta16[row_id]["image"])).astype(int)
        b = np.asarray(Image.open(out1 / meta1[row_id]["image"])).astype(int)
        assert np.abs(a - b).max() <= 1, row_id
