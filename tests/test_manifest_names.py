"""Misspelt columns and other tools' names are refused before any work (exit 2, naming the column
to use), unless declared labels; other unknown columns stay carried-through labels (issue 10)."""

from __future__ import annotations

import pytest

from helpers import write_manifest
from sdbatch.manifests.source import open_manifest
from sdbatch.manifests.validate import validate_source
from helpers import invoke


MEANT = [
    ("guidance", "guidance_scale"), ("Prompt", "prompt"), ("PROMPT", "prompt"), ("ID", "id"),
    ("promt", "prompt"), ("propmt", "prompt"), ("seeds", "seed"), ("Steps", "steps"), ("widht", "width"),
    ("hieght", "height"), ("strenght", "strength"), ("schedular", "scheduler"), ("negativePrompt", "negative_prompt"),
    ("guidance-scale", "guidance_scale"), ("Guidance Scale", "guidance_scale"), ("init", "init_image"),
    # other tools' names (diffusers, AUTOMATIC1111, ComfyUI, InvokeAI, CompVis scripts)
    ("num_inference_steps", "steps"), ("cfg", "guidance_scale"), ("cfg_scale", "guidance_scale"),
    ("scale", "guidance_scale"), ("sampler", "scheduler"), ("sampler_name", "scheduler"),
    ("negative", "negative_prompt"), ("neg_prompt", "negative_prompt"), ("denoising_strength", "strength"),
    ("denoise", "strength"), ("image", "init_image"), ("init_images", "init_image"), ("mask", "mask_image"),
    ("depth", "depth_map"), ("ckpt_name", "model"), ("noise_seed", "seed"),
]


@pytest.mark.parametrize("name,meant", MEANT, ids=[m[0] for m in MEANT])
def test_likely_typos_and_other_tools_names_are_refused_with_the_name_to_use(name, meant, tmp_path):
    columns = {name: [1, 2]} if meant == "prompt" else {"prompt": ["a", "b"], name: [1, 2]}
    manifest = write_manifest(tmp_path / "m.parquet", columns)
    result = invoke("validate", str(manifest))
    assert result.exit_code == 2, result.output
    assert f"column '{name}', all rows: not a manifest column; did you mean '{meant}'?" in result.output
    assert f"--label {name}" in result.output or f"--label '{name}'" in result.output  # how to keep it


def test_run_refuses_a_misspelt_column_before_any_work(tmp_path, tiny_base):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a"], "steps": [2], "guidance": [5.5]})
    out = tmp_path / "out"
    result = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu",
                    "--executor", "local")
    assert result.exit_code == 2, result.output
    assert "column 'guidance', all rows: not a manifest column; did you mean 'guidance_scale'?" in result.output
    assert not out.exists()


def test_columns_with_no_equivalent_are_refused_with_what_to_do(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a"], "size": ["512x512"], "num_images_per_prompt": [4], "batch_size": [8]})
    result = invoke("validate", str(manifest))
    assert result.exit_code == 2
    assert "column 'size', all rows: not a manifest column; use 'width' and 'height'" in result.output
    assert "column 'num_images_per_prompt', all rows: not a manifest column; one row is one image" in result.output
    assert "column 'batch_size', all rows: not a manifest column; the batch size is a run option" in result.output


def test_declared_labels_are_carried_through(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a"], "label_guidance": [5.5], "labels": [{"cfg": 3, "sampler": "x"}],
        "guidance": [1.0], "Sampler": ["euler"]})
    result = invoke("validate", str(manifest), "--label", "guidance", "--label", "Sampler")
    assert result.exit_code == 0, result.output
    assert "extra columns (carried through): label_guidance, labels, guidance, Sampler" in result.output


def test_label_option_is_a_parameter_of_validate_source(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a"], "cfg": [3]})
    refused = validate_source(open_manifest(manifest), schedulers=())
    assert [(p.column, p.reason.split(";")[0]) for p in refused.problems] == [("cfg", "not a manifest column")]
    accepted = validate_source(open_manifest(manifest), schedulers=(), labels=["cfg"])
    assert not accepted.problems and accepted.extra_columns == ["cfg"]


def test_other_unknown_columns_stay_labels(tmp_path):
    names = ["caption", "category", "weight", "score", "url", "_id", "uid", "idx", "row_id", "prompt_id", "label"]
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a"], **{n: [1] for n in names}})
    result = invoke("validate", str(manifest))
    assert result.exit_code == 0, result.output
    assert f"extra columns (carried through): {', '.join(names)}" in result.output


def test_a_manifest_column_cannot_be_declared_a_label(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a"], "seed": [1]})
    result = invoke("validate", str(manifest), "--label", "seed", "--label", "absent")
    assert result.exit_code == 2
    assert "column 'seed', all rows: declared a label (--label), but it is a manifest column" in result.output
    assert "note: --label absent: no such column in the manifest" in result.output


def test_typos_are_reported_with_the_row_problems_at_once(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a", ""], "cfg_scale": [3, 4]})
    result = invoke("validate", str(manifest))
    assert result.exit_code == 2
    assert "problems (2):" in result.output
    assert "column 'cfg_scale'" in result.output and "column 'prompt', row 1 (1 row): empty" in result.output


def test_csv_header_typos_are_refused_too(tmp_path):
    (tmp_path / "m.csv").write_text("Prompt,CFG Scale\na cat,7\n")
    result = invoke("validate", str(tmp_path / "m.csv"))
    assert result.exit_code == 2
    assert "column 'Prompt', all rows: not a manifest column; did you mean 'prompt'?" in result.output
    assert "column 'CFG Scale', all rows: not a manifest column; did you mean 'guidance_scale'?" in result.output
    assert "--label 'CFG Scale'" in result.output


def test_a_lookalike_is_a_label_when_the_column_it_stands_for_is_there_too(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a"], "model": [""], "model_name": ["SD 1.5"], "guidance_scale": [5.0], "guidance": ["low"],
        "width": [64], "size": ["64x64"]})
    result = invoke("validate", str(manifest))
    assert result.exit_code == 0, result.output
    assert "extra columns (carried through): model_name, guidance, size" in result.output
