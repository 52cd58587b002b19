"""The ``sdbatch`` command line."""

from __future__ import annotations

import logging
import signal
import sys

import click

from .manifest_commands import sweep, validate

EXIT_OK, EXIT_ROWS_FAILED, EXIT_REFUSED = 0, 1, 2
MODEL_COMMANDS = {"run", "tiny-model"}  # the commands that import diffusers and load models


def s3_options(command):
    """--s3-* options, for every command that may read or write s3:// locations."""
    command = click.option("--s3-retries", type=click.IntRange(min=0), default=4, show_default=True,
                           help="Retries of a failed S3 request (boto3's standard retry mode).")(command)
    command = click.option("--s3-path-style", is_flag=True,
                           help="Path-style S3 addressing (bucket in the path): MinIO, Ceph RGW.")(command)
    command = click.option("--s3-endpoint-url", envvar=["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"], default=None,
                           help="S3-compatible endpoint, e.g. http://minio:9000. Default: AWS_ENDPOINT_URL, "
                                "else AWS. Credentials come from boto3's usual chain, never from options.")(command)
    return command


def storage_options(s3_endpoint_url, s3_path_style, s3_retries):
    from .storage import StorageOptions

    return StorageOptions(endpoint_url=s3_endpoint_url, path_style=s3_path_style, retries=s3_retries)


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """sdbatch: generate Stable Diffusion images in bulk from Parquet manifests."""
    level = max(logging.WARNING - 10 * verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("botocore", "boto3", "s3transfer", "urllib3"):
        # their debug output carries request headers: signatures and the access key id
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    ctx = click.get_current_context()
    if verbose < 2 and ctx.invoked_subcommand in MODEL_COMMANDS:
        from sdbatch.pipeline.loading import quiet_libraries

        quiet_libraries()


main.add_command(validate)
main.add_command(sweep)


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
@click.option("--out", required=True, help="Output folder, or s3://bucket/prefix.")
@click.option("--executor", type=click.Choice(["ray", "local"]), default="ray", show_default=True,
              help="ray: fan shards out to Ray actors; local: everything in this process.")
@click.option("--address", default=None, help="Ray cluster to join ('auto' or host:port). Default: "
              "RAY_ADDRESS, else a local Ray instance.")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Number of actors. Default: one per GPU, or 1 on a machine without GPUs.")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--shard-retries", type=click.IntRange(min=0), default=2, show_default=True,
              help="Times a shard is retried after its actor died, before its rows are marked failed.")
@click.option("--shared-fs", is_flag=True, help="The local --out path is on a filesystem every node mounts.")
@click.option("--overwrite", is_flag=True, help="Replace a different earlier job in --out.")
@click.option("--format", "image_format", type=click.Choice(["png", "jpeg", "webp"]), default="png",
              show_default=True, help="Image format; every image carries its generation parameters.")
@click.option("--quality", type=click.IntRange(1, 100), default=None,
              help="jpeg / webp quality (default 95); png is lossless.")
@click.option("--layout", type=click.Choice(["files", "webdataset"]), default="files", show_default=True,
              help="files: OUT/images/<shard>/<id>.<ext>; webdataset: OUT/shards/<shard>.tar.")
@s3_options
def run(manifest, model, out, executor, address, actors, gpus_per_actor, device, dtype, batch_size,
        shard_size, shard_retries, shared_fs, overwrite, image_format, quality, layout, s3_endpoint_url,
        s3_path_style, s3_retries) -> None:
    """Generate one image (or one error row) for every row of MANIFEST.

    Running the same command again resumes: committed shards are skipped.
    """
    from sdbatch.manifests.reader import ManifestError
    from sdbatch.pipeline.loading import ModelLoadError

    from .driver import JobRefused, RunRequest, run_job
    from .executor import ExecutorConfig
    from .image_encoding import ImageFormat
    from .layouts import OutputSpec
    from .storage import StorageError
    from .worker import WorkerConfig

    try:
        output = OutputSpec(layout=layout, image=ImageFormat(image_format, quality))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    request = RunRequest(
        manifest=manifest,
        out=out,
        model=model,
        worker=WorkerConfig(device=device, dtype=None if dtype == "auto" else dtype, batch_size=batch_size,
                            output=output, storage=storage_options(s3_endpoint_url, s3_path_style, s3_retries)),
        executor=ExecutorConfig(kind=executor, address=address, actors=actors, gpus_per_actor=gpus_per_actor,
                                shard_retries=shard_retries, shared_fs=shared_fs),
        shard_size=shard_size,
        overwrite=overwrite,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # a preempted pod stops as cleanly as Ctrl-C
    try:
        summary = run_job(request)
    except ManifestError as exc:
        click.echo(f"error: manifest refused: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    except (JobRefused, ModelLoadError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    except StorageError as exc:
        click.echo(f"error: {exc}\ncommitted shards are kept; run the same command again to resume", err=True)
        sys.exit(EXIT_ROWS_FAILED)
    if summary.duplicate_rows:
        click.echo(f"exact duplicate rows: {summary.duplicate_rows:,} (each distinct row generated once)")
    click.echo(f"{summary.line()} -> {out}")
    if summary.interrupted:
        click.echo("interrupted: committed shards are kept; run the same command again to resume", err=True)
        sys.exit(130)
    incomplete = summary.rows - summary.ok - summary.failed
    sys.exit(EXIT_ROWS_FAILED if summary.failed or incomplete else EXIT_OK)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@main.command()
@click.argument("out")
@s3_options
def status(out: str, s3_endpoint_url, s3_path_style, s3_retries) -> None:
    """Show done / total for the job in OUT (while it runs or after it stopped)."""
    from .inspect import job_status

    report = _inspecting(lambda: job_status(out, storage_options(s3_endpoint_url, s3_path_style, s3_retries)))
    click.echo(report.text())
    sys.exit(EXIT_OK if report.complete else EXIT_ROWS_FAILED)


def _inspecting(read):
    """Run a read of OUT; a storage failure (no bucket, no access) is an error line, exit 2."""
    from .storage import StorageError

    try:
        return read()
    except StorageError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_REFUSED)


@main.command()
@click.argument("out")
@s3_options
def verify(out: str, s3_endpoint_url, s3_path_style, s3_retries) -> None:
    """Check OUT: one metadata row per planned row, every ok image decodes, no stray or partial files."""
    from .inspect import verify_outputs

    problems = _inspecting(lambda: verify_outputs(out, storage_options(s3_endpoint_url, s3_path_style, s3_retries)))
    for problem in problems[:50]:
        click.echo(f"problem: {problem}")
    if len(problems) > 50:
        click.echo(f"... and {len(problems) - 50} more")
    click.echo("verify: ok" if not problems else f"verify: {len(problems)} problem(s)")
    sys.exit(EXIT_OK if not problems else EXIT_ROWS_FAILED)


if __name__ == "__main__":
    main()
