"""SDXL, v-prediction and SD 1.5 rows through `sdbatch run`: columns only a family uses are refused
on another family's model (naming column, rows and model), a refiner takes over the rows that ask
for it, and each row's metadata says how it was made."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
from PIL import Image

from conftest import invoke, write_manifest


def png(seed: int, size: int = 32, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def metadata(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()}


def mixed_columns(tiny_models, family_models) -> dict:
    """SD 1.5, SD 2.x-style v-prediction and SDXL rows, every mode, one row failing alone."""
    xl, v, base, inpaint = family_models["xl"], family_models["v"], tiny_models["base"], tiny_models["inpaint"]
    rows = [
        dict(id="sd-txt", model=base, mode="txt2img"),
        dict(id="sd-img", model=base, mode="img2img", init_image=png(1)),
        dict(id="sd-inpaint", model=inpaint, mode="inpaint", init_image=png(2), mask_image=png(3, mode="L")),
        dict(id="v-txt", model=v, mode="txt2img", guidance_rescale=0.7),
        dict(id="xl-txt", model=xl, mode="txt2img", prompt_2="a second prompt", crop_top=8, original_width=64),
        dict(id="xl-txt-2", model=xl, mode="txt2img", guidance_rescale=0.5),
        dict(id="xl-img", model=xl, mode="img2img", init_image=png(4)),
        dict(id="xl-inpaint", model=xl, mode="inpaint", init_image=png(5), mask_image=png(6, mode="L")),
        dict(id="xl-depth", model=xl, mode="depth2img", init_image=png(7)),  # fails alone: SDXL has no depth
    ]
    names = ["id", "model", "mode", "init_image", "mask_image", "guidance_rescale", "prompt_2", "crop_top",
             "original_width"]
    columns = {n: [r.get(n) for r in rows] for n in names}
    columns.update(prompt=[f"a picture {i}" for i in range(len(rows))], steps=[3] * len(rows),
                   seed=list(range(len(rows))), strength=[0.7] * len(rows))
    return columns


def check_mixed(out: Path, result) -> None:
    assert result.exit_code == 1, result.output  # one row failed, alone
    meta = metadata(out)
    failed = {k: r for k, r in meta.items() if r["status"] == "error"}
    assert list(failed) == ["xl-depth"]
    assert "column mode" in failed["xl-depth"]["error"] and "SDXL" in failed["xl-depth"]["error"]
    assert meta["xl-txt"]["prompt_2"] == "a second prompt" and meta["xl-txt"]["crop_top"] == 8
    assert meta["v-txt"]["guidance_rescale"] == 0.7
    assert invoke("verify", str(out)).exit_code == 0


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
    meta = metadata(out)
    assert meta["refined"]["refiner"] == family_models["xl-refiner"] and meta["refined"]["refiner_start"] == 0.5
    assert meta["base-only"]["refiner"] is None
    a, b = (np.asarray(Image.open(out / meta[k]["image"])).astype(int) for k in ("base-only", "refined"))
    assert np.abs(a - b).max() > 0  # the refiner changed the image it took over
    changed = invoke("run", str(manifest), "--model", family_models["xl"], "--out", str(out), "--executor",
                     "local", "--refiner", family_models["xl"])
    assert changed.exit_code == 2 and "--refiner" in changed.output  # another refiner: another job
