"""Reading manifests: files, folders, globs and Hive partitions; stable ids and seeds; duplicates."""

from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.dataset as ds

from helpers import planned_rows, write_manifest
from sdbatch.manifests.ids import MAX_KEY_LENGTH
from sdbatch.manifests.schema import SEED_MAX
from helpers import invoke

ROWS = {
    "prompt": ["a cat", "a dog", "a fox", "a cow", "an owl", "a bee"],
    "steps": [2, 3, 2, 3, 2, 3],
    "label": ["l0", "l1", "l2", "l3", "l4", "l5"],
}


def _slice(columns: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in columns.items()}


def load_rows(manifest, default_model: str):
    return planned_rows(manifest, default_model)[0]


def _summary(rows) -> list[tuple]:
    return [(r.row_index, r.id, r.seed, r.prompt, r.steps, dict(r.extras)) for r in rows]


def test_file_folder_glob_and_layout_give_the_same_rows_and_ids(tmp_path):
    single = write_manifest(tmp_path / "one.parquet", ROWS)
    folder = tmp_path / "parts"
    folder.mkdir()
    write_manifest(folder / "part-0.parquet", _slice(ROWS, 0, 2))
    write_manifest(folder / "part-1.parquet", _slice(ROWS, 2, 6))
    (folder / "_SUCCESS").write_text("")  # marker files are ignored, as pyarrow does
    expected = _summary(load_rows(single, "m"))
    assert [e[3] for e in expected] == ROWS["prompt"]
    assert _summary(load_rows(folder, "m")) == expected
    assert _summary(load_rows(str(folder / "part-*.parquet"), "m")) == expected


def test_hive_partitions_become_columns(tmp_path):
    root = tmp_path / "hive"
    for steps, prompts in ((2, ["a", "b"]), (3, ["c"])):
        (root / f"steps={steps}" / "split=train").mkdir(parents=True)
        write_manifest(root / f"steps={steps}" / "split=train" / "p.parquet", {"prompt": prompts})
    rows = load_rows(root, "m")
    assert [(r.prompt, r.steps, dict(r.extras)["split"]) for r in rows] == [
        ("a", 2, "train"), ("b", 2, "train"), ("c", 3, "train")]


def test_columns_missing_from_some_files_are_carried_as_null(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    write_manifest(folder / "a.parquet", {"prompt": ["a"]})
    write_manifest(folder / "b.parquet", {"prompt": ["b"], "label": ["kept"], "seed": [5]})
    rows = load_rows(folder, "m")
    assert [dict(r.extras) for r in rows] == [{"label": None}, {"label": "kept"}]
    assert rows[1].seed == 5


def test_derived_ids_depend_on_generation_parameters_and_model_only(tmp_path):
    base = {"prompt": ["a cat"], "steps": [20]}
    same = [
        {"prompt": ["a cat"], "steps": [20], "label": ["other label"]},
        {"prompt": ["a cat"], "steps": [20], "guidance_scale": [7.5], "negative_prompt": [""]},  # defaults spelled out
        {"prompt": ["a cat"], "steps": pa.array([20], pa.int16())},
    ]
    different = [
        {"prompt": ["a cat "], "steps": [20]},
        {"prompt": ["a cat"], "steps": [21]},
        {"prompt": ["a cat"], "steps": [20], "seed": [0]},
        {"prompt": ["a cat"], "steps": [20], "guidance_scale": [7.0]},
        {"prompt": ["a cat"], "steps": [20], "scheduler": ["ddim"]},
        {"prompt": ["a cat"], "steps": [20], "model": ["other-model"]},
    ]
    ref = load_rows(write_manifest(tmp_path / "ref.parquet", base), "m")[0].id
    for i, cols in enumerate(same):
        assert load_rows(write_manifest(tmp_path / f"s{i}.parquet", cols), "m")[0].id == ref, cols
    ids = {load_rows(write_manifest(tmp_path / f"d{i}.parquet", cols), "m")[0].id for i, cols in enumerate(different)}
    assert ref not in ids and len(ids) == len(different)
    assert load_rows(tmp_path / "ref.parquet", "another-default-model")[0].id != ref


def test_derived_ids_survive_moving_the_manifest(tmp_path):
    """Relative image paths resolve against the manifest's folder, but the id uses them as written."""
    a = tmp_path / "a"
    a.mkdir()
    write_manifest(a / "m.parquet", {"prompt": ["x"], "mode": ["img2img"], "init_image": ["img/in.png"]})
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (row_a,), (row_b,) = load_rows(a / "m.parquet", "m"), load_rows(b / "m.parquet", "m")
    assert row_a.id == row_b.id and row_a.seed == row_b.seed
    assert row_a.init_image == str(a.absolute() / "img/in.png")
    assert row_b.init_image == str(b.absolute() / "img/in.png")


def test_image_bytes_are_identified_by_content(tmp_path):
    rows = load_rows(write_manifest(tmp_path / "m.parquet", {
        "prompt": ["x", "x", "x"], "seed": [1, 2, 3], "mode": ["img2img"] * 3,
        "init_image": [b"image-one", b"image-two", b"image-one"],
    }), "m")
    assert rows[0].init_image == b"image-one"
    assert len({r.id for r in rows}) == 3
    again = load_rows(write_manifest(tmp_path / "n.parquet", {
        "prompt": ["x"], "seed": [1], "mode": ["img2img"], "init_image": [b"image-one"]}), "m")
    assert again[0].id == rows[0].id


def test_given_ids_name_the_outputs_safely_and_stay_in_the_metadata(tmp_path, tiny_base):
    long_id = "x" * 500
    ids = ["../../escape", "a/b\\c", "ok-id.1", long_id, "..", "id with spaces"]
    manifest = write_manifest(tmp_path / "m.parquet", {"id": ids, "prompt": ["p"] * 6, "steps": [2] * 6})
    out = tmp_path / "out"
    result = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu", "--executor", "local")
    assert result.exit_code == 0, result.output
    meta = ds.dataset(str(out / "metadata")).to_table().to_pylist()
    assert sorted(r["id"] for r in meta) == sorted(ids)
    keys = [r["key"] for r in meta]
    assert len(set(keys)) == len(keys)
    for row in meta:
        key = row["key"]
        assert "/" not in key and "\\" not in key and ".." not in key and len(key) <= MAX_KEY_LENGTH
        image = (out / row["image"]).resolve()
        assert image.is_file() and out.resolve() in image.parents
    # escaped, not dropped: a dot would end a webdataset sample name
    assert next(r for r in meta if r["id"] == "ok-id.1")["key"] == "ok-id~2e1"


def test_integer_ids_are_read_as_text(tmp_path):
    rows = load_rows(write_manifest(tmp_path / "m.parquet", {"id": [10, 11], "prompt": ["a", "b"]}), "m")
    assert [(r.id, r.key) for r in rows] == [("10", "10"), ("11", "11")]


def test_seeds_derived_from_the_id_when_absent_and_kept_when_given(tmp_path):
    rows = load_rows(write_manifest(tmp_path / "m.parquet", {
        "id": ["a", "b", "c"], "prompt": ["p"] * 3, "seed": pa.array([None, SEED_MAX, 0], pa.uint64()),
    }), "m")
    assert rows[1].seed == SEED_MAX and rows[2].seed == 0
    assert 0 <= rows[0].seed <= SEED_MAX
    again = load_rows(write_manifest(tmp_path / "n.parquet", {"id": ["a"], "prompt": ["other prompt"]}), "m")
    assert again[0].seed == rows[0].seed  # a function of the id alone


def test_exact_duplicate_rows_are_generated_once_and_reported(tmp_path, tiny_base):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a", "b", "a", "a", "c", "b"],
        "steps": [2, 2, 2, 3, 2, 2],
        "label": ["first", "x", "second", "y", "z", "w"],
    })
    rows, planned = planned_rows(manifest, "m")
    assert planned.report.duplicate_rows == 2
    assert [r.row_index for r in rows] == [0, 1, 3, 4]
    checked = invoke("validate", str(manifest))
    assert checked.exit_code == 0
    assert "rows: 6 (4 distinct; 2 exact duplicate rows are generated once)" in checked.output
    out = tmp_path / "out"
    ran = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu", "--executor", "local")
    assert ran.exit_code == 0, ran.output
    assert "exact duplicate rows: 2 (each distinct row generated once)" in ran.output
    assert "4 ok, 0 failed of 4 rows" in ran.output
    meta = ds.dataset(str(out / "metadata")).to_table().to_pylist()
    assert sorted(r["row_index"] for r in meta) == [0, 1, 3, 4]  # one result per distinct row
    assert len({r["id"] for r in meta}) == 4
    assert next(r for r in meta if r["row_index"] == 0)["label"] == "first"  # the first row's labels


def test_the_largest_seed_runs(tmp_path, tiny_base):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a", "b"], "steps": [2, 2], "seed": pa.array([SEED_MAX, 0], pa.uint64()),
    })
    out = tmp_path / "out"
    result = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu", "--executor", "local")
    assert result.exit_code == 0, result.output
    meta = ds.dataset(str(out / "metadata")).to_table().to_pylist()
    assert sorted(r["seed"] for r in meta) == [0, SEED_MAX]
    assert all(r["status"] == "ok" for r in meta)


def test_rows_are_the_same_whatever_the_read_batch_size(tmp_path):
    """The manifest streams through validation and planning a record batch at a time."""
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": [f"p{i % 40}" for i in range(100)], "steps": [2] * 100, "label": list(range(100)),
    })
    whole, _ = planned_rows(manifest, "m")
    streamed, _ = planned_rows(manifest, "m", batch_rows=16)
    assert streamed == whole
    assert len(whole) == 40
