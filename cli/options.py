"""Options several commands share."""

from __future__ import annotations

import click

from sdbatch.manifests.remote import S3Options


def s3_options(command):
    """--s3-* options, for every command that may read or write s3:// locations."""
    command = click.option("--s3-retries", type=click.IntRange(min=0), default=4, show_default=True,
                           help="Retries of a failed S3 request (the SDKs' standard retry mode).")(command)
    command = click.option("--s3-path-style", is_flag=True,
                           help="Path-style S3 addressing (bucket in the path): MinIO, Ceph RGW.")(command)
    command = click.option("--s3-endpoint-url", default=None,
                           help="S3-compatible endpoint, e.g. http://minio:9000. Default: AWS_ENDPOINT_URL_S3, "
                                "else AWS_ENDPOINT_URL, else AWS. Credentials come from the AWS SDK's usual "
                                "chain, never from options.")(command)
    return command


def s3_from(s3_endpoint_url: str | None, s3_path_style: bool, s3_retries: int) -> S3Options:
    return S3Options(endpoint_url=s3_endpoint_url, path_style=s3_path_style, retries=s3_retries)


def prompt_options(command):
    """--prompt-syntax, --embedding and --lora-dir: what run and validate read prompts with."""
    from sdbatch.manifests.schema import DEFAULT_PROMPT_SYNTAX, PROMPT_SYNTAXES

    command = click.option("--lora-dir", default=None, metavar="DIR",
                           help="Folder (local or s3://) where the loras column's names are found as "
                                "NAME.safetensors; a name may also be a path, an s3:// URI or a hub id.")(command)
    command = click.option("--embedding", "embeddings", multiple=True, metavar="PATH_OR_HUB_ID[:TOKEN]",
                           help="Textual-inversion embedding (safetensors) loaded into every model; prompts "
                                "write its TOKEN (default: the file's own, else its name), e.g. <my-style>. "
                                "Repeatable.")(command)
    command = click.option("--prompt-syntax", type=click.Choice(PROMPT_SYNTAXES), default=DEFAULT_PROMPT_SYNTAX,
                           show_default=True,
                           help="How prompts are read where a row's prompt_syntax is empty: plain (as stock "
                                "diffusers: 77 tokens), a1111 ((word:1.3), [word], BREAK, any length, "
                                "<lora:name:weight>) or compel.")(command)
    return command


def plan_options(command):
    """What run and validate plan a job with (defaults: ``jobs/defaults.py``): the models, batch and
    shard sizes, label columns, and the one speed switch planning checks (LoRAs refuse fp8)."""
    from sdbatch.jobs import defaults
    from sdbatch.pipeline.speed.options import QUANTIZE_CHOICES

    command = click.option("--quantize", type=click.Choice(QUANTIZE_CHOICES), default="none", show_default=True,
                           help="LOSSY: fp8 UNet linear layers (torchao; GPUs of compute capability 8.9+, refused "
                                "elsewhere; rows with LoRAs are refused). Part of the job (a resume may not change "
                                "it) and of each row's metadata.")(command)
    command = click.option("--label", "labels", multiple=True, metavar="COLUMN",
                           help="Carry COLUMN through as a label even though its name looks like a misspelt "
                                "manifest column (repeatable). Columns named label_* or a 'labels' column are "
                                "labels anyway.")(command)
    command = click.option("--refiner", default=None, metavar="MODEL",
                           help="SDXL refiner (hub id or folder) that takes over rows with a refiner_start, as "
                                "diffusers' denoising_end / denoising_start pair. Loaded by every worker.")(command)
    command = click.option("--shard-size", type=click.IntRange(min=1), default=defaults.SHARD_SIZE,
                           show_default=True,
                           help="Rows per shard: the unit of scheduling, commit and resume.")(command)
    command = click.option("--batch-size", type=click.IntRange(min=1), default=defaults.BATCH_SIZE,
                           show_default=True,
                           help="Rows per UNet batch (a guided row is two UNet samples). Does not change any "
                                "image.")(command)
    command = click.option("--model", default=defaults.MODEL, show_default=True,
                           help="Hub id or local diffusers folder for rows with no model of their own. 'tiny' is "
                                "the built-in random-weight model (noise images, for trying the tool "
                                "offline).")(command)
    return command
