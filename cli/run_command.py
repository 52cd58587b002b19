"""``sdbatch run``: the options, the executor chosen (the composition of jobs with cluster), and the
exit code."""

from __future__ import annotations

import signal
import sys

import click

from . import exit_codes
from .options import prompt_options, s3_from, s3_options


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _executor_factory(kind: str, worker, ray_config):
    """(output folder, models) -> executor: the local one, or sdbatch.cluster's Ray executor."""
    if kind == "local":
        from sdbatch.jobs.local import LocalExecutor

        return lambda folder, models: LocalExecutor(folder, worker, models, ray_config.verbose)
    from sdbatch.cluster.ray_executor import RayExecutor

    return lambda folder, models: RayExecutor(folder, worker, ray_config, models)


@click.command()
@click.argument("manifest")
@click.option("--model", default="tiny", show_default=True,
              help="Hub id or local diffusers folder for rows with no model of their own. 'tiny' is the "
                   "built-in random-weight model (noise images, for trying the tool offline).")
@click.option("--out", required=True, help="Output folder, or s3://bucket/prefix.")
@click.option("--executor", type=click.Choice(["ray", "local"]), default="ray", show_default=True,
              help="ray: fan shards out to Ray actors; local: everything in this process, on one device.")
@click.option("--address", default=None, help="Ray cluster to join ('auto' or host:port). Default: "
              "RAY_ADDRESS, else a local Ray instance started for this job.")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Number of Ray actors. Default: one per GPU, or 1 on a machine without GPUs.")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="GPUs per Ray actor (fractions share a GPU).")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N, or auto (CUDA when available).")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True,
              help="Weights' and activations' precision; auto: fp32 on CPU, fp16 on CUDA.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Rows per UNet batch (a guided row is two UNet samples). Does not change any image.")
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Rows per shard: the unit of scheduling, commit and resume.")
@click.option("--shard-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Times Ray runs a shard again after its actor died, before its rows are committed as errors.")
@click.option("--actor-restarts", type=click.IntRange(min=0), default=8, show_default=True,
              help="Times Ray restarts a dead actor (reloading its models) before giving it up.")
@click.option("--shared-fs", is_flag=True, help="The local --out path is on a filesystem every Ray node mounts.")
@click.option("--overwrite", is_flag=True, help="Replace a different earlier job in --out (its outputs are removed).")
@click.option("--format", "image_format", type=click.Choice(["png", "jpeg", "webp"]), default="png",
              show_default=True, help="Image format; every image carries its generation parameters.")
@click.option("--quality", type=click.IntRange(1, 100), default=None,
              help="jpeg / webp quality (default 95); png is lossless.")
@click.option("--layout", type=click.Choice(["files", "webdataset"]), default="files", show_default=True,
              help="files: OUT/images/<shard>/<id>.<ext>; webdataset: OUT/shards/<shard>.tar.")
@click.option("--refiner", default=None, metavar="MODEL",
              help="SDXL refiner (hub id or folder) that takes over rows with a refiner_start, as diffusers' "
                   "denoising_end / denoising_start pair. Loaded by every worker.")
@click.option("--label", "labels", multiple=True, metavar="COLUMN",
              help="Carry COLUMN through as a label even though its name looks like a misspelt manifest "
                   "column (repeatable). Columns named label_* or a 'labels' column are labels anyway.")
@prompt_options
@s3_options
@click.pass_context
def run(ctx, manifest, model, out, executor, address, actors, gpus_per_actor, device, dtype, batch_size,
        shard_size, shard_retries, actor_restarts, shared_fs, overwrite, image_format, quality, layout, refiner, labels,
        prompt_syntax, embeddings, lora_dir, s3_endpoint_url, s3_path_style, s3_retries) -> None:
    """Generate one image (or one error row) for every row of MANIFEST.

    Running the same command again resumes: committed shards are skipped.
    """
    from sdbatch.cluster.ray_executor import RayConfig
    from sdbatch.jobs.driver import JobRefused, ManifestError, RunRequest, run_job
    from sdbatch.jobs.image_encoding import ImageFormat
    from sdbatch.jobs.layouts import OutputSpec
    from sdbatch.jobs.storage import StorageError
    from sdbatch.jobs.worker_config import WorkerConfig
    from sdbatch.pipeline.model_files import ModelLoadError

    verbose = (ctx.find_root().obj or {}).get("verbose", 0)
    try:
        output = OutputSpec(layout=layout, image=ImageFormat(image_format, quality))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    worker = WorkerConfig(device=device, dtype=None if dtype == "auto" else dtype, batch_size=batch_size,
                          output=output, s3=s3_from(s3_endpoint_url, s3_path_style, s3_retries), refiner=refiner,
                          embeddings=tuple(embeddings), lora_dir=lora_dir)
    ray_config = RayConfig(address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                           shard_retries=shard_retries, actor_restarts=actor_restarts, shared_fs=shared_fs,
                           verbose=verbose > 0)
    request = RunRequest(manifest=manifest, out=out, model=model, worker=worker, shard_size=shard_size,
                         overwrite=overwrite, labels=labels, prompt_syntax=prompt_syntax)
    signal.signal(signal.SIGTERM, _interrupt)  # a preempted pod stops as cleanly as Ctrl-C
    try:
        summary = run_job(request, _executor_factory(executor, worker, ray_config), executor)
    except ManifestError as exc:
        click.echo(f"error: manifest refused: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    except (JobRefused, ModelLoadError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    except StorageError as exc:
        click.echo(f"error: {exc}\ncommitted shards are kept; run the same command again to resume", err=True)
        sys.exit(exit_codes.INCOMPLETE)
    if summary.duplicate_rows:
        click.echo(f"exact duplicate rows: {summary.duplicate_rows:,} (each distinct row generated once)")
    click.echo(f"{summary.line()} -> {out}")
    if summary.interrupted:
        click.echo("interrupted: committed shards are kept; run the same command again to resume", err=True)
        sys.exit(exit_codes.INTERRUPTED)
    if summary.incomplete:
        causes = [f["cause"] for f in summary.failed_shards] + ([summary.stopped] if summary.stopped else [])
        why = f" ({causes[0]})" if causes else ""
        click.echo(f"incomplete: {summary.incomplete:,} rows not done{why}; run the same command again to resume",
                   err=True)
        sys.exit(exit_codes.INCOMPLETE)
    sys.exit(exit_codes.ROWS_FAILED if summary.failed else exit_codes.OK)
