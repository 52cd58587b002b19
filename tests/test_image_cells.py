"""Image cells from an untrusted manifest (issue 14, items 3 and 9): only regular files (or objects)
are read, at most --max-image-bytes of them, images checked for size from their header before they
are decoded, sizes taken from an image held to the manifest's 8192 limit, and local paths confined
to the manifest's folder and --allow-path folders, with one refusal that tells nothing about the
file."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from dataclasses import replace
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from helpers import invoke, write_manifest
from sdbatch.jobs.worker.image_cells import OUTSIDE_ROOTS, CellAccess, ImageCellError, load_cell_image
from sdbatch.jobs.worker.inputs import FailedRow, ReadyRow, prepare_row
from sdbatch.manifests.schema import GenerationRow
from helpers import png


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and holds no pixel data (cheap to make at any size)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def within(seconds: float, call):
    """``call()``'s result, failing the test (not hanging it) when it takes longer than ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still reading after {seconds}s: the cell hangs the job"
    if "error" in box:
        raise box["error"]
    return box["value"]


def cell_error(cell, access: CellAccess = CellAccess()) -> str:
    with pytest.raises(ImageCellError) as caught:
        within(20, lambda: load_cell_image(cell, access))
    return str(caught.value)


def test_a_fifo_or_a_device_fails_at_once_instead_of_hanging_or_reading_without_end(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    try:
        assert "not a regular file" in cell_error(str(fifo))
    finally:  # on a reader stuck in open(), this lets it go
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert "not a regular file" in cell_error("/dev/zero")
    assert "not a regular file" in cell_error("file:///dev/zero")
    assert "is a folder" in cell_error(str(tmp_path))


def test_image_cells_are_read_up_to_the_byte_cap(tmp_path):
    data = png(32, 32)
    path = tmp_path / "in.png"
    path.write_bytes(data)
    small = CellAccess(max_bytes=len(data) - 1)
    assert f"larger than --max-image-bytes ({len(data) - 1:,} bytes)" in cell_error(str(path), small)
    assert "larger than --max-image-bytes" in cell_error(data, small)
    assert load_cell_image(str(path), CellAccess(max_bytes=len(data))).image.size == (32, 32)


def test_a_huge_image_is_refused_from_its_header_before_decoding():
    error = cell_error(png_header_only(8193, 8193))
    assert "8193x8193 image: more than 67,108,864 pixels" in error and "not decoded" in error
    # at the limit the header passes and decoding is what fails (this file holds no pixels)
    assert "cannot decode" in cell_error(png_header_only(8192, 8192))


@pytest.fixture(scope="module")
def tiny(tiny_models):
    from sdbatch.pipeline.loading import load_model

    return load_model(tiny_models["base"], "cpu", "fp32")


def test_a_size_taken_from_the_init_image_is_held_to_8192(tiny):
    row = GenerationRow(row_index=0, key="r", id="r", prompt="a", seed=1, steps=2, mode="img2img",
                        init_image=png(8200, 16), model=tiny.name)
    refused = prepare_row(row, lambda name: tiny)
    assert isinstance(refused, FailedRow)
    assert "column init_image: image is 8200x16: a size taken from the image must be at most 8192" in refused.error
    ready = prepare_row(replace(row, width=16, height=16), lambda name: tiny)
    assert isinstance(ready, ReadyRow) and ready.input.init_image.size == (16, 16)
    assert ready.trace.init_image_resized and ready.trace.init_image_width == 8200


def _errors(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in ds.dataset(str(out / "metadata"), format="parquet").to_table().to_pylist()}


def test_image_paths_are_confined_to_the_manifest_folder_and_allowed_folders(tmp_path, tiny_base):
    job, outside = tmp_path / "job", tmp_path / "outside"
    (job / "in").mkdir(parents=True)
    outside.mkdir()
    (job / "in" / "ok.png").write_bytes(png(16, 16, 1))
    (job / "in" / "big.png").write_bytes(png(64, 64, 2))
    (outside / "o.png").write_bytes(png(16, 16, 3))
    (job / "link.png").symlink_to(outside / "o.png")
    cells = {
        "inside": "in/ok.png", "inside-dots": "in/../in/ok.png", "big": "in/big.png",
        "dotdot": "../outside/o.png", "absolute": str(outside / "o.png"), "uri": (outside / "o.png").as_uri(),
        "symlink": "link.png", "passwd": "/etc/passwd", "missing": "/nonexistent/x.png",
    }
    manifest = write_manifest(job / "m.parquet", {
        "id": list(cells), "prompt": ["a fox"] * len(cells), "mode": ["img2img"] * len(cells),
        "init_image": list(cells.values()), "steps": [2] * len(cells), "strength": [0.5] * len(cells),
    })
    base = ["run", str(manifest), "--model", tiny_base, "--device", "cpu", "--executor", "local"]

    result = invoke(*base, "--out", str(tmp_path / "out1"), "--max-image-bytes", "4000")
    assert result.exit_code == 1, result.output
    rows = _errors(tmp_path / "out1")
    assert rows["inside"]["status"] == rows["inside-dots"]["status"] == "ok"
    assert "larger than --max-image-bytes (4,000 bytes)" in rows["big"]["error"]
    refused = ["dotdot", "absolute", "uri", "symlink", "passwd", "missing"]
    for name in refused:
        error = rows[name]["error"]
        assert rows[name]["status"] == "error" and rows[name]["error_kind"] == "input", name
        shown = cells[name] if cells[name].startswith(("/", "file:")) else f"{job}/{cells[name]}"
        # the whole message after the cell is the one refusal: nothing on whether the file exists, or its size
        assert error.endswith(f"column init_image: {shown}: {OUTSIDE_ROOTS}"), error

    result = invoke(*base, "--out", str(tmp_path / "out2"), "--allow-path", str(outside))
    assert result.exit_code == 1, result.output
    rows = _errors(tmp_path / "out2")
    assert {n for n, r in rows.items() if r["status"] == "ok"} == set(cells) - {"passwd", "missing"}
