"""Manifests in Parquet, CSV, TSV or JSON Lines (by extension, or by content where the extension
says nothing) read through pyarrow's readers with the same validation and record-batch streaming;
anything else refused naming the formats (issue 10)."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.manifests import formats
from sdbatch.manifests.normalise import normalise_batch
from sdbatch.manifests.problems import ManifestError
from sdbatch.manifests.source import open_manifest
from sdbatch.manifests.validate import validate_source
from helpers import invoke

ROWS = [
    {"id": "001", "prompt": "a red fox, at dusk", "seed": 2**64 - 1, "steps": 2, "guidance_scale": 5.5,
     "width": 64, "scheduler": "ddim", "label": "x"},
    {"id": "002", "prompt": "NA", "seed": 7, "steps": 3, "guidance_scale": 7, "width": None, "scheduler": None,
     "label": "y"},
    {"id": "003", "prompt": "123", "seed": 0, "steps": 2, "guidance_scale": 1.5, "width": 128, "scheduler": "euler_a",
     "label": "z"},
]
CSV_TEXT = ('id,prompt,seed,steps,guidance_scale,width,scheduler,label\n'
            '001,"a red fox, at dusk",18446744073709551615,2,5.5,64,ddim,x\n'
            '002,NA,7,3,7,,,y\n'
            '003,123,0,2,1.5,128,euler_a,z\n')


def write_all_formats(folder) -> dict[str, object]:
    table = pa.Table.from_pylist(ROWS, schema=pa.schema([
        ("id", pa.string()), ("prompt", pa.string()), ("seed", pa.uint64()), ("steps", pa.int64()),
        ("guidance_scale", pa.float64()), ("width", pa.int64()), ("scheduler", pa.string()), ("label", pa.string())]))
    paths = {"parquet": folder / "m.parquet", "csv": folder / "m.csv", "tsv": folder / "m.tsv",
             "jsonl": folder / "m.jsonl"}
    pq.write_table(table, paths["parquet"])
    paths["csv"].write_text(CSV_TEXT)
    paths["tsv"].write_text(CSV_TEXT.replace('"a red fox, at dusk"', "a red fox, at dusk").replace(",", "\t")
                            .replace("a red fox\t at dusk", "a red fox, at dusk"))
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return paths


def normalised_rows(path) -> list[dict]:
    source = open_manifest(path)
    known = [n for n in source.column_names if n != "label"]
    return [row for _, batch in source.batches(known) for row in normalise_batch(batch, "m").to_pylist()]


def test_csv_tsv_and_jsonl_read_as_the_same_rows_as_parquet(tmp_path):
    paths = write_all_formats(tmp_path)
    expected = normalised_rows(paths["parquet"])
    assert [r["id"] for r in expected] == ["001", "002", "003"]
    for fmt in ("csv", "tsv", "jsonl"):
        assert normalised_rows(paths[fmt]) == expected, fmt
        result = invoke("validate", str(paths[fmt]))
        assert result.exit_code == 0, (fmt, result.output)
        assert "rows: 3" in result.output and "extra columns (carried through): label" in result.output


def test_csv_text_columns_stay_text_and_numbers_are_numbers(tmp_path):
    (tmp_path / "m.csv").write_text(CSV_TEXT)
    schema = open_manifest(tmp_path / "m.csv").schema
    assert schema.field("id").type == pa.string()  # "001", not 1
    assert schema.field("prompt").type == pa.string()  # "123" and "NA" are prompts
    assert schema.field("scheduler").type == pa.string()
    assert schema.field("seed").type == pa.uint64()  # past int64
    assert schema.field("steps").type == pa.int64() and schema.field("guidance_scale").type == pa.float64()
    rows = normalised_rows(tmp_path / "m.csv")
    assert [r["prompt"] for r in rows] == ["a red fox, at dusk", "NA", "123"]
    assert rows[1]["width"] is None and rows[1]["scheduler"] is None  # empty cell: the default


def test_csv_nan_is_a_number_to_refuse_not_a_missing_value(tmp_path):
    (tmp_path / "m.csv").write_text("prompt,guidance_scale,negative_prompt\na,nan,\"\"\nb,inf,x\n")
    result = invoke("validate", str(tmp_path / "m.csv"))
    assert result.exit_code == 2
    assert "column 'guidance_scale', rows 0, 1 (2 rows): must be a finite number between 0 and 100, got nan, inf" \
        in result.output


@pytest.mark.parametrize("name,content", [
    ("manifest", CSV_TEXT), ("manifest.txt", CSV_TEXT), ("manifest.json", json.dumps(ROWS[0]) + "\n"),
    ("manifest.data", "\ufeff" + CSV_TEXT.replace(",", "\t")),
])
def test_format_by_content_where_the_extension_says_nothing(name, content, tmp_path):
    (tmp_path / name).write_text(content)
    result = invoke("validate", str(tmp_path / name))
    assert result.exit_code == 0, result.output


def test_parquet_by_content(tmp_path):
    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "manifest")
    assert formats.detect_format(str(tmp_path / "manifest")) == "parquet"
    assert invoke("validate", str(tmp_path / "manifest")).exit_code == 0


@pytest.mark.parametrize("name,content,reason", [
    ("m.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "none of the formats sdbatch reads"),
    ("m.json", b'[{"prompt": "a"}]', "a JSON array; write JSON Lines"),
    ("m.bin", "prompt\ncaf\xe9\n".encode("latin-1"), "text that is not UTF-8"),
    ("m.parquet", CSV_TEXT.encode(), "not a Parquet file (no Parquet magic bytes; it looks like CSV)"),
])
def test_files_in_no_manifest_format_are_refused_naming_the_formats(name, content, reason, tmp_path):
    (tmp_path / name).write_bytes(content)
    result = invoke("validate", str(tmp_path / name))
    assert result.exit_code == 2
    assert reason in result.output
    assert "sdbatch reads Parquet (.parquet, .pq), CSV (.csv), TSV (.tsv) or JSON Lines (.jsonl, .ndjson)" \
        in result.output


def test_folders_and_globs_of_csv_and_jsonl(tmp_path):
    folder = tmp_path / "m"
    (folder / "mode=txt2img").mkdir(parents=True)
    (folder / "mode=txt2img" / "a.csv").write_text("prompt,steps\na,2\nb,0\n")
    (folder / "mode=txt2img" / "b.csv.gz").write_bytes(gzip.compress(b"prompt,steps,label_x\nc,0,\nd,2,\n"))
    (folder / "_SUCCESS").write_text("")
    (folder / ".hidden.csv").write_text("not,a,manifest\n")
    report = validate_source(open_manifest(folder), schedulers=(), batch_rows=1)
    assert report.rows == 4 and report.modes == {"txt2img": 4}
    (problem,) = report.problems
    assert (problem.column, problem.rows) == ("steps", [1, 2])  # row numbers count through both files

    (tmp_path / "j").mkdir()
    for i in range(3):
        (tmp_path / "j" / f"part-{i}.jsonl").write_text(json.dumps({"prompt": f"p{i}", "steps": 2}) + "\n")
    result = invoke("validate", str(tmp_path / "j" / "*.jsonl"))
    assert result.exit_code == 0 and "(3 files)" in result.output and "rows: 3" in result.output


def test_a_folder_mixing_formats_is_refused(tmp_path):
    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "a.parquet")
    (tmp_path / "b.csv").write_text("prompt\nb\n")
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 2
    assert "the manifest's files must share one format" in result.output and "b.csv is csv" in result.output


def test_text_files_stream_in_bounded_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "TEXT_BLOCK_BYTES", 4096)
    (tmp_path / "m.csv").write_text("prompt,steps\n" + "".join(f"prompt number {i},{i % 9}\n" for i in range(3000)))
    source = open_manifest(tmp_path / "m.csv")
    sizes = [batch.num_rows for _, batch in source.batches(batch_rows=128)]
    assert sum(sizes) == 3000 and max(sizes) <= 128 and len(sizes) > 3000 // 128
    report = validate_source(source, schedulers=(), batch_rows=128)
    (problem,) = report.problems
    assert problem.column == "steps" and problem.count == 334 and problem.rows[:2] == [0, 9]


def test_a_bad_cell_after_the_first_block_is_refused_naming_its_column(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "TEXT_BLOCK_BYTES", 4096)
    (tmp_path / "m.csv").write_text("prompt,steps\n" + "a,2\n" * 3000 + "b,abc\n")
    result = invoke("validate", str(tmp_path / "m.csv"))
    assert result.exit_code == 2
    assert "column 'steps': cannot read" in result.output and "invalid value 'abc'" in result.output
    (tmp_path / "long.csv").write_text("prompt,steps\n" + "a,2\n" * 10 + "x" * 10_000 + ",2\n")
    result = invoke("validate", str(tmp_path / "long.csv"))
    assert result.exit_code == 2 and "a row longer than" in result.output


@pytest.mark.parametrize("name,content,message", [
    ("m.csv", "", "empty file (no header, no rows)"),
    ("m.csv", "prompt,steps\n", "the manifest has no rows"),
    ("m.jsonl", "", "empty file (no rows)"),
    ("m.csv", "prompt,label\ncaf\xe9,x\n", "column 'prompt': cannot read"),
    ("m.csv", "prompt,prompt\na,b\n", "column 'prompt': cannot read"),
    ("m.jsonl", '{"prompt": "a", "id": 1}\n{"prompt": "b", "id": "x"}\n', "column 'id': cannot read"),
    ("m.jsonl", '{"prompt": "a", "seed": 18446744073709551615}\n{"prompt": "b", "seed": -1}\n',
     "column 'seed': cannot read"),
])
def test_unreadable_text_manifests_are_refused_in_one_line(name, content, message, tmp_path):
    (tmp_path / name).write_bytes(content.encode("latin-1" if "caf" in content else "utf-8"))
    result = invoke("validate", str(tmp_path / name))
    assert result.exit_code == 2, result.output
    assert "error: manifest refused:" in result.output and message in result.output
    if "caf" in content:
        assert "not UTF-8" in result.output


def test_detect_format_by_extension_first():
    assert formats.format_by_extension("a/b.PQ") == "parquet"
    assert formats.format_by_extension("b.ndjson") == "jsonl"
    assert formats.format_by_extension("b.tsv.gz") == "tsv"
    assert formats.format_by_extension("b.parquet.gz") is None
    assert formats.format_by_extension("b.txt") is None
    with pytest.raises(ManifestError, match="No such file"):
        formats.detect_format("/nonexistent/x")


def test_a_csv_manifest_runs_to_the_same_images_as_its_parquet_twin(tmp_path, tiny_base):
    import pyarrow.dataset as ds

    rows = "id,prompt,seed,steps,width,height,guidance_scale,label\n" + "".join(
        f"00{i},prompt {i},{i},2,32,32,{3 + i},{i}\n" for i in range(3))
    (tmp_path / "m.csv").write_text(rows)
    pq.write_table(pa.table({"id": ["000", "001", "002"], "prompt": [f"prompt {i}" for i in range(3)],
                             "seed": [0, 1, 2], "steps": [2] * 3, "width": [32] * 3, "height": [32] * 3,
                             "guidance_scale": [3.0, 4.0, 5.0], "label": [0, 1, 2]}), tmp_path / "m.parquet")
    images = {}
    for name in ("m.csv", "m.parquet"):
        out = tmp_path / f"out-{name}"
        result = invoke("run", str(tmp_path / name), "--model", tiny_base, "--out", str(out), "--device", "cpu",
                        "--executor", "local")
        assert result.exit_code == 0, result.output
        meta = sorted(ds.dataset(str(out / "metadata")).to_table().to_pylist(), key=lambda r: r["id"])
        assert [(r["id"], r["seed"], r["label"]) for r in meta] == [("000", 0, 0), ("001", 1, 1), ("002", 2, 2)]
        images[name] = [(out / r["image"]).read_bytes() for r in meta]
    assert images["m.csv"] == images["m.parquet"]
