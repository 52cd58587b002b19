"""The report's HTML: one static page of grids (no script, no server; opens from disk) and one small
page per row with its full image and every metadata column.

The pages are Jinja2 templates (``templates/``) with autoescape on: everything that comes from the
metadata (prompts are user text, labels, errors, ids, paths) is text, and links go through the
``href`` filter (percent-encoded). This module turns a job's rows into what the templates show.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from .grid import SIZE, Group, ReportGrid, cell_value, format_value
from .images import ImageFiles
from .rows import JobRows

ROWS = "rows"  # sub-folder of the files folder: one page per row
ERROR_CHARS = 240  # of an error message shown in its cell (the row's page has all of it)
TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def _templates() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "css"]),
                      undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["href"] = lambda path: quote(str(path), safe="/")
    return env


@dataclass(frozen=True)
class PageSettings:
    page_name: str  # the page's file name (detail pages link back to it)
    files_dir: str  # the files folder, relative to the page's folder ("report_files")
    columns: int  # X values per table before the grid wraps
    box: tuple[int, int]  # how large a thumbnail is shown (CSS pixels)
    sheets: dict[int, str] | None = None  # group index -> PNG sheet, relative to the page


def display_box(rows: list[dict], thumb_size: int) -> tuple[int, int]:
    """A cell's size: the largest image size among the ok rows, fit into thumb_size square."""
    sizes = [(r.get("width"), r.get("height")) for r in rows if r.get("status") == "ok"]
    sizes = [(w, h) for w, h in sizes if w and h]
    if not sizes:
        return thumb_size, thumb_size
    width, height = max(w for w, _ in sizes), max(h for _, h in sizes)
    scale = thumb_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def row_page_path(settings: PageSettings, row_index: int) -> str:
    return f"{settings.files_dir}/{ROWS}/{row_index}.html"


def detail_value(value) -> str:
    """A metadata value as the row's page shows it."""
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value):,} bytes>"
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return format_value(value)


def _short_label(grid: ReportGrid, group: Group) -> str:
    return " · ".join(format_value(v) for v in group.values)


def _axis_words(grid: ReportGrid, row: dict) -> str:
    """A row's place on the axes, e.g. 'seed 3, guidance_scale 7.5' (tooltips, alt text)."""
    words = [f"{c} {format_value(cell_value(row, c))}" for c in (grid.choice.x, grid.choice.y) if c]
    return ", ".join(words) or f"row {row['row_index']}"


def _cell(grid: ReportGrid, rows: list[dict], images: dict[int, ImageFiles], settings: PageSettings) -> dict:
    """What one grid cell shows (``kind``: empty, several, error, unreadable or ok)."""
    if not rows:
        return {"kind": "empty"}
    if len(rows) > 1:
        items = []
        for row in rows:
            files = images.get(row["row_index"])
            items.append({"link": row_page_path(settings, row["row_index"]), "words": _axis_words(grid, row),
                          "thumb": files.thumb if files else None, "status": row.get("status")})
        return {"kind": "several", "stack": items}
    row = rows[0]
    link = row_page_path(settings, row["row_index"])
    if row.get("status") != "ok":
        error = row.get("error") or "no error message"
        shown = error if len(error) <= ERROR_CHARS else error[:ERROR_CHARS] + "…"
        return {"kind": "error", "link": link, "error": error, "shown": shown}
    files = images.get(row["row_index"]) or ImageFiles(problem="no image was read")
    if files.problem:
        return {"kind": "unreadable", "link": link, "problem": files.problem}
    return {"kind": "ok", "link": link, "thumb": files.thumb, "words": _axis_words(grid, row)}


def _block(grid: ReportGrid, group: Group, columns: range, images, settings: PageSettings) -> dict:
    lines = [{"y_value": format_value(y_value),
              "cells": [_cell(grid, group.cells.get((xi, yi), []), images, settings) for xi in columns]}
             for yi, y_value in enumerate(group.y_values)]
    caption = None
    if len(columns) < len(group.x_values):
        caption = {"what": grid.choice.x or "images", "first": columns.start + 1, "last": columns.stop,
                   "of": len(group.x_values)}
    return {"caption": caption, "x_values": [format_value(group.x_values[i]) for i in columns], "lines": lines}


def _counts(rows: list[dict], images: dict[int, ImageFiles]) -> tuple[int, int, int]:
    ok = [r for r in rows if r.get("status") == "ok"]
    shown = sum(1 for r in ok if (images.get(r["row_index"]) or ImageFiles()).thumb)
    return shown, len(rows) - len(ok), len(ok) - shown


def _group_section(index: int, grid: ReportGrid, group: Group, images, settings: PageSettings) -> dict:
    rows = [r for cell in group.cells.values() for r in cell]
    shown, errors, unreadable = _counts(rows, images)
    empty = group.size - len(group.cells)
    facts = [f"{shown} image{'s' if shown != 1 else ''}"]
    facts += [f"{errors} error{'s' if errors != 1 else ''}"] if errors else []
    facts += [f"{unreadable} unreadable"] if unreadable else []
    facts += [f"{empty} empty cell{'s' if empty != 1 else ''}"] if empty else []
    step = settings.columns if grid.choice.x else len(group.x_values)
    blocks = [_block(grid, group, range(start, min(start + step, len(group.x_values))), images, settings)
              for start in range(0, len(group.x_values), step)]
    heading = [(col, format_value(val)) for col, val in zip(grid.choice.group, group.values)]
    return {"heading": heading, "facts": facts, "sheet": (settings.sheets or {}).get(index), "blocks": blocks}


def _summary(job: JobRows, grid: ReportGrid, images) -> str:
    shown, errors, unreadable = _counts(job.rows, images)
    parts = [f"{shown:,} image{'s' if shown != 1 else ''}", f"{errors:,} error row{'s' if errors != 1 else ''}"]
    if unreadable:
        parts.append(f"{unreadable:,} unreadable")
    shards = f"{job.committed_shards:,}" + (f" of {job.planned_shards:,}" if job.planned_shards else "")
    parts.append(f"{shards} shard{'s' if (job.planned_shards or job.committed_shards) != 1 else ''} committed")
    return ", ".join(parts)


def _axes(grid: ReportGrid) -> list[dict]:
    c = grid.choice
    parts = []
    if c.x:
        parts.append({"label": "X (across)", "name": c.x, "count": grid.value_count("x")})
    if c.y:
        parts.append({"label": "Y (down)", "name": c.y, "count": grid.value_count("y")})
    if c.group:
        parts.append({"label": "groups", "name": ", ".join(c.group), "count": len(grid.groups)})
    return parts


def render_page(job: JobRows, grid: ReportGrid, images: dict[int, ImageFiles], settings: PageSettings,
                notes: list[str]) -> str:
    """The report page: a summary, an index of the groups, and each group's grid."""
    return _templates().get_template("page.html").render(
        out=job.out, summary=_summary(job, grid, images), axes=_axes(grid), notes=notes, box=settings.box,
        x=grid.choice.x, y=grid.choice.y,
        index=[_short_label(grid, g) for g in grid.groups] if len(grid.groups) > 1 else [],
        sections=[_group_section(i, grid, g, images, settings) for i, g in enumerate(grid.groups)])


def render_row_page(row: dict, columns: list[str], files: ImageFiles | None, grid: ReportGrid,
                    group_index: int, settings: PageSettings) -> str:
    """One row: its full image (or its error) and every metadata column, axis columns marked."""
    up = "../../"  # from <files>/rows/ back to the page's folder
    axes = {c for c in (grid.choice.x, grid.choice.y, *grid.choice.group) if c}
    if SIZE in axes and SIZE not in columns:
        axes |= {"width", "height"}
    ok = row.get("status") == "ok"
    return _templates().get_template("row.html").render(
        row_index=row["row_index"], title=(row.get("prompt") or "")[:80], words=_axis_words(grid, row),
        back=f"{up}{quote(settings.page_name)}#g{group_index + 1}",
        full=up + files.full if ok and files and files.full else None, image=row.get("image"),
        error=None if ok else (row.get("error") or "no error message"),
        problem=(files and files.problem) or "image unreadable",
        axes=axes, params=[(name, detail_value(row.get(name))) for name in columns])
