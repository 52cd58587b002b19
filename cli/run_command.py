"""``sdbatch run``: the options, the executor chosen (the composition of jobs with cluster), and the
exit code. Every way a run can end is one line on the terminal and an exit code: an unexpected
exception too (exit 1), its traceback written to ``OUT/_job/logs/`` (or a temporary file when OUT
cannot take it) and named in that line."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
import traceback

import click

from sdbatch.jobs import defaults
from sdbatch.jobs.worker.image_cells import DEFAULT_MAX_IMAGE_BYTES
from sdbatch.pipeline.speed.options import (
    ATTENTION_CHOICES,
    COMPILE_CHOICES,
    CUDA_GRAPHS_CHOICES,
    SpeedOptionError,
    SpeedOptions,
)

from . import exit_codes
from .options import plan_options, prompt_options, s3_from, s3_options


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _executor_factory(kind: str, ray_config):
    """(output folder, models, worker config) -> executor: the local one, or sdbatch.cluster's Ray executor."""
    if kind == "local":
        from sdbatch.jobs.local import LocalExecutor

        return lambda folder, models, worker: LocalExecutor(folder, worker, models, ray_config.verbose)
    from sdbatch.cluster.ray_executor import RayExecutor

    return lambda folder, models, worker: RayExecutor(folder, worker, ray_config, models)


def write_traceback(out: str, s3, text: str) -> str:
    """The traceback of an unexpected failure, in OUT/_job/logs/<time>.log, else a temporary file;
    returns where."""
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        from sdbatch.jobs.store.outdir import OutputFolder
        from sdbatch.jobs.store.backends import open_storage

        return OutputFolder(open_storage(out, s3)).write_log(name, text)
    except Exception:  # noqa: BLE001 - OUT itself may be what failed
        fd, path = tempfile.mkstemp(prefix="sdbatch-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path


def _print_dry_run(found, batch_size: int) -> None:
    from .manifest_commands import check_lines

    click.echo("dry run: nothing is written to --out")
    for line in check_lines(found, batch_size):
        click.echo(line)


@click.command()
@click.argument("manifest")
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
@click.option("--shard-retries", type=click.IntRange(min=0), default=defaults.SHARD_RETRIES, show_default=True,
              help="Times Ray runs a shard again after its actor died, before its rows are committed as errors.")
@click.option("--actor-restarts", type=click.IntRange(min=0), default=defaults.ACTOR_RESTARTS, show_default=True,
              help="Times Ray restarts a dead actor (reloading its models) before giving it up.")
@click.option("--shared-fs", is_flag=True, help="The local --out path is on a filesystem every Ray node mounts.")
@click.option("--overwrite", is_flag=True, help="Replace a different earlier job in --out (its outputs are removed).")
@click.option("--format", "image_format", type=click.Choice(["png", "jpeg", "webp"]), default="png",
              show_default=True, help="Image format; every image carries its generation parameters.")
@click.option("--quality", type=click.IntRange(1, 100), default=None,
              help="jpeg / webp quality (default 95); png is lossless.")
@click.option("--layout", type=click.Choice(["files", "webdataset"]), default="files", show_default=True,
              help="files: OUT/images/<shard>/<id>.<ext>; webdataset: OUT/shards/<shard>.tar.")
@click.option("--allow-path", "allow_paths", multiple=True, metavar="DIR",
              help="Also read image cells (init_image, mask_image, depth_map) from DIR and its subfolders "
                   "(repeatable). By default local image paths must lie in the manifest's folder or below; "
                   "s3:// cells are governed by the credentials.")
@click.option("--max-image-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_IMAGE_BYTES, show_default=True,
              help="Largest image cell read, in bytes (a larger one fails its row). Images of more than "
                   "8192x8192 pixels are refused from their header, before decoding.")
@click.option("--repair", is_flag=True,
              help="Check every committed shard as verify does (every image decodes) and redo the damaged "
                   "ones. Without it, a run checks the committed metadata files only (present, same size).")
@click.option("--dry-run", is_flag=True,
              help="Validate, plan and check the models as run does, print the plan, and write nothing to "
                   "--out. Exits 0 when run would start, 2 when it would refuse.")
@click.option("--compile", "compile_", type=click.Choice(COMPILE_CHOICES), default="auto", show_default=True,
              help="torch.compile the UNet and VAE decoder (one compile a job, cached under SDBATCH_CACHE; "
                   "images within 1 uint8 of eager; batches with LoRAs run eagerly). auto: on for CUDA.")
@click.option("--attention", type=click.Choice(ATTENTION_CHOICES), default="auto", show_default=True,
              help="PyTorch attention kernel for the UNet; refused if this GPU and dtype lack it. auto: PyTorch's choice.")
@click.option("--cuda-graphs", type=click.Choice(CUDA_GRAPHS_CHOICES), default="auto", show_default=True,
              help="CUDA graphs for the compiled UNet (they pay for small batches). auto: on for CUDA, compile "
                   "on, batches of 8 or fewer.")
@plan_options
@prompt_options
@s3_options
@click.pass_context
def run(ctx, manifest, model, out, executor, address, actors, gpus_per_actor, device, dtype, batch_size,
        shard_size, shard_retries, actor_restarts, shared_fs, overwrite, image_format, quality, layout, refiner, labels,
        allow_paths, max_image_bytes, repair, dry_run, compile_, attention, cuda_graphs, quantize, prompt_syntax,
        embeddings, lora_dir, s3_endpoint_url, s3_path_style, s3_retries) -> None:
    """Generate one image (or one error row) for every row of MANIFEST.

    Running the same command again resumes: committed shards are skipped, and rows that failed for
    a storage reason (a write that failed) are retried.
    """
    from sdbatch.cluster.ray_executor import RayConfig
    from sdbatch.jobs.driver import JobRefused, ManifestError, RunRequest, dry_run as plan_only, run_job
    from sdbatch.jobs.store.image_encoding import ImageFormat
    from sdbatch.jobs.store.layouts import OutputSpec
    from sdbatch.jobs.store.storage import StorageError
    from sdbatch.jobs.worker.worker_config import WorkerConfig
    from sdbatch.pipeline.model_files import ModelLoadError

    verbose = (ctx.find_root().obj or {}).get("verbose", 0)
    try:
        output = OutputSpec(layout=layout, image=ImageFormat(image_format, quality))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    s3 = s3_from(s3_endpoint_url, s3_path_style, s3_retries)
    try:
        speed = SpeedOptions(compile=compile_, attention=attention, cuda_graphs=cuda_graphs, quantize=quantize)
    except SpeedOptionError as exc:
        raise click.UsageError(str(exc)) from None
    worker = WorkerConfig(device=device, dtype=None if dtype == "auto" else dtype, batch_size=batch_size,
                          output=output, s3=s3, refiner=refiner, max_image_bytes=max_image_bytes,
                          embeddings=tuple(embeddings), lora_dir=lora_dir, speed=speed)
    ray_config = RayConfig(address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                           shard_retries=shard_retries, actor_restarts=actor_restarts, shared_fs=shared_fs,
                           verbose=verbose > 0)
    request = RunRequest(manifest=manifest, out=out, model=model, worker=worker, shard_size=shard_size,
                         overwrite=overwrite, labels=labels, allow_paths=allow_paths, repair=repair,
                         prompt_syntax=prompt_syntax)
    signal.signal(signal.SIGTERM, _interrupt)  # a preempted pod stops as cleanly as Ctrl-C
    try:
        if dry_run:
            _print_dry_run(plan_only(request), batch_size)
            sys.exit(exit_codes.OK)
        summary = run_job(request, _executor_factory(executor, ray_config), executor)
    except ManifestError as exc:
        click.echo(f"error: manifest refused: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    except (JobRefused, ModelLoadError, SpeedOptionError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exit_codes.REFUSED)
    except StorageError as exc:
        click.echo(f"error: {exc}\ncommitted shards are kept; run the same command again to resume", err=True)
        sys.exit(exit_codes.INCOMPLETE)
    except KeyboardInterrupt:  # before the executor started (it handles its own)
        click.echo("interrupted: committed shards are kept; run the same command again to resume", err=True)
        sys.exit(exit_codes.INTERRUPTED)
    except Exception as exc:  # noqa: BLE001 - anything else: one line, the traceback in a file
        where = write_traceback(out, s3, traceback.format_exc())
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        click.echo(f"error: unexpected failure: {type(exc).__name__}: {first} (the full traceback is in {where}); "
                   "committed shards are kept; run the same command again to resume", err=True)
        sys.exit(exit_codes.ROWS_FAILED)
    if summary.duplicate_rows:
        click.echo(f"exact duplicate rows: {summary.duplicate_rows:,} (each distinct row generated once)")
    click.echo(f"{summary.line()} -> {out}")
    if summary.interrupted:
        click.echo("interrupted: committed shards are kept; run the same command again to resume", err=True)
        sys.exit(exit_codes.INTERRUPTED)
    if summary.repaired:
        click.echo(f"repaired: {len(summary.repaired):,} damaged shard(s) redone ({', '.join(summary.repaired[:5])}"
                   f"{', ...' if len(summary.repaired) > 5 else ''})", err=True)
    if summary.incomplete:
        causes = [f["cause"] for f in summary.failed_shards] + ([summary.stopped] if summary.stopped else [])
        why = f" ({causes[0]})" if causes else ""
        click.echo(f"incomplete: {summary.incomplete:,} rows not done{why}; run the same command again to resume",
                   err=True)
        sys.exit(exit_codes.INCOMPLETE)
    if summary.retry_rows:
        click.echo(f"incomplete: {summary.retry_rows:,} rows failed for a storage reason (their error rows say "
                   "why); run the same command again to retry them", err=True)
        sys.exit(exit_codes.INCOMPLETE)
    sys.exit(exit_codes.ROWS_FAILED if summary.failed else exit_codes.OK)
