"""Output formats and layouts as training code reads them: `datasets` imagefolder on a `files`
output, the `webdataset` library on a `webdataset` output, the `parameters` text other SD tools
read, and the dataset-ready metadata columns."""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from helpers import write_manifest
from sdbatch.jobs.store.image_encoding import embedded_parameters
from helpers import invoke, read_metadata

ROWS = {
    "id": ["fox.1", "cat", "owl", "bad", "elk"],
    "prompt": ["a red fox, in snow", "a cat", "an owl", "a broken row", "an elk"],
    "negative_prompt": ["blurry", "", "", "", "dark"],
    "seed": [1234, 2, 3, 4, 5],
    "guidance_scale": [7.5, 1.0, 4.0, 7.5, 3.0],
    "steps": [4, 4, 3, 4, 4],
    "scheduler": ["euler_a", "ddim", "dpmpp_2m_karras", "ddim", None],
    "mode": ["txt2img", "txt2img", "txt2img", "img2img", "txt2img"],
    "init_image": [None, None, None, "missing.png", None],
    "label": ["wild", "pet", "wild", "none", "wild"],
}
OK_IDS = {"fox.1", "cat", "owl", "elk"}
DATASET_COLUMNS = {"prompt", "negative_prompt", "seed", "guidance_scale", "steps", "scheduler", "width",
                   "height", "timestamp", "model", "model_revision", "mode", "strength",
                   "init_image_sha256", "sdbatch_version", "diffusers_version", "torch_version",
                   "device_name", "seconds", "latency_seconds", "label"}


@pytest.fixture
def manifest(tmp_path) -> Path:
    return write_manifest(tmp_path / "m.parquet", ROWS)


def run(manifest: Path, out: Path, model: str, *extra: str):
    return invoke("run", str(manifest), "--model", model, "--out", str(out), "--device", "cpu",
                   "--executor", "local", "--shard-size", "2", "--batch-size", "2", *extra)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_files_layout_loads_with_datasets_imagefolder_with_parameters_as_columns(manifest, tiny_base, tmp_path):
    out = tmp_path / "out"
    assert run(manifest, out, tiny_base).exit_code == 1  # the bad row fails alone
    meta = {r["id"]: r for r in read_metadata(out)}
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert DATASET_COLUMNS <= set(loaded.column_names) and "image" in loaded.column_names
    assert sorted(loaded["id"]) == sorted(OK_IDS)  # error rows have no image, so no sample
    for sample in loaded:
        row = meta[sample["id"]]
        for column in ("prompt", "negative_prompt", "guidance_scale", "steps", "scheduler", "label"):
            assert sample[column] == row[column], column
        assert sample["seed"] == str(row["seed"])  # the seed's exact text (uint64 does not fit datasets)
        assert (pixels(sample["image"]) == pixels(Image.open(out / row["image"]))).all()
    assert loaded.features["timestamp"].dtype.startswith("timestamp")


def test_ids_with_split_words_are_warned_about_and_load_with_data_files(tiny_base, tmp_path):
    ids = ["test-1", "cat", "train_2", "val.3"]
    manifest = write_manifest(tmp_path / "m.parquet", {"id": ids, "prompt": ids, "steps": [2] * 4})
    out = tmp_path / "out"
    result = run(manifest, out, tiny_base)
    assert result.exit_code == 0
    # "val.3" is written as val~2e3.png: "~" is no separator to datasets, so no split name there
    assert "2 row id(s) such as 'test-1' hold a word datasets reads as a split name" in result.output
    loaded = datasets.load_dataset("imagefolder", data_files={"train": f"{out}/images/**"}, split="train",
                                   cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(loaded["id"]) == sorted(ids) and "prompt" in loaded.column_names
    seeds = {r["id"]: r["seed"] for r in read_metadata(out)}
    assert any(seed >= 2**63 for seed in seeds.values())  # derived seeds span all of uint64 ...
    assert {s["id"]: int(s["seed"]) for s in loaded} == seeds  # ... and load exactly


def test_webdataset_layout_loads_with_webdataset_and_matches_the_files_images(manifest, tiny_base, tmp_path):
    files_out, wds_out = tmp_path / "files", tmp_path / "wds"
    assert run(manifest, files_out, tiny_base, "--format", "webp").exit_code == 1
    assert run(manifest, wds_out, tiny_base, "--format", "webp", "--layout", "webdataset").exit_code == 1
    assert not (wds_out / "images").exists()
    tars = sorted((wds_out / "shards").glob("*.tar"))
    plan = json.loads((wds_out / "_job" / "plan.json").read_text())
    assert [t.stem for t in tars] == [s["name"] for s in plan["shards"]]  # one tar per shard
    meta = {r["id"]: r for r in read_metadata(wds_out)}
    reference = {r["id"]: r for r in read_metadata(files_out)}
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False).decode("pil"))
    assert sorted(s["json"]["id"] for s in samples) == sorted(OK_IDS)
    for sample in samples:
        row = meta[sample["json"]["id"]]
        assert set(sample) >= {"webp", "json"}
        assert row["image"] == f"shards/{row['shard']}.tar#{sample['__key__']}.webp"
        assert sample["json"]["seed"] == row["seed"] and sample["json"]["prompt"] == row["prompt"]
        assert sample["json"]["label"] == row["label"]
        same_row = Image.open(files_out / reference[row["id"]]["image"])
        assert (pixels(sample["webp"]) == pixels(same_row)).all()  # same row, same image, either layout
    assert meta["bad"]["status"] == "error" and meta["bad"]["image"] is None
    assert invoke("verify", str(wds_out)).exit_code == 0


def test_verify_checks_webdataset_members(manifest, tiny_base, tmp_path):
    out = tmp_path / "out"
    run(manifest, out, tiny_base, "--layout", "webdataset")
    assert invoke("verify", str(out)).exit_code == 0
    fox = next(r for r in read_metadata(out) if r["id"] == "fox.1")
    tar_file = out / "shards" / f"{fox['shard']}.tar"
    with tarfile.open(tar_file) as tar:
        kept = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if not m.name.endswith(".png")]
    with tarfile.open(tar_file, "w") as tar:  # the shard's images are gone, their JSON stays
        for member, data in kept:
            tar.addfile(member, io.BytesIO(data))
    result = invoke("verify", str(out))
    assert result.exit_code == 1
    assert f"image {fox['image']} is missing" in result.output
    assert f"stray member shards/{fox['shard']}.tar#fox~2e1.json" in result.output  # its JSON, now alone


def test_png_parameters_chunk_holds_the_rows_settings(manifest, tiny_base, tmp_path):
    out = tmp_path / "out"
    run(manifest, out, tiny_base)
    meta = {r["id"]: r for r in read_metadata(out)}
    fox = Image.open(out / meta["fox.1"]["image"])
    text = fox.info["parameters"]
    lines = text.split("\n")
    assert lines[0] == "a red fox, in snow" and lines[1] == "Negative prompt: blurry"
    settings = lines[2]
    for part in ("Steps: 4", "Sampler: Euler a", "CFG scale: 7.5", "Seed: 1234", "Size: 32x32",
                 f"Model: {tiny_base}", "Version: sdbatch "):
        assert part in settings, (part, settings)
    cat = Image.open(out / meta["cat"]["image"]).info["parameters"].split("\n")
    assert len(cat) == 2 and "Sampler: DDIM" in cat[1] and "CFG scale: 1," in cat[1]  # no negative line
    owl = Image.open(out / meta["owl"]["image"]).info["parameters"]
    assert "Sampler: DPM++ 2M Karras" in owl
    elk = Image.open(out / meta["elk"]["image"]).info["parameters"]
    assert "Sampler: PLMS" in elk  # the model's own scheduler (PNDM), by the name those tools use


def test_jpeg_carries_parameters_in_exif_and_quality_changes_the_file(manifest, tiny_base, tmp_path):
    sizes = {}
    for quality in ("30", "95"):
        out = tmp_path / f"q{quality}"
        run(manifest, out, tiny_base, "--format", "jpeg", "--quality", quality)
        meta = {r["id"]: r for r in read_metadata(out)}
        path = out / meta["fox.1"]["image"]
        assert path.suffix == ".jpg" and Image.open(path).format == "JPEG"
        assert embedded_parameters(path.read_bytes()).startswith("a red fox, in snow\nNegative prompt: blurry\n")
        sizes[quality] = path.stat().st_size
    assert sizes["30"] < sizes["95"]


def test_metadata_has_dataset_ready_columns(manifest, tiny_base, tmp_path):
    out = tmp_path / "out"
    started = dt.datetime.now(dt.timezone.utc)
    run(manifest, out, tiny_base)
    rows = {r["id"]: r for r in read_metadata(out)}
    for row in rows.values():
        assert row["timestamp"].tzinfo is not None and started <= row["timestamp"] <= dt.datetime.now(dt.timezone.utc)
        assert row["sdbatch_version"] and row["diffusers_version"] and row["torch_version"]
    fox = rows["fox.1"]
    assert fox["device_name"] and fox["latency_seconds"] >= fox["seconds"] > 0
    assert rows["bad"]["latency_seconds"] is None and rows["bad"]["device_name"] is None


def test_output_options_are_checked_and_a_rerun_with_another_format_is_refused(manifest, tiny_base, tmp_path):
    refused = run(manifest, tmp_path / "png", tiny_base, "--quality", "80")
    assert refused.exit_code == 2 and "--quality applies to jpeg and webp" in refused.output
    out = tmp_path / "out"
    run(manifest, out, tiny_base, "--format", "jpeg")
    other = run(manifest, out, tiny_base, "--format", "webp")
    assert other.exit_code == 2 and "--format (jpeg then, webp now)" in other.output
    other = run(manifest, out, tiny_base, "--format", "jpeg", "--layout", "webdataset")
    assert other.exit_code == 2 and "--layout (files then, webdataset now)" in other.output
