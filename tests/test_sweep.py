"""`sdbatch sweep`: manifests from axes, products and zips, refusals, and a sweep run end to end."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from helpers import invoke


def read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_sweep_3_prompts_100_seeds_4_guidance_runs_to_1200_matching_images(tmp_path, tiny_base):
    prompts = ["a red fox", "a lighthouse, at dusk", "an owl"]
    guidance = [1.0, 3.0, 5.5, 7.5]
    manifest = tmp_path / "sweep.parquet"
    result = invoke("sweep", "-o", str(manifest), *(a for p in prompts for a in ("--prompt", p)),
                    "--seeds", "0-99", "--guidance", "1,3,5.5,7.5", "--steps", "2")
    assert result.exit_code == 0, result.output
    assert "sweep: 3 prompt x 100 seeds x 4 guidance x 1 steps = 1,200 rows" in result.output
    rows = read(manifest)
    assert len(rows) == 1200
    expected = set(itertools.product(prompts, range(100), guidance))
    assert {(r["prompt"], r["seed"], r["guidance_scale"]) for r in rows} == expected
    assert {r["steps"] for r in rows} == {2}

    out = tmp_path / "out"
    ran = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu",
                 "--batch-size", "32", "--executor", "local")
    assert ran.exit_code == 0, ran.output
    meta = ds.dataset(str(out / "metadata")).to_table().to_pylist()
    assert len(meta) == 1200 and all(r["status"] == "ok" for r in meta)
    assert {(r["prompt"], r["seed"], r["guidance_scale"]) for r in meta} == expected
    assert all(r["steps"] == 2 for r in meta)
    images = {r["image"] for r in meta}
    assert len(images) == 1200 and all((out / image).is_file() for image in images)
    summary = json.loads((out / "_job" / "summary.json").read_text())
    assert (summary["rows"], summary["ok"], summary["failed"]) == (1200, 1200, 0)


def test_zip_pairs_axes_instead_of_crossing_them(tmp_path):
    manifest = tmp_path / "z.parquet"
    result = invoke("sweep", "-o", str(manifest), "--prompt", "a", "--prompt", "b",
                    "--seeds", "1,2,3", "--guidance", "3,5,7", "--steps", "10,20,30",
                    "--zip", "seeds,guidance,steps")
    assert result.exit_code == 0, result.output
    assert "2 prompt x 3 seeds+guidance+steps = 6 rows" in result.output
    rows = read(manifest)
    assert [(r["prompt"], r["seed"], r["guidance_scale"], r["steps"]) for r in rows] == [
        (p, s, g, n) for p in "ab" for s, g, n in ((1, 3.0, 10), (2, 5.0, 20), (3, 7.0, 30))]


def test_zip_of_unequal_axes_is_refused(tmp_path):
    result = invoke("sweep", "-o", str(tmp_path / "z.parquet"), "--prompt", "a", "--seeds", "0-2",
                    "--guidance", "3,5", "--zip", "seeds,guidance")
    assert result.exit_code == 2
    assert "zipped axes need equal lengths (seeds has 3, guidance has 2)" in result.output
    assert not (tmp_path / "z.parquet").exists()


def test_sizes_schedulers_strength_and_negative_prompts(tmp_path):
    manifest = tmp_path / "s.parquet"
    result = invoke("sweep", "-o", str(manifest), "--prompt", "a", "--size", "512x512,768x512",
                    "--scheduler", "ddim", "--scheduler", "euler_a", "--strength", "0.5,1",
                    "--negative-prompt", "blurry", "--negative-prompt", "")
    assert result.exit_code == 0, result.output
    rows = read(manifest)
    assert len(rows) == 16
    assert {(r["width"], r["height"]) for r in rows} == {(512, 512), (768, 512)}
    assert {r["scheduler"] for r in rows} == {"ddim", "euler_a"}
    assert {r["strength"] for r in rows} == {0.5, 1.0}
    assert {r["negative_prompt"] for r in rows} == {"blurry", ""}
    assert "seed" not in rows[0]  # no seed axis: seeds are derived from the ids at run time


def test_blow_up_past_the_limit_is_refused_unless_raised(tmp_path):
    manifest = tmp_path / "big.parquet"
    args = ["sweep", "-o", str(manifest), "--prompt", "a", "--prompt", "b", "--seeds", "0-99999"]
    refused = invoke(*args)
    assert refused.exit_code == 2
    assert "200,000 rows" in refused.output and "--max-rows 100,000" in refused.output
    assert not manifest.exists()
    allowed = invoke(*args, "--max-rows", "200000")
    assert allowed.exit_code == 0, allowed.output
    assert pq.ParquetFile(manifest).metadata.num_rows == 200_000


def test_prompt_files_text_csv_and_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  \na dog, sitting\n")
    (tmp_path / "p.csv").write_text('prompt,label,negative_prompt\n"a cat, red",x,blurry\n123,y,\n')
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat", "label": 1}\n{"prompt": "a dog", "label": 2}\n')
    for name, expected in (
        ("p.txt", [{"id": "p0", "prompt": "a cat"}, {"id": "p1", "prompt": "a dog, sitting"}]),
        ("p.csv", [{"id": "p0", "prompt": "a cat, red", "negative_prompt": "blurry", "label": "x"},
                   {"id": "p1", "prompt": "123", "negative_prompt": "", "label": "y"}]),
        ("p.jsonl", [{"id": "p0", "prompt": "a cat", "label": 1}, {"id": "p1", "prompt": "a dog", "label": 2}]),
    ):
        out = tmp_path / f"{name}.parquet"
        result = invoke("sweep", "-o", str(out), "--prompts", str(tmp_path / name))
        assert result.exit_code == 0, result.output
        assert read(out) == expected, name
        assert invoke("validate", str(out)).exit_code == 0


def test_prompt_file_content_is_checked_with_rows_named(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,mode\na,txt2img\n,txt2img\nc,img2img\n")
    result = invoke("sweep", "-o", str(tmp_path / "s.parquet"), "--prompts", str(tmp_path / "p.csv"))
    assert result.exit_code == 2
    assert "column 'prompt', row 1 (1 row): empty, mode txt2img needs a prompt" in result.output
    assert "column 'init_image', row 2 (1 row): missing, mode img2img needs it" in result.output


def test_bad_axis_values_are_refused_naming_the_option(tmp_path):
    out = str(tmp_path / "s.parquet")
    cases = [
        (["--steps", "0,20"], "--steps: must be between 1 and 1000, got 0"),
        (["--guidance", "150"], "--guidance: must be a finite number between 0 and 100, got 150"),
        (["--size", "500x512"], "--size: must be a multiple of 8, got 500"),
        (["--size", "512"], "--size: cannot read '512'; use WIDTHxHEIGHT"),
        (["--scheduler", "euler-a"], "--scheduler: unknown scheduler"),
        (["--strength", "0"], "--strength: must be in (0, 1], got 0"),
        (["--seeds", "5-1"], "--seeds: range '5-1' goes backwards"),
        (["--seeds", "x"], "--seeds: cannot read 'x'"),
        (["--zip", "seeds,guidance"], "--zip: 'seeds' is not an axis of this sweep"),
        (["--prompt", ""], "column 'prompt', row 1 (1 row): empty, mode txt2img needs a prompt"),
    ]
    for extra, message in cases:
        result = invoke("sweep", "-o", out, "--prompt", "a", *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
    assert invoke("sweep", "-o", out, "--seeds", "1").exit_code == 2  # no prompts
    assert not Path(out).exists()


def test_seed_ranges_and_lists(tmp_path):
    out = tmp_path / "s.parquet"
    assert invoke("sweep", "-o", str(out), "--prompt", "a", "--seeds", "0-2, 10", "--seeds", "18446744073709551615"
                  ).exit_code == 0
    assert [r["seed"] for r in read(out)] == [0, 1, 2, 10, 2**64 - 1]
