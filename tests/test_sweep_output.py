"""`sdbatch sweep` names rows by their axes (an id template, or a readable default), refuses ids that
are not unique, refuses to overwrite without --force, writes the format its extension names, and
prints each refusal once (issue 10 items 3 and 6)."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from sdbatch.manifests.source import open_manifest
from helpers import invoke


def ids(path) -> list[str]:
    return pq.read_table(path).column("id").to_pylist()


def test_id_template_names_the_outputs_by_their_axes(tmp_path, tiny_base):
    manifest = tmp_path / "s.parquet"
    result = invoke("sweep", "-o", str(manifest), "--prompt", "an owl", "--prompt", "a fox", "--seeds", "7,8",
                    "--guidance", "5.5,7", "--steps", "2", "--size", "32x32",
                    "--id-template", "{prompt_index}-s{seed}-g{guidance_scale}")
    assert result.exit_code == 0, result.output
    expected = [f"{p}-s{s}-g{g}" for p in (0, 1) for s in (7, 8) for g in ("5_5", "7")]
    assert ids(manifest) == expected
    out = tmp_path / "out"
    ran = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu",
                 "--executor", "local")
    assert ran.exit_code == 0, ran.output
    meta = ds.dataset(str(out / "metadata")).to_table().to_pylist()
    owl = next(r for r in meta if r["prompt"] == "an owl" and r["seed"] == 7 and r["guidance_scale"] == 5.5)
    assert owl["image"].endswith("/0-s7-g5_5.png") and (out / owl["image"]).is_file()


def test_default_ids_are_built_from_the_axes_that_vary(tmp_path):
    out = tmp_path / "s.parquet"
    assert invoke("sweep", "-o", str(out), "--prompt", "a", "--prompt", "b", "--seeds", "0-1",
                  "--guidance", "3,7.5", "--steps", "20").exit_code == 0
    assert ids(out)[:3] == ["p0-s0-g3", "p0-s0-g7_5", "p0-s1-g3"]  # steps has one value: left out
    assert invoke("sweep", "-o", str(out), "--force", "--prompt", "a", "--size", "512x512,768x512",
                  "--scheduler", "ddim,euler_a", "--strength", "0.5,1", "--negative-prompt", "x",
                  "--negative-prompt", "y").exit_code == 0
    assert ids(out)[:2] == ["neg0-ddim-512x512-str0_5", "neg0-ddim-512x512-str1"]
    assert invoke("sweep", "-o", str(out), "--force", "--prompt", "just one").exit_code == 0
    assert ids(out) == ["p0"]
    (tmp_path / "p.csv").write_text("id,prompt\nowl,an owl\nfox,a fox\n")
    assert invoke("sweep", "-o", str(out), "--force", "--prompts", str(tmp_path / "p.csv"),
                  "--seeds", "1,2").exit_code == 0
    assert ids(out) == ["owl-s1", "owl-s2", "fox-s1", "fox-s2"]  # a prompts file's ids stand for its prompts


def test_a_template_that_is_not_unique_is_refused_naming_two_rows(tmp_path):
    out = tmp_path / "s.parquet"
    result = invoke("sweep", "-o", str(out), "--prompt", "a", "--prompt", "b", "--seeds", "1,2",
                    "--id-template", "s{seed}")
    assert result.exit_code == 2
    assert "--id-template 's{seed}' gives rows 0 and 2 the same id 's1': ids must be unique" in result.output
    assert not out.exists() and not list(tmp_path.iterdir())
    result = invoke("sweep", "-o", str(out), "--prompt", "a", "--seeds", "1,1")  # the default, a repeated seed
    assert result.exit_code == 2
    assert "the default ids ('s{seed}') give rows 0 and 1 the same id 's1'" in result.output
    result = invoke("sweep", "-o", str(out), "--prompt", "a", "--guidance", "5.5,5.50",
                    "--id-template", "g{guidance_scale:.0f}")
    assert result.exit_code == 2 and "the same id 'g6'" in result.output


def test_template_fields_and_formats_are_checked_before_writing(tmp_path):
    out = str(tmp_path / "s.parquet")
    result = invoke("sweep", "-o", out, "--prompt", "a", "--seeds", "1", "--id-template", "{prompt_index}-{sed}")
    assert result.exit_code == 2
    assert "unknown field {sed}; fields: {prompt}, {prompt_index}, {row}, {seed}, {seed_index}" in result.output
    result = invoke("sweep", "-o", out, "--prompt", "a", "--id-template", "{prompt:d}")
    assert result.exit_code == 2 and "cannot format row 0" in result.output
    result = invoke("sweep", "-o", out, "--prompt", "a", "--seeds", "1,2", "--id-template", "{row:05d}-{seed}")
    assert result.exit_code == 0 and ids(out) == ["00000-1", "00001-2"]
    result = invoke("sweep", "-o", out, "--force", "--prompt", "a", "--seeds", "1,2", "--id-template", "")
    assert result.exit_code == 0 and "id" not in pq.read_table(out).column_names  # derived at run time


def test_an_existing_output_is_refused_unless_forced(tmp_path):
    out = tmp_path / "s.parquet"
    out.write_bytes(b"keep me")
    result = invoke("sweep", "-o", str(out), "--prompt", "a")
    assert result.exit_code == 2 and "the file exists; use --force to replace it" in result.output
    assert out.read_bytes() == b"keep me"
    assert invoke("sweep", "-o", str(out), "--prompt", "a", "--force").exit_code == 0
    assert ids(out) == ["p0"]


def test_the_output_format_follows_the_extension(tmp_path):
    args = ["--prompt", "a red fox, at dusk", "--prompt", "an \"owl\"", "--seeds", "0,18446744073709551615",
            "--guidance", "3,7.5", "--negative-prompt", ""]
    assert invoke("sweep", "-o", str(tmp_path / "s.parquet"), *args).exit_code == 0
    expected = pq.read_table(tmp_path / "s.parquet").to_pylist()
    for name in ("s.csv", "s.tsv", "s.jsonl"):
        result = invoke("sweep", "-o", str(tmp_path / name), *args)
        assert result.exit_code == 0, result.output
        source = open_manifest(tmp_path / name)
        rows = [r for _, b in source.batches() for r in b.to_pylist()]
        assert rows == expected, name
        assert invoke("validate", str(tmp_path / name)).exit_code == 0
    assert json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])["prompt"] == "a red fox, at dusk"
    result = invoke("sweep", "-o", str(tmp_path / "s.txt"), *args)
    assert result.exit_code == 2
    assert "-o " in result.output and "unknown extension '.txt'; use .parquet, .csv, .tsv or .jsonl" in result.output
    assert not (tmp_path / "s.txt").exists()


def test_nested_prompt_file_columns_cannot_go_to_csv(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "meta": {"k": 1}}\n')
    result = invoke("sweep", "-o", str(tmp_path / "s.csv"), "--prompts", str(tmp_path / "p.jsonl"))
    assert result.exit_code == 2 and "cannot write CSV" in result.output and "write .parquet or .jsonl" in result.output
    assert not list(tmp_path.glob("*s.csv*"))
    assert invoke("sweep", "-o", str(tmp_path / "s.jsonl"), "--prompts", str(tmp_path / "p.jsonl")).exit_code == 0


def test_a_size_refusal_is_printed_once(tmp_path):
    result = invoke("sweep", "-o", str(tmp_path / "s.parquet"), "--prompt", "a", "--size", "500x500")
    assert result.exit_code == 2
    assert result.output.count("must be a multiple of 8, got 500") == 1, result.output


def test_a_prompts_file_with_a_misspelt_column_is_refused(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,cfg_scale,label_x\nan owl,5,a\n")
    result = invoke("sweep", "-o", str(tmp_path / "s.parquet"), "--prompts", str(tmp_path / "p.csv"))
    assert result.exit_code == 2
    assert "column 'cfg_scale', all rows: not a manifest column; did you mean 'guidance_scale'?" in result.output
