"""``sdbatch status`` and ``sdbatch verify``: reading a job's OUT back (no torch: they answer fast)."""

from __future__ import annotations

import sys

import click

from . import exit_codes
from .options import s3_from, s3_options

SHOWN_PROBLEMS = 50


def _folder(out: str, s3):
    """OUT opened and checked; an unreadable OUT or a damaged plan is one line, exit 2."""
    from sdbatch.jobs.store.outdir import OutputFolder
    from sdbatch.jobs.store.backends import open_storage
    from sdbatch.jobs.store.storage import StorageError

    try:
        storage = open_storage(out, s3)
        storage.check()
    except StorageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    return OutputFolder(storage)


def _reading(read):
    from sdbatch.jobs.store.outdir import DamagedOutput
    from sdbatch.jobs.store.storage import StorageError

    try:
        return read()
    except (StorageError, DamagedOutput) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)


@click.command()
@click.argument("out")
@s3_options
def status(out: str, s3_endpoint_url, s3_path_style, s3_retries) -> None:
    """Show done / total for the job in OUT (while it runs, or after it stopped).

    Exits 0 when every planned shard is committed, 3 when some are not (running, or stopped: the
    same run command resumes) or rows failed for a storage reason (it retries them), 2 when OUT
    holds no sdbatch job or cannot be read.
    """
    from sdbatch.jobs.store.outdir import job_status

    folder = _folder(out, s3_from(s3_endpoint_url, s3_path_style, s3_retries))
    report = _reading(lambda: job_status(folder))
    click.echo(report.text())
    if not report.found:
        sys.exit(exit_codes.REFUSED)
    sys.exit(exit_codes.OK if report.complete else exit_codes.INCOMPLETE)


@click.command()
@click.argument("out")
@s3_options
def verify(out: str, s3_endpoint_url, s3_path_style, s3_retries) -> None:
    """Check OUT: one metadata row per planned row, every ok image decodes, no stray or partial files.

    Exits 0 when every check holds, 1 when problems are found (listed, with how to fix them), 3 when
    the job is incomplete but sound (the same run command resumes it, and retries rows that failed
    for a storage reason), 2 when OUT cannot be read.
    """
    from sdbatch.jobs.store.outdir import verify as verify_folder
    from sdbatch.jobs.store.paths import PLAN

    folder = _folder(out, s3_from(s3_endpoint_url, s3_path_style, s3_retries))
    if _reading(folder.read_plan) is None:
        click.echo(f"error: {folder.root}: no sdbatch job here (no {PLAN})", err=True)
        sys.exit(exit_codes.REFUSED)
    verdict = _reading(lambda: verify_folder(folder))
    for problem in verdict.problems[:SHOWN_PROBLEMS]:
        click.echo(f"problem: {problem}")
    if len(verdict.problems) > SHOWN_PROBLEMS:
        click.echo(f"... and {len(verdict.problems) - SHOWN_PROBLEMS} more")
    if verdict.problems:
        click.echo(f"verify: {len(verdict.problems)} problem(s)")
        if verdict.damaged:
            shown = ", ".join(verdict.damaged[:5]) + (", ..." if len(verdict.damaged) > 5 else "")
            click.echo(f"to fix: run the same run command again with --repair: it redoes the damaged shard(s) "
                       f"({shown})")
        sys.exit(exit_codes.ROWS_FAILED)
    if verdict.uncommitted:
        click.echo(f"verify: incomplete: {verdict.planned - len(verdict.uncommitted):,} of {verdict.planned:,} "
                   "shards committed, and they are sound; run the same command again to resume")
        sys.exit(exit_codes.INCOMPLETE)
    if verdict.retry_rows:
        click.echo(f"verify: incomplete: {verdict.retry_rows:,} rows failed for a storage reason (their error rows "
                   "say why), the rest is sound; run the same command again to retry them")
        sys.exit(exit_codes.INCOMPLETE)
    click.echo("verify: ok")
    sys.exit(exit_codes.OK)
