"""``sdbatch report``: a static HTML page of a job's images in X/Y grids (and PNG sheets).

Imports no torch or diffusers (directly or through other modules): the report starts in well under
a second. The work is ``sdbatch.jobs.report.build``'s; this module is the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import exit_codes
from .options import s3_from, s3_options

AXES_HELP = """
Without --x/--y/--group, the axes are chosen among the columns whose values differ between the
ok rows, taken in this order: prompt, negative_prompt, seed, guidance_scale, steps, scheduler,
size (WIDTHxHEIGHT), strength, model, mode, then your own label columns (a column that only
renames another, such as a label per prompt, is skipped, and so is a label with a
different value in every row). When more of them differ than there
are free axes, prompts (then negative prompts) become the groups: long text reads best as a
heading. Of the rest, the two with the most values become the axes: X (across) the one with
fewer values, Y (down) the one with more. Any column left over joins the groups.

\b
Example: a sweep of 3 prompts x 100 seeds x 4 guidance scales gives 3 groups
(one per prompt), each a grid of 4 guidance scales across and 100 seeds down;
--x seed --y guidance_scale puts the seeds across, 8 a line (--columns).
"""


class ReportUsageError(click.ClickException):
    """A bad option, said in one line (exit 2), as every refusal of this command is."""

    exit_code = exit_codes.REFUSED

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class OneLineErrors(click.Command):
    """Click's usage errors (bad values, unknown options) in one ``error:`` line instead of three."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise ReportUsageError(exc.format_message()) from None


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _group_columns(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ReportUsageError("--group: give one or more column names, comma separated")
    return names


@click.command("report", cls=OneLineErrors, epilog=AXES_HELP)
@click.argument("out")
@click.option("-o", "--output", "page", default="report.html", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The HTML page to write. Thumbnails, full-image copies (S3, webdataset), one page per "
                   "row and the sheets go into a folder beside it named after it (report_files/).")
@click.option("--x", "x", metavar="COLUMN", default=None,
              help="Metadata column across the grid (any column, 'size' for WIDTHxHEIGHT, or a label "
                   "column). Default: chosen, see below.")
@click.option("--y", "y", metavar="COLUMN", default=None, help="Metadata column down the grid. Default: chosen.")
@click.option("--group", metavar="COLUMN[,COLUMN...]", default=None,
              help="Columns that split the rows into separate grids, one per combination of values. "
                   "Default: chosen.")
@click.option("--columns", type=click.IntRange(min=1), default=8, show_default=True,
              help="X values per line: a longer X axis wraps onto further lines of the same grid.")
@click.option("--thumb-size", type=click.IntRange(16, 2048), default=192, show_default=True,
              help="Thumbnail size in pixels (longer side), on the page and in the sheets.")
@click.option("--sheets", is_flag=True,
              help="Also write one PNG grid per group, axis labels drawn, into report_files/sheets/.")
@s3_options
def report(out, page, x, y, group, columns, thumb_size, sheets, s3_endpoint_url, s3_path_style, s3_retries) -> None:
    """Write a static HTML page (no server: open it from disk) showing the images of the job in OUT
    (a folder or s3://bucket/prefix) as X/Y grids, one per group, like AUTOMATIC1111's X/Y/Z plot.

    Axis labels come from the metadata. Each image links to a page with the full image and every
    metadata column of its row (your label columns included); error rows and combinations
    without a row are shown as such. Only committed shards are read, so it works while a job runs.
    Exit 0 when written, 2 when refused (bad option, OUT unreadable or not a job).
    """
    from sdbatch.jobs.report.build import ReportRequest, build_report
    from sdbatch.jobs.report.rows import ReportError
    from sdbatch.jobs.store.storage import StorageError

    request = ReportRequest(out=out, page=page, x=x, y=y, group=_group_columns(group), columns=columns,
                            thumb_size=thumb_size, sheets=sheets,
                            storage=s3_from(s3_endpoint_url, s3_path_style, s3_retries))
    try:
        if sys.stderr.isatty():
            with click.progressbar(length=1, label="images", file=sys.stderr) as bar:
                def progress(done: int, total: int) -> None:
                    bar.length = max(total, 1)
                    bar.update(done - bar.pos)

                result = build_report(request, progress)
        else:
            result = build_report(request)
    except (ReportError, StorageError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    grid, choice = result.grid, result.grid.choice
    shape = " x ".join(f"{grid.value_count(a)} {c}" for a, c in (("x", choice.x), ("y", choice.y)) if c)
    groups = f"{len(grid.groups)} group{'s' if len(grid.groups) != 1 else ''}"
    if choice.group:
        groups += f" by {', '.join(choice.group)}"
    counts = [_count(result.images, "image"), _count(result.errors, "error row")]
    counts += [f"{result.unreadable:,} unreadable"] if result.unreadable else []
    counts += [_count(result.empty_cells, "empty cell")] if result.empty_cells else []
    for note in result.notes:
        click.echo(f"note: {note}")
    click.echo(f"{groups} of {shape or '1 cell'}: {', '.join(counts)}")
    if result.sheets:
        click.echo(f"sheets: {len(result.sheets)} PNG in {result.sheets[0].parent}")
    click.echo(f"wrote {result.page}")
    sys.exit(exit_codes.OK)
