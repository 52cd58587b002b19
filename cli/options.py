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
