"""``sdbatch report``'s steps in order: read the committed rows, choose the axes, lay out the grids,
make the local image files, write the pages (and the PNG sheets)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sdbatch.jobs.store.backends import open_storage
from sdbatch.manifests.remote import S3Options

from .contact_sheets import SHEETS, write_sheets
from .grid import ReportGrid, build_grid, choose_axes
from .images import FULL, THUMBS, ImageFiles, ReportImages
from .page import ROWS, PageSettings, display_box, render_page, render_row_page, row_page_path
from .rows import JobRows, ReportError, read_job_rows


@dataclass(frozen=True)
class ReportRequest:
    out: str
    page: Path = Path("report.html")
    x: str | None = None
    y: str | None = None
    group: tuple[str, ...] | None = None  # None: chosen; () would mean "no groups"
    columns: int = 8  # X values per table row before the grid wraps
    thumb_size: int = 192
    sheets: bool = False
    storage: S3Options = field(default_factory=S3Options)


@dataclass
class ReportResult:
    page: Path
    files_dir: Path
    grid: ReportGrid
    images: int
    errors: int
    unreadable: int
    empty_cells: int
    sheets: list[Path]
    notes: list[str]


def files_dir_of(page: Path) -> Path:
    """Where the page's thumbnails, copies, row pages and sheets go: ``report.html`` -> ``report_files/``."""
    return page.parent / f"{page.stem}_files"


def _notes(job: JobRows, grid: ReportGrid) -> list[str]:
    notes = list(job.problems)
    if job.planned_shards and job.committed_shards < job.planned_shards:
        notes.append(f"the job is incomplete: {job.committed_shards} of {job.planned_shards} shards are committed; "
                     "rows of the others are not shown yet")
    crowded = grid.crowded_cells()
    if crowded:
        also = ", ".join(grid.choice.also_varying)
        hint = f" ({also} also differ{'s' if len(grid.choice.also_varying) == 1 else ''}; add "\
               f"{'it' if len(grid.choice.also_varying) == 1 else 'them'} to --group to separate them)" if also else ""
        notes.append(f"{crowded} cell{'s hold' if crowded != 1 else ' holds'} more than one image{hint}")
    return notes


def _page_target(page: Path) -> Path:
    page = page.absolute()
    if page.is_dir():
        raise ReportError(f"-o {page}: is a folder; give the HTML file to write")
    page.parent.mkdir(parents=True, exist_ok=True)
    return page


def build_report(request: ReportRequest, progress: Callable[[int, int], None] | None = None) -> ReportResult:
    """Write the report; ReportError (or StorageError) when OUT cannot be read or an option is wrong.
    ``progress(done, total)`` hears about images as they are made."""
    storage = open_storage(request.out, request.storage)
    storage.check()
    job = read_job_rows(storage)
    choice = choose_axes(job.rows, job.columns, job.label_columns, request.x, request.y, request.group)
    grid = build_grid(job.rows, choice)
    page = _page_target(request.page)
    files_dir = files_dir_of(page)
    for sub in (THUMBS, FULL, ROWS, SHEETS):  # an earlier report's files: only the folders we write
        shutil.rmtree(files_dir / sub, ignore_errors=True)
    total = sum(r.get("status") == "ok" for r in job.rows)
    counter = [0]

    def done(n: int) -> None:
        counter[0] += n
        if progress:
            progress(counter[0], total)

    images: dict[int, ImageFiles] = ReportImages(storage, job.layout, files_dir, page.parent,
                                                 request.thumb_size).make(job.rows, done)
    box = display_box(job.rows, request.thumb_size)
    sheets = write_sheets(grid, images, page.parent, files_dir, box) if request.sheets else {}
    settings = PageSettings(page_name=page.name, files_dir=files_dir.name, columns=request.columns, box=box,
                            sheets={i: p.relative_to(page.parent).as_posix() for i, p in sheets.items()})
    (files_dir / ROWS).mkdir(parents=True, exist_ok=True)
    for group_index, group in enumerate(grid.groups):
        for rows in group.cells.values():
            for row in rows:
                path = page.parent / row_page_path(settings, row["row_index"])
                path.write_text(render_row_page(row, job.columns, images.get(row["row_index"]), grid,
                                                group_index, settings), encoding="utf-8")
    notes = _notes(job, grid)
    page.write_text(render_page(job, grid, images, settings, notes), encoding="utf-8")
    ok = [r for r in job.rows if r.get("status") == "ok"]
    shown = sum(1 for r in ok if images.get(r["row_index"]) and images[r["row_index"]].thumb)
    return ReportResult(
        page=page, files_dir=files_dir, grid=grid, images=shown, errors=len(job.rows) - len(ok),
        unreadable=len(ok) - shown, empty_cells=sum(g.size - len(g.cells) for g in grid.groups),
        sheets=list(sheets.values()), notes=notes,
    )
