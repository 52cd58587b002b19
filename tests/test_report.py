"""``sdbatch report``: real outputs from a real tiny-model run (local files, webdataset, S3 on a
loopback moto server), the page opened in a real headless Chromium, and what a user sees there:
one grid per group with the right cells and axis labels, every thumbnail loaded and showing the
right image in the right cell (compared on the screenshot), error rows and missing combinations
shown as such, each image linked to its full image and every parameter, user text escaped; and
the PNG sheets.

Chromium is driven through its own command line (``--dump-dom``, ``--screenshot``): no Python
package beyond the OS's ``chromium``. What the test reads from the DOM comes from a small probe
script added to a copy of the page (the page itself has no script).
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import uuid
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from helpers import write_manifest
from sdbatch.cli.main import main

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1200, 1400)
THUMB = 64  # --thumb-size: cells are 64 x 64 CSS pixels (the 32 x 32 images shown at twice their size)
HOSTILE = 'an owl <b>bold</b> & "moon" <script>document.title="pwned"</script>'
FOX = "a red fox"
SEEDS, GUIDANCE = [1, 2, 3], [3.0, 7.5]
MISSING = (FOX, 2, 7.5)  # a combination left out of the manifest
FAILING = (HOSTILE, 3, 7.5)  # a row that fails (its init image does not exist)

PROBE = """<script>
window.addEventListener("load", async () => {
  const images = [...document.images];
  await Promise.all(images.map((i) => i.decode().catch(() => null)));
  const img = (i) => { if (!i) return null; const r = i.getBoundingClientRect();
    return {src: i.getAttribute("src"), naturalWidth: i.naturalWidth, x: r.left + scrollX, y: r.top + scrollY,
            w: r.width, h: r.height}; };
  const text = (e) => (e ? e.textContent : null);
  const groups = [...document.querySelectorAll("section.group")].map((s) => ({
    heading: text(s.querySelector("h2")),
    headingElements: s.querySelector("h2") ? s.querySelector("h2").querySelectorAll("*").length : 0,
    links: [...s.querySelectorAll(".meta a")].map((a) => ({text: a.textContent, href: a.getAttribute("href")})),
    tables: [...s.querySelectorAll("table.grid")].map((t) => ({
      corner: text(t.querySelector("th.corner")),
      x: [...t.querySelectorAll("thead th.x")].map(text),
      rows: [...t.querySelectorAll("tbody tr")].map((tr) => ({
        y: text(tr.querySelector("th.y")),
        cells: [...tr.querySelectorAll("td")].map((td) => ({
          kind: td.className, text: td.innerText,
          href: td.querySelector("a") ? td.querySelector("a").getAttribute("href") : null,
          img: img(td.querySelector("img"))}))}))}))}));
  const params = Object.fromEntries([...document.querySelectorAll("table.params tr")].map(
    (tr) => [text(tr.querySelector("th")), text(tr.querySelector("td"))]));
  const full = document.querySelector("img.full");
  const fullLink = [...document.querySelectorAll("a")].find((a) => a.textContent === "open the full image");
  document.body.setAttribute("data-probe", JSON.stringify({
    title: document.title, axes: text(document.querySelector(".axes")), groups, images: images.map(img),
    params, full: img(full), fullHref: fullLink ? fullLink.getAttribute("href") : null,
    injected: document.querySelectorAll("main b, main script, main i, table.params i").length}));
});
</script>"""


# -- the browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium(tmp_path_factory) -> list[str]:
    binary = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    if binary is None:
        pytest.skip("Chromium is not installed (Debian/Ubuntu: apt-get install -y chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--force-device-scale-factor=1", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--user-data-dir={profile}"]


def _browse(chromium: list[str], *args: str) -> str:
    done = subprocess.run([*chromium, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def look(chromium: list[str], page: Path) -> dict:
    """What the page shows once loaded (its DOM, read by the probe from a copy beside it)."""
    probe = page.with_name(f".probe-{uuid.uuid4().hex[:8]}-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", f"{PROBE}</body>"), encoding="utf-8")
    class Probe(HTMLParser):
        found = None

        def handle_starttag(self, tag, attrs):
            if tag == "body":
                self.found = dict(attrs).get("data-probe")

    try:
        for budget in (5000, 20000, 60000):  # a busy machine can dump the DOM before "load" fired
            parser = Probe()
            parser.feed(_browse(chromium, f"--virtual-time-budget={budget}", "--dump-dom", probe.as_uri()))
            if parser.found:
                break
    finally:
        probe.unlink()
    assert parser.found, "the page never finished loading (no probe result)"
    return json.loads(parser.found)


def screenshot(chromium: list[str], page: Path, tmp_path: Path) -> np.ndarray:
    shot = tmp_path / f"{page.stem}-shot.png"
    _browse(chromium, f"--screenshot={shot}", page.as_uri())
    with Image.open(shot) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


# -- real outputs ---------------------------------------------------------------------------------
def sweep_columns(init_missing: str) -> dict:
    """2 prompts x 3 seeds x 2 guidance scales, 32 x 32, 2 steps; one combination left out, one row
    failing; a label column naming each prompt's subject and one per row."""
    rows = [(p, s, g) for p in (FOX, HOSTILE) for s in SEEDS for g in GUIDANCE if (p, s, g) != MISSING]
    failing = [(p, s, g) == FAILING for p, s, g in rows]
    return {
        "prompt": [p for p, _, _ in rows],
        "seed": pa.array([s for _, s, _ in rows], pa.uint64()),
        "guidance_scale": [g for _, _, g in rows],
        "steps": [2] * len(rows),
        "width": [32] * len(rows),
        "height": [32] * len(rows),
        "mode": ["img2img" if f else "txt2img" for f in failing],
        "strength": [0.8 if f else None for f in failing],
        "init_image": [init_missing if f else None for f in failing],
        "subject": ["fox" if p == FOX else "owl" for p, _, _ in rows],
        "note": [f"<i>take {i}</i>" for i in range(len(rows))],
    }


def generate(tmp_path: Path, model: str, out: str, *extra: str) -> None:
    manifest = write_manifest(tmp_path / "sweep.parquet", sweep_columns(str(tmp_path / "missing.png")))
    result = CliRunner().invoke(main, ["run", str(manifest), "--model", model, "--out", out, "--device", "cpu",
                                       "--executor", "local", "--shard-size", "5", *extra])
    assert result.exit_code == 1, result.output  # one row fails by design; the rest are ok


def make_report(*args: str):
    return CliRunner().invoke(main, ["report", *args])


def metadata(out: Path) -> list[dict]:
    tables = [pq.read_table(p) for p in sorted((out / "metadata").glob("*.parquet"))]
    return pa.concat_tables(tables).to_pylist()


@pytest.fixture(scope="module")
def local_job(tmp_path_factory, tiny_base) -> Path:
    tmp = tmp_path_factory.mktemp("report-local")
    generate(tmp, tiny_base, str(tmp / "out"))
    return tmp / "out"


# -- what the user should see -------------------------------------------------------------------
def expected_row(rows: list[dict], prompt: str, seed: str, guidance: str) -> dict | None:
    found = [r for r in rows
             if r["prompt"] == prompt and str(r["seed"]) == seed and f"{r['guidance_scale']:g}" == guidance]
    assert len(found) <= 1
    return found[0] if found else None


def tile(shot: np.ndarray, image: dict) -> np.ndarray:
    x, y = round(image["x"]), round(image["y"])
    return shot[y : y + round(image["h"]), x : x + round(image["w"])]


def as_shown(data: bytes, size: tuple[int, int]) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def check_grids(seen: dict, rows: list[dict], read_image, shot: np.ndarray | None = None) -> None:
    """Two groups (one per prompt), each 3 seeds down x 2 guidance scales across; every cell what
    the metadata says it is; on the screenshot, each cell shows its own row's image."""
    assert "X (across): guidance_scale" in seen["axes"] and "Y (down): seed" in seen["axes"]
    assert [g["heading"] for g in seen["groups"]] == [f"prompt {FOX}", f"prompt {HOSTILE}"]
    assert seen["title"].startswith("sdbatch report") and seen["injected"] == 0
    ok_rows = {r["row_index"] for r in rows if r["status"] == "ok"}
    for group in seen["groups"]:
        assert group["headingElements"] == 1  # the prompt's <b> and <script> are text, not elements
        prompt = group["heading"].removeprefix("prompt ")
        (table,) = group["tables"]
        assert table["x"] == ["3", "7.5"] and [r["y"] for r in table["rows"]] == ["1", "2", "3"]
        assert "guidance_scale" in table["corner"] and "seed" in table["corner"]
        for line in table["rows"]:
            assert len(line["cells"]) == 2
            for guidance, cell in zip(table["x"], line["cells"]):
                row = expected_row(rows, prompt, line["y"], guidance)
                if row is None:
                    assert (prompt, int(line["y"]), float(guidance)) == MISSING
                    assert "empty" in cell["kind"] and "no image" in cell["text"]
                elif row["status"] != "ok":
                    assert (prompt, int(line["y"]), float(guidance)) == FAILING
                    assert "error" in cell["kind"] and "missing.png" in cell["text"]
                    assert cell["href"].endswith(f"rows/{row['row_index']}.html")
                else:
                    assert "ok" in cell["kind"] and cell["img"]["naturalWidth"] == 32
                    assert cell["href"].endswith(f"rows/{row['row_index']}.html")
                    ok_rows.discard(row["row_index"])
                    if shot is not None:
                        shown = tile(shot, cell["img"])
                        assert shown.shape[:2] == (THUMB, THUMB)
                        own = np.abs(shown - as_shown(read_image(row), (THUMB, THUMB))).mean()
                        # the tiny model's images hardly change with prompt and guidance; seeds tell
                        others = [np.abs(shown - as_shown(read_image(r), (THUMB, THUMB))).mean()
                                  for r in rows if r["status"] == "ok" and r["seed"] != row["seed"]]
                        assert own < 12 and own < min(others) / 2, (own, min(others))
    assert not ok_rows  # every ok row has its cell
    assert all(i["naturalWidth"] > 0 for i in seen["images"]) and len(seen["images"]) == 10


def check_row_page(chromium, page_dir: Path, cell_href: str, row: dict, full_bytes: bytes) -> None:
    """A cell's link: the full image (loaded), a link to it, and every metadata column of the row."""
    row_page = page_dir / unquote(cell_href)
    detail = look(chromium, row_page)
    assert detail["full"]["naturalWidth"] == 32 and detail["injected"] == 0
    assert (row_page.parent / unquote(detail["fullHref"])).read_bytes() == full_bytes
    params = detail["params"]
    assert set(params) == set(row)  # every column, the labels included
    assert params["prompt"] == row["prompt"] and params["seed"] == str(row["seed"])
    assert params["guidance_scale"] == f"{row['guidance_scale']:g}" and params["subject"] == row["subject"]
    assert params["note"] == row["note"] and params["image"] == row["image"]


def test_page_in_a_browser(chromium, local_job, tmp_path):
    page = tmp_path / "site" / "report.html"
    result = make_report(str(local_job), "-o", str(page), "--thumb-size", str(THUMB))
    assert result.exit_code == 0, result.output
    assert "2 groups by prompt of 2 guidance_scale x 3 seed: 10 images, 1 error row, 1 empty cell" in result.output
    rows = metadata(local_job)
    seen = look(chromium, page)
    shot = screenshot(chromium, page, tmp_path)
    assert shot.std() > 20  # not blank
    check_grids(seen, rows, lambda r: (local_job / r["image"]).read_bytes(), shot)
    # follow the first cell's link, as a click would
    first = seen["groups"][0]["tables"][0]["rows"][0]["cells"][0]
    row = expected_row(rows, FOX, "1", "3")
    check_row_page(chromium, page.parent, first["href"], row, (local_job / row["image"]).read_bytes())
    # the error row's page says why, in full
    failing = next(r for r in rows if r["status"] == "error")
    detail = look(chromium, page.parent / "report_files" / "rows" / f"{failing['row_index']}.html")
    assert detail["full"] is None and detail["params"]["error"] == failing["error"]


def test_sheets_hold_each_group_as_a_grid_with_labels(local_job, tmp_path):
    page = tmp_path / "report.html"
    result = make_report(str(local_job), "-o", str(page), "--thumb-size", str(THUMB), "--sheets")
    assert result.exit_code == 0, result.output
    sheets = sorted((tmp_path / "report_files" / "sheets").glob("*.png"))
    assert len(sheets) == 2
    rows = metadata(local_job)
    for sheet, prompt in zip(sheets, (FOX, HOSTILE)):
        with Image.open(sheet) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        # cells are solid blocks (an image, an error's or an empty cell's fill) on the white sheet;
        # no text makes a line of THUMB pixels without a gap: 2 columns x 3 lines of cells
        filled = (pixels < 255).any(axis=2)
        columns = _runs(np.array([_longest_run(filled[:, x]) >= THUMB for x in range(filled.shape[1])]))
        lines = _runs(np.array([_longest_run(filled[y, :]) >= THUMB for y in range(filled.shape[0])]))
        assert len(columns) == 2 and len(lines) == 3, (columns, lines)
        assert all(b - a == THUMB for a, b in columns + lines), (columns, lines)
        for (left, _), guidance in zip(columns, ("3", "7.5")):
            assert (pixels[lines[0][0] - 20 : lines[0][0], left : left + THUMB] < 100).any()  # its X label
            for (top, _), seed in zip(lines, ("1", "2", "3")):
                assert (pixels[top : top + THUMB, : columns[0][0]] < 100).any()  # its Y label, left
                row = expected_row(rows, prompt, seed, guidance)
                if row is None or row["status"] != "ok":
                    continue
                cell = pixels[top : top + THUMB, left : left + THUMB]
                own = np.abs(cell - as_shown((local_job / row["image"]).read_bytes(), (THUMB, THUMB))).mean()
                assert own < 12, (prompt, seed, guidance, own)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _longest_run(mask: np.ndarray) -> int:
    return max((b - a for a, b in _runs(mask)), default=0)


def test_webdataset_layout(chromium, tiny_base, tmp_path):
    out = tmp_path / "out"
    generate(tmp_path, tiny_base, str(out), "--layout", "webdataset")
    page = tmp_path / "report.html"
    result = make_report(str(out), "-o", str(page), "--thumb-size", str(THUMB))
    assert result.exit_code == 0, result.output
    rows = metadata(out)
    members = {}
    for tar_path in (out / "shards").glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            members |= {f"shards/{tar_path.name}#{m.name}": tar.extractfile(m).read() for m in tar if m.isfile()}
    seen = look(chromium, page)
    check_grids(seen, rows, lambda r: members[r["image"]])
    cell = seen["groups"][1]["tables"][0]["rows"][0]["cells"][1]
    row = expected_row(rows, HOSTILE, "1", "7.5")
    check_row_page(chromium, tmp_path, cell["href"], row, members[row["image"]])


def test_s3_output(chromium, tiny_base, endpoint, tmp_path):
    bucket = f"sdbatch-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket=bucket)
    generate(tmp_path, tiny_base, f"s3://{bucket}/job", "--s3-endpoint-url", endpoint)
    page = tmp_path / "report.html"
    result = make_report(f"s3://{bucket}/job", "-o", str(page), "--thumb-size", str(THUMB),
                         "--s3-endpoint-url", endpoint)
    assert result.exit_code == 0, result.output

    def get(key: str) -> bytes:
        return client.get_object(Bucket=bucket, Key=f"job/{key}")["Body"].read()

    listed = client.list_objects_v2(Bucket=bucket, Prefix="job/metadata/")["Contents"]
    rows = pa.concat_tables([pq.read_table(io.BytesIO(get(o["Key"].removeprefix("job/")))) for o in listed]).to_pylist()
    seen = look(chromium, page)
    check_grids(seen, rows, lambda r: get(r["image"]))
    cell = seen["groups"][0]["tables"][0]["rows"][2]["cells"][1]
    row = expected_row(rows, FOX, "3", "7.5")
    check_row_page(chromium, tmp_path, cell["href"], row, get(row["image"]))

    missing = make_report(f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/job", "--s3-endpoint-url", endpoint,
                          "-o", str(tmp_path / "other.html"))
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and "does not exist" in missing.output


def test_refusals_are_one_line(local_job, tmp_path):
    def refused(*args: str) -> str:
        result = make_report(*args)
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        return result.output

    page = str(tmp_path / "r.html")
    assert "did you mean guidance_scale?" in refused(str(local_job), "-o", page, "--x", "guidance")
    assert "did you mean scheduler?" in refused(str(local_job), "-o", page, "--y", "sampler")
    assert "different columns" in refused(str(local_job), "-o", page, "--x", "seed", "--y", "seed")
    assert "not an sdbatch output" in refused(str(tmp_path / "nowhere"), "-o", page)
    assert "--thumb-size" in refused(str(local_job), "-o", page, "--thumb-size", "0")
    assert not (tmp_path / "r.html").exists()


def test_chosen_axes_and_a_large_sweep(tiny_base, tmp_path):
    """3 prompts x 100 seeds x 4 guidance scales: by default one grid per prompt, guidance across
    and seeds down; with --x seed the 100 seeds wrap onto lines of --columns; --group by a label."""
    prompts = ["a red fox", "an owl", "a lighthouse at night, oil painting"]
    n = len(prompts) * 100 * 4
    columns = {
        "prompt": [p for p in prompts for _ in range(400)],
        "seed": pa.array([s for _ in prompts for s in range(100) for _ in range(4)], pa.uint64()),
        "guidance_scale": [g for _ in range(300) for g in (3.0, 5.0, 7.5, 10.0)],
        "steps": [1] * n, "width": [32] * n, "height": [32] * n,
        "half": [f"h{i // 200 % 2}" for i in range(n)],  # a label: seeds 0-49 h0, 50-99 h1
    }
    manifest = write_manifest(tmp_path / "big.parquet", columns)
    out = tmp_path / "out"
    ran = CliRunner().invoke(main, ["run", str(manifest), "--model", tiny_base, "--out", str(out), "--device", "cpu",
                                    "--executor", "local", "--batch-size", "64"])
    assert ran.exit_code == 0, ran.output

    def grids(*args: str) -> list[dict]:
        page = tmp_path / "big.html"
        result = make_report(str(out), "-o", str(page), "--thumb-size", "32", *args)
        assert result.exit_code == 0, result.output
        return _grids(page.read_text(encoding="utf-8"))

    default = grids()  # prompt and the label as groups: 6 grids of 4 guidance x 50 seeds
    assert [g["heading"] for g in default] == [f"prompt {p} · half {h}" for p in prompts for h in ("h0", "h1")]
    for group in default:
        (table,) = group["tables"]
        assert table["x"] == ["3", "5", "7.5", "10"] and len(table["y"]) == 50
        assert table["cells"] == 200 and table["images"] == 200
    wrapped = grids("--x", "seed", "--y", "guidance_scale", "--group", "prompt", "--columns", "8")
    assert [g["heading"] for g in wrapped] == [f"prompt {p}" for p in prompts]
    for group in wrapped:
        assert len(group["tables"]) == 13  # 100 seeds, 8 a line
        assert [x for t in group["tables"] for x in t["x"]] == [str(s) for s in range(100)]
        assert all(t["y"] == ["3", "5", "7.5", "10"] for t in group["tables"])
        assert sum(t["cells"] for t in group["tables"]) == 400 == sum(t["images"] for t in group["tables"])


def _grids(html: str) -> list[dict]:
    """Groups, their tables, X and Y labels and cells, read from the page's HTML."""

    class Grids(HTMLParser):
        def __init__(self):
            super().__init__()
            self.groups, self.text, self.where = [], None, None

        def handle_starttag(self, tag, attrs):
            classes = (dict(attrs).get("class") or "").split()
            if tag == "section" and "group" in classes:
                self.groups.append({"heading": "", "tables": []})
            elif tag == "h2":
                self.where = "heading"
            elif tag == "table":
                self.groups[-1]["tables"].append({"x": [], "y": [], "cells": 0, "images": 0})
            elif tag == "th" and ("x" in classes or "y" in classes):
                self.where, self.text = classes[0], ""
            elif tag == "td":
                self.groups[-1]["tables"][-1]["cells"] += 1
            elif tag == "img":
                self.groups[-1]["tables"][-1]["images"] += 1

        def handle_endtag(self, tag):
            if tag == "h2" or (tag == "th" and self.where in ("x", "y")):
                if tag == "th":
                    self.groups[-1]["tables"][-1][self.where].append(self.text)
                self.where = None

        def handle_data(self, data):
            if self.where == "heading":
                self.groups[-1]["heading"] += data
            elif self.where in ("x", "y"):
                self.text += data

    parser = Grids()
    parser.feed(html)
    for group in parser.groups:
        group["heading"] = " ".join(group["heading"].split())
    return parser.groups


def test_report_starts_without_torch():
    """The report command and everything it runs import no torch, diffusers or Ray (it starts in
    well under a second)."""
    code = ("import sys, sdbatch.cli.report_command, sdbatch.jobs.report.build; "
            "print([m for m in ('torch', 'diffusers', 'transformers', 'ray') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_only_committed_shards_count(local_job, tmp_path):
    """A shard without its commit marker (a job still running, or interrupted) is not shown, and
    the page and output say the job is incomplete."""
    out = tmp_path / "out"
    shutil.copytree(local_job, out)
    (out / "_job" / "shards" / "00001.json").unlink()
    shown = [r for r in metadata(out) if r["shard"] != "00001"]
    page = tmp_path / "report.html"
    result = make_report(str(out), "-o", str(page))
    assert result.exit_code == 0, result.output
    assert "note: the job is incomplete: 2 of 3 shards are committed" in result.output
    ok = sum(r["status"] == "ok" for r in shown)
    assert f": {ok} images, " in result.output
    assert sorted(p.stem for p in (tmp_path / "report_files" / "rows").glob("*.html")) == \
        sorted(str(r["row_index"]) for r in shown)
    assert "the job is incomplete" in page.read_text(encoding="utf-8")
