"""Broken manifests are refused before any GPU work, by `validate` and by `run`, with messages that
name the column, the row(s) and the reason."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import write_manifest
from sdbatch.manifests.schema import SEED_MAX
from helpers import invoke

# (case, manifest columns, substrings the refusal must contain)
REFUSALS = [
    ("missing required column", {"negative_prompt": ["x"], "steps": [2]},
     ["column 'prompt', all rows: missing (required column)"]),
    ("wrong type", {"prompt": ["a", "b"], "steps": ["20", "30"]},
     ["column 'steps', all rows: wrong type string, expected an integer"]),
    ("wrong type of an image column", {"prompt": ["a"], "mode": ["img2img"], "init_image": [3]},
     ["column 'init_image', all rows: wrong type int64"]),
    ("empty prompt in txt2img", {"prompt": ["a cat", "", None, "  ", "ok"]},
     ["column 'prompt', rows 1, 2, 3 (3 rows): empty, mode txt2img needs a prompt"]),
    ("steps out of range", {"prompt": ["a"] * 4, "steps": [20, 0, 30, 1001]},
     ["column 'steps', rows 1, 3 (2 rows): must be between 1 and 1000, got 0, 1001"]),
    ("guidance out of range", {"prompt": ["a"] * 5, "guidance_scale": [7.5, -1.0, math.nan, math.inf, 100.0]},
     ["column 'guidance_scale', rows 1, 2, 3 (3 rows): must be a finite number between 0 and 100, got -1, nan, inf"]),
    ("width not a multiple of 8", {"prompt": ["a", "b", "c"], "width": [512, 500, None]},
     ["column 'width', row 1 (1 row): must be a multiple of 8, got 500"]),
    ("height not a multiple of 8", {"prompt": ["a", "b"], "height": [513, 64]},
     ["column 'height', row 0 (1 row): must be a multiple of 8, got 513"]),
    ("size out of range", {"prompt": ["a", "b"], "width": [0, 16384]},
     ["column 'width', rows 0, 1 (2 rows): must be between 8 and 8192, got 0, 16384"]),
    ("unknown mode", {"prompt": ["a", "b"], "mode": ["txt2img", "text2img"]},
     ["column 'mode', row 1 (1 row): unknown mode; known: txt2img, img2img, inpaint, depth2img, got 'text2img'"]),
    ("unknown scheduler", {"prompt": ["a", "b"], "scheduler": ["euler_a", "euler-ancestral"]},
     ["column 'scheduler', row 1 (1 row): unknown scheduler; known: ddim,", "got 'euler-ancestral'"]),
    ("strength zero", {"prompt": ["a", "b"], "mode": ["img2img"] * 2, "init_image": ["x.png"] * 2,
                       "strength": [0.0, 0.5]},
     ["column 'strength', row 0 (1 row): must be in (0, 1], got 0"]),
    ("strength above one", {"prompt": ["a", "b"], "mode": ["img2img"] * 2, "init_image": ["x.png"] * 2,
                            "strength": [1.0, 1.5]},
     ["column 'strength', row 1 (1 row): must be in (0, 1], got 1.5"]),
    ("duplicate ids", {"id": ["a", "b", "a", "c", "b"], "prompt": ["p"] * 5},
     ["column 'id', rows 0, 1, 2, 4 (4 rows): duplicate ids (each must be unique), got 'a', 'b'"]),
    ("empty id", {"id": ["a", ""], "prompt": ["p", "q"]},
     ["column 'id', row 1 (1 row): empty id"]),
    ("image column missing where the mode needs it",
     {"prompt": ["a", "b", "c"], "mode": ["txt2img", "img2img", "img2img"]},
     ["column 'init_image', rows 1, 2 (2 rows): missing, mode img2img needs it"]),
    ("mask missing for inpaint",
     {"prompt": ["a"], "mode": ["inpaint"], "init_image": ["a.png"]},
     ["column 'mask_image', row 0 (1 row): missing, mode inpaint needs it"]),
    ("empty image cell",
     {"prompt": ["a", "b"], "mode": ["depth2img", "depth2img"], "init_image": ["a.png", None]},
     ["column 'init_image', row 1 (1 row): empty, mode depth2img needs an image"]),
    ("negative seed", {"prompt": ["a", "b"], "seed": [1, -5]},
     ["column 'seed', row 1 (1 row): must be between 0 and 2**64-1, got -5"]),
]


@pytest.mark.parametrize("case,columns,expected", REFUSALS, ids=[c[0] for c in REFUSALS])
def test_validate_and_run_refuse_with_the_same_message(case, columns, expected, tmp_path, tiny_base):
    manifest = write_manifest(tmp_path / "m.parquet", columns)
    checked = invoke("validate", str(manifest))
    assert checked.exit_code == 2, checked.output
    out = tmp_path / "out"
    ran = invoke("run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu", "--executor", "local")
    assert ran.exit_code == 2, ran.output
    assert "manifest refused" in ran.output
    for text in expected:
        assert text in checked.output, checked.output
        assert text in ran.output, ran.output
    assert not out.exists()  # nothing started


def test_every_problem_is_reported_at_once(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a", "", "c"], "steps": [0, 20, 20], "width": [512, 512, 100],
    })
    result = invoke("validate", str(manifest))
    assert result.exit_code == 2
    assert "problems (3):" in result.output
    for column in ("prompt", "steps", "width"):
        assert f"column '{column}'" in result.output


def test_long_lists_of_rows_are_cut_short_with_the_count(tmp_path):
    steps = [20] * 1000
    for bad in (3, 17, 400, 401, 402, 403, 999):
        steps[bad] = 0
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a"] * 1000, "steps": steps})
    result = invoke("validate", str(manifest))
    assert "column 'steps', rows 3, 17, 400, 401, 402, ... (7 rows): must be between 1 and 1000, got 0" \
        in result.output


def test_files_that_disagree_on_a_column_type_are_refused_naming_both(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    write_manifest(folder / "a.parquet", {"prompt": ["a"], "steps": [20]})
    write_manifest(folder / "b.parquet", {"prompt": ["b"], "steps": ["20"]})
    result = invoke("validate", str(folder))
    assert result.exit_code == 2
    assert "column 'steps', all rows: files disagree on its type" in result.output
    assert "a.parquet" in result.output and "b.parquet" in result.output


def test_unreadable_and_missing_manifests_are_refused(tmp_path):
    (tmp_path / "bad.parquet").write_text("not parquet")
    for path in (tmp_path / "bad.parquet", tmp_path / "absent.parquet", tmp_path / "none-*.parquet"):
        result = invoke("validate", str(path))
        assert result.exit_code == 2 and "manifest refused" in result.output, result.output


def test_empty_manifest_is_refused(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": pa.array([], pa.string())})
    result = invoke("validate", str(manifest))
    assert result.exit_code == 2 and "no rows" in result.output


def test_image_modes_may_have_an_empty_prompt(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["", None, ""], "mode": ["img2img", "inpaint", "depth2img"],
        "init_image": ["a.png", "b.png", b"\x89PNG..."], "mask_image": [None, "m.png", None],
    })
    result = invoke("validate", str(manifest))
    assert result.exit_code == 0, result.output
    assert "modes: depth2img 1, img2img 1, inpaint 1" in result.output


def test_edge_values_are_accepted(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a", "b"], "steps": [1, 1000], "guidance_scale": [0, 100],  # ints accepted as numbers
        "width": [8, 8192], "height": pa.array([64, 72], pa.int16()),
        "seed": pa.array([0, SEED_MAX], pa.uint64()), "scheduler": ["dpmpp_2m_karras", None],
        "mode": pa.array(["txt2img", "txt2img"]).dictionary_encode(),
    })
    result = invoke("validate", str(manifest))
    assert result.exit_code == 0, result.output
    assert "problems: none" in result.output


def test_report_counts_rows_modes_prompts_and_batches(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a", "b", "a", "c", "a"],
        "steps": [2, 2, 2, 3, 2],
        "seed": [1, 2, 3, 4, 5],
        "mode": ["txt2img"] * 4 + ["img2img"],
        "init_image": [None] * 4 + ["x.png"],
        "label": ["x"] * 5,
        "guidance": [1, 2, 3, 4, 5],
    })
    result = invoke("validate", str(manifest), "--batch-size", "2", "--label", "guidance")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "rows: 5" in lines
    assert "modes: img2img 1, txt2img 4" in lines
    assert "distinct prompts: 3" in lines
    # groups: txt2img/steps 2 (3 rows -> 2 batches), txt2img/steps 3 (1), img2img (1)
    assert "planned batches: 4 (batch size 2, shard size 1000, 3 batching groups)" in lines
    assert "extra columns (carried through): label, guidance" in lines  # guidance: declared a label
    assert "problems: none" in lines


def test_validate_and_dry_run_print_the_batches_the_worker_makes(tmp_path, monkeypatch):
    """validate and run --dry-run print one count, the planner's: what the worker cuts the staged
    shards into, also where a group is written early (the planner's buffer is full) and where
    exact duplicate rows are dropped."""
    from helpers import planned_shards
    from sdbatch.jobs import planning
    from sdbatch.jobs.worker.shard_worker import group_batches

    n = 230
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": [f"p{i % 7}" for i in range(n - 10)] + ["p0"] * 10,  # 10 exact duplicates of row 0
        "seed": [i for i in range(n - 10)] + [0] * 10,
        "steps": [(2, 3, 4)[i % 3] for i in range(n - 10)] + [2] * 10,
        "width": [(32, 64)[i % 2] for i in range(n - 10)] + [32] * 10,
    })
    for buffer_bytes in (planning.BUFFER_BYTES, 2_000):  # 2 kB: groups are written as shorter shards
        monkeypatch.setattr(planning, "BUFFER_BYTES", buffer_bytes)
        for shard_size, batch_size in ((1000, 16), (25, 4), (7, 3)):
            shards, _ = planned_shards(manifest, "m", shard_size=shard_size)
            assert all(len({r.batch_key() for r in rows}) == 1 for rows in shards.values())  # one key a shard
            actual = sum(len(group_batches(rows, lambda r: r.batch_key(), batch_size)) for rows in shards.values())
            sizes = ["--batch-size", str(batch_size), "--shard-size", str(shard_size)]
            printed = []
            for args in (["validate", str(manifest), "--model", "tiny"],
                         ["run", str(manifest), "--model", "tiny", "--out", str(tmp_path / "out"), "--dry-run"]):
                result = invoke(*args, *sizes)
                assert result.exit_code == 0, result.output
                printed += [line for line in result.output.splitlines() if line.startswith("planned batches:")]
            assert printed[0] == printed[1]
            assert printed[0].startswith(f"planned batches: {actual} "), (buffer_bytes, shard_size, printed)


def test_problem_rows_are_manifest_rows_across_batches_and_files(tmp_path):
    """Row numbers count through every file of a folder, whatever the read batch size."""
    from sdbatch.manifests.source import open_manifest
    from sdbatch.manifests.validate import validate_source

    folder = tmp_path / "m"
    folder.mkdir()
    write_manifest(folder / "part-0.parquet", {"prompt": ["a"] * 10, "steps": [5] * 9 + [0]})
    write_manifest(folder / "part-1.parquet", {"prompt": ["b"] * 10, "steps": [0] + [5] * 8 + [0]})
    for batch_rows in (3, 65_536):
        report = validate_source(open_manifest(folder), schedulers=(), batch_rows=batch_rows)
        (problem,) = report.problems
        assert (problem.column, problem.rows, problem.count) == ("steps", [9, 10, 19], 3)


def test_duplicate_ids_found_across_files_and_batches(tmp_path):
    from sdbatch.manifests.source import open_manifest
    from sdbatch.manifests.validate import validate_source

    folder = tmp_path / "m"
    folder.mkdir()
    write_manifest(folder / "a.parquet", {"id": [f"id-{i}" for i in range(50)], "prompt": ["p"] * 50})
    write_manifest(folder / "b.parquet", {"id": ["id-7", "new", "id-49"], "prompt": ["p"] * 3})
    report = validate_source(open_manifest(folder), schedulers=(), batch_rows=8)
    (problem,) = report.problems
    assert problem.column == "id" and problem.rows == [7, 49, 50, 52] and problem.count == 4
    assert problem.values == ["id-7", "id-49"]


def test_validation_reads_in_batches_smaller_than_a_row_group(tmp_path, monkeypatch):
    """Every read is a bounded record batch, even inside one big row group."""
    from sdbatch.manifests.source import open_manifest
    from sdbatch.manifests.validate import validate_source

    sizes: list[int] = []
    real_iter_batches = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        for batch in real_iter_batches(self, *args, **kwargs):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": [f"p{i % 300}" for i in range(1000)], "steps": [2] * 1000}), path,
                   row_group_size=1000)
    report = validate_source(open_manifest(path), schedulers=(), batch_rows=128)
    assert report.rows == 1000 and report.duplicate_rows == 700 and not report.problems
    assert max(sizes) <= 128 and sum(sizes) == 2000  # two passes: the duplicate candidates are re-read


def test_wide_rows_are_read_in_fewer_rows_a_batch(tmp_path, monkeypatch):
    """Image bytes in the manifest: batches are sized by bytes, not only by rows."""
    from sdbatch.manifests import source as source_module
    from sdbatch.manifests.source import open_manifest
    from sdbatch.manifests.validate import validate_source

    sizes: list[int] = []
    real_iter_batches = pq.ParquetFile.iter_batches

    def recording(self, *args, **kwargs):
        for batch in real_iter_batches(self, *args, **kwargs):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", recording)
    monkeypatch.setattr(source_module, "BATCH_BYTES", 200_000)
    images = [bytes([i]) * 20_000 for i in range(100)]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["p"] * 100, "seed": list(range(100)), "mode": ["img2img"] * 100,
                             "init_image": pa.array(images, pa.binary())}), path, use_dictionary=False)
    report = validate_source(open_manifest(path), schedulers=())
    assert report.rows == 100 and not report.problems
    assert sum(sizes) == 100 and max(sizes) <= 10


def test_readme_schema_table_lists_every_column():
    from pathlib import Path

    from sdbatch.manifests.schema import COLUMN_NAMES

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme[readme.index("## Writing a manifest"):readme.index("## Model families")]
    for name in COLUMN_NAMES:
        assert f"`{name}`" in table, name
