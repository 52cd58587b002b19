"""`sdbatch run` end to end in one process: images plus the metadata contract."""

from __future__ import annotations


import numpy as np
from PIL import Image

from helpers import write_manifest
from helpers import invoke, read_metadata

CONTRACT = ["id", "status", "error", "image", "prompt", "negative_prompt", "seed", "guidance_scale",
            "steps", "width", "height", "scheduler", "model"]


def test_run_writes_one_image_and_metadata_row_per_manifest_row(tiny_base, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": [f"img-{i}" for i in range(6)],
        "prompt": ["a cat", "a dog", "a cat", "a house", "a tree", "a car"],
        "negative_prompt": ["", "blurry", None, "", "", ""],
        "seed": [1, 2, 3, 4, 5, 6],
        "guidance_scale": [7.5, 1.0, 4.0, 7.5, 7.5, 2.0],
        "steps": [5, 5, 5, 5, 8, 5],
        "scheduler": ["ddim", "ddim", "ddim", "ddim", "euler_a", None],
        "label": ["x", "y", "z", "x", "y", "z"],
    })
    out = tmp_path / "out"
    result = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu", "--executor", "local",
                     "--batch-size", "4")
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in read_metadata(out)}
    assert sorted(rows) == [f"img-{i}" for i in range(6)]
    for name in CONTRACT:
        assert name in next(iter(rows.values())), name
    for row in rows.values():
        assert row["status"] == "ok" and row["error"] is None
        image = Image.open(out / row["image"])
        assert image.size == (32, 32) and image.mode == "RGB"
        assert row["model"] == tiny_base and row["width"] == 32 and row["height"] == 32
    assert rows["img-5"]["scheduler"] == "pndm"  # the model's own, recorded by name
    assert rows["img-4"]["scheduler"] == "euler_a" and rows["img-4"]["steps"] == 8
    assert rows["img-2"]["negative_prompt"] == "" and rows["img-1"]["negative_prompt"] == "blurry"
    assert rows["img-0"]["label"] == "x"  # user columns carried through


def test_same_rows_same_images_whatever_the_batch_size(tiny_base, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": [f"r{i}" for i in range(5)], "prompt": [f"prompt {i}" for i in range(5)],
        "seed": list(range(5)), "steps": [4] * 5,
    })
    pixels = []
    for batch in ("1", "5"):
        out = tmp_path / f"out{batch}"
        assert invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu", "--executor", "local",
                       "--batch-size", batch).exit_code == 0
        meta = sorted(read_metadata(out), key=lambda r: r["id"])
        pixels.append(np.stack([np.asarray(Image.open(out / r["image"])) for r in meta]).astype(int))
    assert np.abs(pixels[0] - pixels[1]).max() <= 1


def test_rows_without_id_or_seed_get_stable_ones(tiny_base, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a", "b"], "steps": [3, 3]})
    runs = []
    for name in ("o1", "o2"):
        assert invoke("run", str(manifest), "--model", tiny_base, "--out", str(tmp_path / name),
                       "--device", "cpu", "--executor", "local").exit_code == 0
        runs.append(sorted((r["id"], r["seed"]) for r in read_metadata(tmp_path / name)))
    assert runs[0] == runs[1]
    assert len({seed for _, seed in runs[0]}) == 2


def test_default_model_is_the_builtin_tiny_one(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["hello"], "steps": [2]})
    result = invoke("run", str(manifest), "--out", str(tmp_path / "out"), "--device", "cpu", "--executor", "local")
    assert result.exit_code == 0, result.output
    (row,) = read_metadata(tmp_path / "out")
    assert row["status"] == "ok" and row["model"] == "tiny"  # recorded as written


def test_builtin_model_names_work_in_the_model_column(tiny_base, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a", "b"], "steps": [2, 2],
                                                       "model": ["tiny", None]})
    result = invoke("run", str(manifest), "--model", tiny_base, "--out", str(tmp_path / "out"),
                     "--device", "cpu", "--executor", "local")
    assert result.exit_code == 0, result.output
    rows = read_metadata(tmp_path / "out")
    assert sorted(r["model"] for r in rows) == sorted(["tiny", tiny_base]) and all(r["status"] == "ok" for r in rows)
