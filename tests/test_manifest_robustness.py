"""Hostile and broken manifests end in one refusal line (exit 2, before any work), never a traceback
(issue 14 item 8): damaged Parquet pages, integers past int64, overflowing casts, NaN, huge strings,
nulls everywhere, unicode, empty files, zero or repeated columns, nested types."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import write_manifest
from sdbatch.manifests.problems import ManifestError
from sdbatch.manifests.schema import COLUMN_NAMES
from sdbatch.manifests.source import open_manifest
from sdbatch.manifests.validate import validate_source
from helpers import invoke

BIG = 2**63  # one past int64


def damage_second_row_group(path) -> None:
    """Overwrite the data (not the page header, not the footer) of the second row group's prompt
    column: the footer stays intact, so the file opens and the error shows only mid-stream."""
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = column.data_page_offset + 64
    for i in range(start, column.data_page_offset + column.total_compressed_size - 1, 7):
        data[i] = 0xFF
    path.write_bytes(bytes(data))


def test_damaged_parquet_pages_are_refused_naming_the_file(tmp_path, tiny_base):
    path = tmp_path / "m.parquet"
    table = pa.table({"prompt": [f"prompt number {i}" for i in range(20_000)], "steps": [2] * 20_000})
    pq.write_table(table, path, compression="none", use_dictionary=False, row_group_size=10_000)
    damage_second_row_group(path)
    source = open_manifest(path)  # the footer is fine
    with pytest.raises(ManifestError, match="cannot read"):
        for _ in source.batches(batch_rows=1000):
            pass
    for command in (["validate", str(path)],
                    ["run", str(path), "--model", tiny_base, "--out", str(tmp_path / "out"), "--device", "cpu",
                     "--executor", "local"]):
        result = invoke(*command)
        assert result.exit_code == 2, result.output
        assert f"error: manifest refused: {path}: cannot read (damaged or not a manifest file?)" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("column,values,reason", [
    ("steps", [2**64 - 1], "must be between 1 and 1000, got 18446744073709551615"),
    ("width", [BIG], f"must be between 8 and 8192, got {BIG}"),
    ("height", [BIG + 8], f"must be between 8 and 8192, got {BIG + 8}"),
    ("guidance_scale", [2**64 - 1], "must be a finite number between 0 and 100, got 18446744073709551615"),
    ("strength", [BIG], f"must be in (0, 1], got {BIG}"),
])
def test_uint64_past_int64_is_refused_with_column_and_rows(column, values, reason, tmp_path, tiny_base):
    columns = {"prompt": ["a", "b"], column: pa.array([8, *values], pa.uint64())}
    if column == "strength":
        columns.update(mode=["img2img"] * 2, init_image=["x.png"] * 2, strength=pa.array([1, *values], pa.uint64()))
    manifest = write_manifest(tmp_path / "m.parquet", columns)
    checked = invoke("validate", str(manifest))
    assert checked.exit_code == 2
    assert f"column '{column}', row 1 (1 row): {reason}" in checked.output
    ran = invoke("run", str(manifest), "--model", tiny_base, "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--executor", "local")
    assert ran.exit_code == 2 and f"column '{column}', row 1 (1 row): {reason}" in ran.output


def test_float16_and_small_integer_types_are_range_checked(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a", "b"], "guidance_scale": pa.array([7.5, 150], pa.float16()),
        "steps": pa.array([20, -3], pa.int8()), "width": pa.array([64, 65], pa.uint16())})
    result = invoke("validate", str(manifest))
    assert result.exit_code == 2
    assert "column 'guidance_scale', row 1 (1 row): must be a finite number between 0 and 100, got 150" in result.output
    assert "column 'steps', row 1 (1 row): must be between 1 and 1000, got -3" in result.output
    assert "column 'width', row 1 (1 row): must be a multiple of 8, got 65" in result.output


def test_values_that_do_not_fit_the_type_files_share_are_refused_naming_the_column(tmp_path):
    write_manifest(tmp_path / "a.parquet", {"prompt": ["a"], "seed": pa.array([1], pa.int64())})
    write_manifest(tmp_path / "b.parquet", {"prompt": ["b"], "seed": pa.array([2**64 - 1], pa.uint64())})
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == 2
    assert "column 'seed', all rows: uint64 values in" in result.output and "do not fit int64" in result.output


def test_nan_and_infinity_are_refused(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", {
        "prompt": ["a"] * 3, "mode": ["img2img"] * 3, "init_image": ["x.png"] * 3,
        "strength": [math.nan, math.inf, 0.5], "guidance_scale": pa.array([math.nan, -math.inf, 1], pa.float32())})
    result = invoke("validate", str(manifest))
    assert result.exit_code == 2
    assert "column 'strength', rows 0, 1 (2 rows): must be in (0, 1], got nan, inf" in result.output
    assert "column 'guidance_scale', rows 0, 1 (2 rows): must be a finite number between 0 and 100, got nan, -inf" \
        in result.output


def test_huge_strings_and_unicode_everywhere_are_accepted(tmp_path):
    name = "étiquette 猫 \U0001F600"
    manifest = write_manifest(tmp_path / "m.parquet", {
        "id": ["x" * 100_000, "\u202e\x00猫.png", "../..", "-rf"],
        "prompt": ["p" * 2_000_000, "\U0001F600 \x00 ünï", "\n\tx", "\ufeffa"],
        "negative_prompt": ["é" * 100_000, None, "", "\r\n"],
        "model": ["", None, "org/ü", ""],
        name: ["a", None, "ç", "\x00"],
    })
    report = validate_source(open_manifest(manifest), schedulers=())
    assert not report.problems and report.rows == 4 and report.extra_columns == [name]


def test_nulls_everywhere(tmp_path):
    typed = {n: pa.nulls(3, pa.string()) for n in ("id", "prompt", "negative_prompt", "mode", "scheduler", "model",
                                                   "init_image", "mask_image", "depth_map")}
    typed.update({n: pa.nulls(3, pa.int64()) for n in ("seed", "steps", "width", "height")})
    typed.update({n: pa.nulls(3, pa.float64()) for n in ("guidance_scale", "strength")})
    untyped = {n: pa.nulls(3) for n in COLUMN_NAMES}
    for columns in (typed, untyped):
        result = invoke("validate", str(write_manifest(tmp_path / "m.parquet", columns)))
        assert result.exit_code == 2
        assert "column 'prompt', rows 0, 1, 2 (3 rows): empty, mode txt2img needs a prompt" in result.output
    nulls_but_prompt = {**untyped, "prompt": pa.array(["a", "b", "c"])}
    result = invoke("validate", str(write_manifest(tmp_path / "m.parquet", nulls_but_prompt)))
    assert result.exit_code == 0, result.output


def test_empty_files_and_zero_columns(tmp_path):
    no_rows = write_manifest(tmp_path / "a.parquet", {"prompt": pa.array([], pa.string())})
    result = invoke("validate", str(no_rows))
    assert result.exit_code == 2 and "the manifest has no rows" in result.output
    no_columns = tmp_path / "b.parquet"
    pq.write_table(pa.table({"x": [1, 2]}).drop(["x"]), no_columns)
    result = invoke("validate", str(no_columns))
    assert result.exit_code == 2 and "column 'prompt', all rows: missing (required column)" in result.output
    (tmp_path / "c.parquet").write_bytes(b"")
    result = invoke("validate", str(tmp_path / "c.parquet"))
    assert result.exit_code == 2 and "not a Parquet file" in result.output


def test_a_repeated_column_name_is_refused_naming_it(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array([2]), pa.array(["b"])],
                                        names=["prompt", "steps", "prompt"]), path)
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert "column 'prompt', all rows: " in result.output and "more than one column of that name" in result.output


NESTED = {
    "map": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())),
    "list": pa.array([[1, 2]], pa.list_(pa.int64())),
    "struct": pa.array([{"a": 1, "b": "x"}]),
    "list of struct": pa.array([[{"a": 1}]]),
}


@pytest.mark.parametrize("kind", NESTED)
def test_nested_types_are_labels_in_extra_columns_and_wrong_types_in_known_ones(kind, tmp_path):
    extra = write_manifest(tmp_path / "e.parquet", {"prompt": ["a"], "attrs": NESTED[kind]})
    assert invoke("validate", str(extra)).exit_code == 0
    for column in COLUMN_NAMES:
        columns = {"prompt": ["a"], column: NESTED[kind]}
        result = invoke("validate", str(write_manifest(tmp_path / "k.parquet", columns)))
        assert result.exit_code == 2, (column, result.output)
        assert f"column '{column}', all rows: wrong type {kind.split()[0]}<" in result.output


def test_parquet_text_that_is_not_utf8_is_refused_with_column_and_rows(tmp_path, tiny_base):
    raw = pa.array([b"fine", b"caf\xe9", None, b"\xff\xfe"], pa.binary())
    not_utf8 = pa.Array.from_buffers(pa.string(), len(raw), raw.buffers(), raw.null_count)
    for column in ("prompt", "id", "scheduler", "model", "caption"):
        columns = {"prompt": ["a", "b", "c", "d"], column: not_utf8}
        manifest = write_manifest(tmp_path / "m.parquet", columns)
        for command in (["validate", str(manifest)],
                        ["run", str(manifest), "--model", tiny_base, "--out", str(tmp_path / "out"), "--device", "cpu",
                         "--executor", "local"]):
            result = invoke(*command)
            assert result.exit_code == 2, (column, result.output)
            assert f"column '{column}', rows 1, 3 (2 rows): not UTF-8 text in" in result.output
    assert not (tmp_path / "out").exists()
