"""SDXL, v-prediction and SD 1.5 rows through `sdbatch run`: columns only a family uses are refused
on another family's model (naming column, rows and model), a refiner takes over the rows that ask
for it, and each row's metadata says how it was made."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from helpers import invoke, write_manifest
from helpers import check_mixed, metadata_by_id, mixed_columns


def test_a_mixed_manifest_runs_every_family_and_mode_locally(tiny_models, family_models, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", mixed_columns(tiny_models, family_models))
    out = tmp_path / "out"
    check_mixed(out, invoke("run", str(manifest), "--out", str(out), "--executor", "local", "--device", "cpu"))


@pytest.mark.parametrize("column,value", [("prompt_2", "second"), ("crop_left", 16), ("refiner_start", 0.8)])
def test_a_column_the_models_family_does_not_use_is_refused_by_validate_and_run(tiny_base, tmp_path, column,
                                                                                value):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a", "b", "c"], "steps": [2] * 3, column: [None, value, value]})
    expected = f"column '{column}', rows 1, 2 (2 rows):"
    checked = invoke("validate", str(manifest), "--model", tiny_base)
    ran = invoke("run", str(manifest), "--model", tiny_base, "--out", str(tmp_path / "out"), "--executor", "local")
    for result in (checked, ran):
        assert result.exit_code == 2 and expected in result.output, result.output
    reason = "needs --refiner" if column == "refiner_start" else "is an SD 1.x/2.x model"
    assert reason in checked.output and reason in ran.output
    assert not (tmp_path / "out").exists()


def test_validate_names_the_models_and_their_families(tiny_base, family_models, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a", "b"], "model": [None, family_models["xl"]], "prompt_2": [None, "x"]})
    result = invoke("validate", str(manifest), "--model", tiny_base)
    assert result.exit_code == 0, result.output
    assert f"{tiny_base} (folder, SD 1.x/2.x)" in result.output and f"{family_models['xl']} (folder, SDXL)" in result.output


def test_refiner_rows_are_taken_over_by_the_refiner(family_models, tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": ["base-only", "refined"], "prompt": ["a fox", "a fox"], "seed": [1, 1], "steps": [4, 4],
        "refiner_start": [None, 0.5]})
    out = tmp_path / "out"
    result = invoke("run", str(manifest), "--model", family_models["xl"], "--refiner", family_models["xl-refiner"],
                    "--out", str(out), "--executor", "local", "--device", "cpu")
    assert result.exit_code == 0, result.output
    meta = metadata_by_id(out)
    assert meta["refined"]["refiner"] == family_models["xl-refiner"] and meta["refined"]["refiner_start"] == 0.5
    assert meta["base-only"]["refiner"] is None
    a, b = (np.asarray(Image.open(out / meta[k]["image"])).astype(int) for k in ("base-only", "refined"))
    assert np.abs(a - b).max() > 0  # the refiner changed the image it took over
    changed = invoke("run", str(manifest), "--model", family_models["xl"], "--out", str(out), "--executor",
                     "local", "--refiner", family_models["xl"])
    assert changed.exit_code == 2 and "--refiner" in changed.output  # another refiner: another job
