"""The report's HTML: one static page of grids (no script, no server; opens from disk) and one small
page per row with its full image and every metadata column.

Everything that comes from the metadata (prompts are user text, labels, errors, ids, paths) goes
through ``_text``/``_attr``/``_href``: escaped for HTML, and percent-encoded where it is a link.
"""

from __future__ import annotations

import datetime as dt
import html
from dataclasses import dataclass
from urllib.parse import quote

from .grid import SIZE, Group, ReportGrid, cell_value, format_value
from .images import ImageFiles
from .rows import JobRows

ROWS = "rows"  # sub-folder of the files folder: one page per row
ERROR_CHARS = 240  # of an error message shown in its cell (the row's page has all of it)


def _text(value) -> str:
    return html.escape(str(value), quote=False)


def _attr(value) -> str:
    return html.escape(str(value), quote=True)


def _href(path: str) -> str:
    return _attr(quote(path, safe="/"))


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


STYLE = """
:root { --cell-w: %(w)dpx; --cell-h: %(h)dpx; --bg: #f7f7f8; --line: #d9d9de; --muted: #6b6b76; }
* { box-sizing: border-box; }
body { margin: 0 24px 64px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: #1d1d22; background: var(--bg); }
header { padding: 16px 0 8px; border-bottom: 1px solid var(--line); }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 0; font-weight: 600; overflow-wrap: anywhere; }
.muted, .gcol, .count { color: var(--muted); font-weight: normal; }
.note { color: #8a5300; }
nav.index ol { columns: 18em; margin: 4px 0; padding-left: 2.5em; }
nav.index li { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
section.group { margin-top: 28px; }
section.group > .meta { margin: 2px 0 8px; }
.block { margin: 8px 0 16px; overflow-x: auto; }
.block-caption { color: var(--muted); font-size: 12px; margin: 0 0 2px; }
table.grid { border-collapse: separate; border-spacing: 4px; }
table.grid th { font-size: 13px; font-weight: 600; overflow-wrap: anywhere; }
th.x { width: var(--cell-w); max-width: var(--cell-w); vertical-align: bottom; text-align: center; }
th.y { max-width: 16em; min-width: 4em; text-align: right; vertical-align: middle; padding-right: 6px;
       position: sticky; left: 0; background: var(--bg); z-index: 1; }
thead th { position: sticky; top: 0; background: var(--bg); z-index: 2; }
th.corner { text-align: right; vertical-align: bottom; color: var(--muted); font-weight: normal; }
th.corner span { display: block; }
td.cell { width: var(--cell-w); height: var(--cell-h); min-width: var(--cell-w); padding: 0;
          background: #fff; outline: 1px solid var(--line); text-align: center; vertical-align: middle; }
td.cell img { display: block; width: var(--cell-w); height: var(--cell-h); object-fit: contain; }
td.cell a.thumb:hover img, td.cell a.thumb:focus img { outline: 3px solid #2f6fde; }
td.error, td.unreadable { background: #fdeceb; color: #8a1c13; font-size: 12px; }
td.error a, td.unreadable a { color: inherit; text-decoration: none; }
.cellbox { display: block; max-width: var(--cell-w); max-height: var(--cell-h); overflow: auto;
           padding: 6px; overflow-wrap: anywhere; text-align: left; }
td.empty { color: var(--muted); font-size: 12px;
           background: repeating-linear-gradient(45deg, #f0f0f2 0 6px, #e7e7ea 6px 12px); }
td.empty .cellbox { text-align: center; }
td.several .stack { display: flex; flex-wrap: wrap; gap: 2px; max-width: var(--cell-w); }
td.several .stack img { width: calc(var(--cell-w) / 2 - 1px); height: auto; }
.top { font-size: 12px; }
"""

DETAIL_STYLE = """
body { margin: 16px 24px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
       color: #1d1d22; background: #f7f7f8; }
img.full { max-width: 100%; height: auto; background: #fff; outline: 1px solid #d9d9de; }
.error { background: #fdeceb; color: #8a1c13; padding: 8px 12px; white-space: pre-wrap; }
table.params { border-collapse: collapse; margin-top: 12px; }
table.params th { text-align: left; padding: 3px 12px 3px 0; vertical-align: top; font-weight: 600; }
table.params td { padding: 3px 0; white-space: pre-wrap; overflow-wrap: anywhere; }
tr.axis th, tr.axis td { background: #eef3fd; }
.muted { color: #6b6b76; }
"""


def _group_heading(grid: ReportGrid, group: Group) -> str:
    parts = [f'<span class="gcol">{_text(col)}</span> {_text(format_value(val))}'
             for col, val in zip(grid.choice.group, group.values)]
    return " &middot; ".join(parts)


def _short_label(grid: ReportGrid, group: Group) -> str:
    return " · ".join(format_value(v) for v in group.values)


def _axis_words(grid: ReportGrid, row: dict) -> str:
    """A row's place on the axes, e.g. 'seed 3, guidance_scale 7.5' (tooltips, alt text)."""
    words = [f"{c} {format_value(cell_value(row, c))}" for c in (grid.choice.x, grid.choice.y) if c]
    return ", ".join(words) or f"row {row['row_index']}"


def _cell(grid: ReportGrid, rows: list[dict], images: dict[int, ImageFiles], settings: PageSettings) -> str:
    if not rows:
        return ('<td class="cell empty" title="no committed row has these values">'
                '<span class="cellbox">no image</span></td>')
    if len(rows) > 1:
        items = []
        for row in rows:
            files = images.get(row["row_index"])
            link = _href(row_page_path(settings, row["row_index"]))
            if files and files.thumb:
                items.append(f'<a class="thumb" href="{link}" title="{_attr(_axis_words(grid, row))}">'
                             f'<img src="{_href(files.thumb)}" alt="{_attr(_axis_words(grid, row))}" '
                             f'loading="lazy" decoding="async"></a>')
            else:
                items.append(f'<a class="bad" href="{link}">{_text(row.get("status"))}</a>')
        return (f'<td class="cell several" title="{len(rows)} rows share these values">'
                f'<div class="stack">{"".join(items)}</div></td>')
    row = rows[0]
    link = _href(row_page_path(settings, row["row_index"]))
    words = _axis_words(grid, row)
    if row.get("status") != "ok":
        error = row.get("error") or "no error message"
        shown = error if len(error) <= ERROR_CHARS else error[:ERROR_CHARS] + "…"
        return (f'<td class="cell error"><a class="cellbox" href="{link}" title="{_attr(error)}">'
                f'<strong>error</strong><br>{_text(shown)}</a></td>')
    files = images.get(row["row_index"]) or ImageFiles(problem="no image was read")
    if files.problem:
        return (f'<td class="cell unreadable"><a class="cellbox" href="{link}" title="{_attr(files.problem)}">'
                f'<strong>image unreadable</strong><br>{_text(files.problem)}</a></td>')
    return (f'<td class="cell ok"><a class="thumb" href="{link}" title="{_attr(words)}: full image and parameters">'
            f'<img src="{_href(files.thumb)}" width="{settings.box[0]}" height="{settings.box[1]}" '
            f'alt="{_attr(words)}" loading="lazy" decoding="async"></a></td>')


def _block(grid: ReportGrid, group: Group, columns: range, images, settings: PageSettings) -> str:
    x, y = grid.choice.x, grid.choice.y
    corner = ((f'<span class="xname">{_text(x)} &rarr;</span>' if x else "")
              + (f'<span class="yname">{_text(y)} &darr;</span>' if y else ""))
    head = "".join(f'<th class="x" scope="col" title="{_attr(x)} = {_attr(format_value(group.x_values[i]))}">'
                   f"{_text(format_value(group.x_values[i]))}</th>" for i in columns) if x else ""
    lines = []
    for yi, y_value in enumerate(group.y_values):
        label = (f'<th class="y" scope="row" title="{_attr(y)} = {_attr(format_value(y_value))}">'
                 f"{_text(format_value(y_value))}</th>") if y else '<th class="y"></th>'
        cells = "".join(_cell(grid, group.cells.get((xi, yi), []), images, settings) for xi in columns)
        lines.append(f"<tr>{label}{cells}</tr>")
    caption = ""
    if len(columns) < len(group.x_values):
        caption = (f'<p class="block-caption">{_text(x or "images")}: columns {columns.start + 1}&ndash;{columns.stop} '
                   f"of {len(group.x_values)}</p>")
    thead = f'<thead><tr><th class="corner">{corner}</th>{head}</tr></thead>' if (x or y) else ""
    return (f'<div class="block">{caption}<table class="grid">{thead}'
            f"<tbody>{''.join(lines)}</tbody></table></div>")


def _counts(rows: list[dict], images: dict[int, ImageFiles]) -> tuple[int, int, int]:
    ok = [r for r in rows if r.get("status") == "ok"]
    shown = sum(1 for r in ok if (images.get(r["row_index"]) or ImageFiles()).thumb)
    return shown, len(rows) - len(ok), len(ok) - shown


def _group_section(index: int, grid: ReportGrid, group: Group, images, settings: PageSettings) -> str:
    rows = [r for cell in group.cells.values() for r in cell]
    shown, errors, unreadable = _counts(rows, images)
    empty = group.size - len(group.cells)
    facts = [f"{shown} image{'s' if shown != 1 else ''}"]
    facts += [f"{errors} error{'s' if errors != 1 else ''}"] if errors else []
    facts += [f"{unreadable} unreadable"] if unreadable else []
    facts += [f"{empty} empty cell{'s' if empty != 1 else ''}"] if empty else []
    sheet = (settings.sheets or {}).get(index)
    links = f' &middot; <a href="{_href(sheet)}">grid sheet (PNG)</a>' if sheet else ""
    heading = f"<h2>{_group_heading(grid, group)}</h2>" if grid.choice.group else ""
    step = settings.columns if grid.choice.x else len(group.x_values)
    blocks = "".join(_block(grid, group, range(start, min(start + step, len(group.x_values))), images, settings)
                     for start in range(0, len(group.x_values), step))
    top = ' &middot; <a class="top" href="#top">top</a>' if len(grid.groups) > 1 else ""
    return (f'<section class="group" id="g{index + 1}">{heading}'
            f'<p class="meta muted">{", ".join(facts)}{links}{top}</p>{blocks}</section>')


def _summary(job: JobRows, grid: ReportGrid, images) -> str:
    shown, errors, unreadable = _counts(job.rows, images)
    parts = [f"{shown:,} image{'s' if shown != 1 else ''}", f"{errors:,} error row{'s' if errors != 1 else ''}"]
    if unreadable:
        parts.append(f"{unreadable:,} unreadable")
    shards = f"{job.committed_shards:,}" + (f" of {job.planned_shards:,}" if job.planned_shards else "")
    parts.append(f"{shards} shard{'s' if (job.planned_shards or job.committed_shards) != 1 else ''} committed")
    return ", ".join(parts)


def _axes_line(grid: ReportGrid) -> str:
    c = grid.choice
    parts = []
    if c.x:
        parts.append(f"X (across): <b>{_text(c.x)}</b> ({grid.value_count('x')})")
    if c.y:
        parts.append(f"Y (down): <b>{_text(c.y)}</b> ({grid.value_count('y')})")
    if c.group:
        parts.append(f"groups: <b>{_text(', '.join(c.group))}</b> ({len(grid.groups)})")
    return " &middot; ".join(parts) or "nothing differs between the rows"


def render_page(job: JobRows, grid: ReportGrid, images: dict[int, ImageFiles], settings: PageSettings,
                notes: list[str]) -> str:
    """The report page: a summary, an index of the groups, and each group's grid."""
    note_html = "".join(f'<p class="note">{_text(n)}</p>' for n in notes)
    index = ""
    if len(grid.groups) > 1:
        items = "".join(f'<li><a href="#g{i + 1}" title="{_attr(_short_label(grid, g))}">'
                        f"{_text(_short_label(grid, g))}</a></li>" for i, g in enumerate(grid.groups))
        state = " open" if len(grid.groups) <= 40 else ""
        index = (f'<nav class="index"><details{state}><summary>{len(grid.groups)} groups</summary>'
                 f"<ol>{items}</ol></details></nav>")
    sections = "".join(_group_section(i, grid, g, images, settings) for i, g in enumerate(grid.groups))
    style = STYLE % {"w": settings.box[0], "h": settings.box[1]}
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>sdbatch report: {_text(job.out)}</title><style>{style}</style></head>"
        f'<body><header id="top"><h1>sdbatch report</h1>'
        f'<p class="muted"><span class="out">{_text(job.out)}</span> &middot; {_summary(job, grid, images)}</p>'
        f'<p class="axes">{_axes_line(grid)}. Click an image for the full image and all its parameters.</p>'
        f"{note_html}{index}</header><main>{sections}</main></body></html>\n"
    )


def render_row_page(row: dict, columns: list[str], files: ImageFiles | None, grid: ReportGrid,
                    group_index: int, settings: PageSettings) -> str:
    """One row: its full image (or its error) and every metadata column, axis columns marked."""
    up = "../../"  # from <files>/rows/ back to the page's folder
    axes = {c for c in (grid.choice.x, grid.choice.y, *grid.choice.group) if c}
    if SIZE in axes and SIZE not in columns:
        axes |= {"width", "height"}
    if row.get("status") == "ok" and files and files.full:
        full = _href(up + files.full)
        body = (f'<p><a href="{full}"><img class="full" src="{full}" alt="{_attr(_axis_words(grid, row))}"></a></p>'
                f'<p><a href="{full}">open the full image</a> '
                f'<span class="muted">({_text(row.get("image"))})</span></p>')
    elif row.get("status") == "ok":
        body = f'<p class="error">{_text((files and files.problem) or "image unreadable")}</p>'
    else:
        body = f'<p class="error"><strong>error</strong>\n{_text(row.get("error") or "no error message")}</p>'
    lines = "".join(
        f'<tr{" class=axis" if name in axes else ""}><th>{_text(name)}</th>'
        f"<td>{_text(detail_value(row.get(name)))}</td></tr>"
        for name in columns)
    back = f"{up}{quote(settings.page_name)}#g{group_index + 1}"
    title = (row.get("prompt") or "")[:80]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>row {row['row_index']}: {_text(title)}</title><style>{DETAIL_STYLE}</style></head><body>"
        f'<p><a href="{_attr(back)}">&larr; back to the grid</a></p>'
        f"<h1>row {row['row_index']} <span class=\"muted\">{_text(_axis_words(grid, row))}</span></h1>"
        f'{body}<table class="params">{lines}</table></body></html>\n'
    )
