"""The ``sdbatch`` command line."""

from __future__ import annotations

import json
import logging
import sys
import time

import click

from .manifest_commands import sweep, validate

EXIT_OK, EXIT_ROWS_FAILED, EXIT_REFUSED = 0, 1, 2


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """sdbatch: generate Stable Diffusion images in bulk from Parquet manifests."""
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_libraries(verbose)


main.add_command(validate)
main.add_command(sweep)


def _quiet_libraries(verbose: int) -> None:
    """diffusers and transformers print progress bars and advice per model load; a batch tool's
    output is its own progress and summary, so theirs show only with -vv."""
    if verbose >= 2:
        return
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()


@main.command("tiny-model")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--variant", type=click.Choice(["base", "inpaint", "depth"]), default="base", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same weights.")
def tiny_model(folder: str, variant: str, seed: int) -> None:
    """Write a tiny random-weight SD pipeline folder (for tests and offline trials)."""
    from sdbatch.pipeline.tiny import write_tiny_model

    write_tiny_model(folder, variant, seed)
    click.echo(f"wrote tiny {variant} model to {folder}")


@main.command()
@click.argument("manifest")
@click.option("--model", default="tiny", show_default=True,
              help="Hub id or local diffusers folder; rows may override it. 'tiny' is the built-in "
                   "random-weight model (noise images, for trying the tool offline).")
@click.option("--out", required=True, help="Output folder.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True)
def run(manifest, model, out, device, dtype, batch_size, shard_size) -> None:
    """Generate one image (or one error row) for every row of MANIFEST."""
    from sdbatch.manifests.reader import ManifestError, load_manifest
    from sdbatch.pipeline.tiny import resolve_builtin_model

    from .job import PLAN_PATH, SUMMARY_PATH, JobOptions, committed_shards, make_plan
    from .local import run_local
    from .storage import open_storage
    from .worker import WorkerConfig

    started = time.perf_counter()
    model = resolve_builtin_model(model)
    try:
        loaded = load_manifest(manifest, default_model=model)
    except ManifestError as exc:
        click.echo(f"error: manifest refused: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    rows = loaded.rows
    if loaded.report.duplicate_rows:
        click.echo(f"exact duplicate rows: {loaded.report.duplicate_rows:,} (each distinct row generated once)")
    storage = open_storage(out)
    plan = make_plan(rows, JobOptions(manifest=manifest, model=model, shard_size=shard_size))
    storage.write_bytes(PLAN_PATH, plan.to_json().encode())
    done = committed_shards(storage)
    pending = [s.name for s in plan.shards if s.name not in done]
    config = WorkerConfig(device=device, dtype=None if dtype == "auto" else dtype, batch_size=batch_size)
    stats = run_local(plan, rows, pending, storage, config)
    all_stats = {**done, **{s.shard: s for s in stats}}
    ok = sum(s.ok for s in all_stats.values())
    failed = sum(s.failed for s in all_stats.values())
    wall = time.perf_counter() - started
    summary = dict(rows=plan.rows, ok=ok, failed=failed, wall_seconds=round(wall, 3))
    storage.write_bytes(SUMMARY_PATH, json.dumps(summary, indent=1).encode())
    click.echo(f"{ok} ok, {failed} failed of {plan.rows} rows in {wall:.1f}s -> {out}")
    sys.exit(EXIT_ROWS_FAILED if failed else EXIT_OK)
