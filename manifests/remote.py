"""How to reach an S3-compatible store: the options every reader and writer of ``s3://`` shares.

They live here, in the lowest package that reads ``s3://`` (manifests are read through pyarrow's
own S3 filesystem); the job layer's boto3 storage is configured from the same object. Credentials
are deliberately absent: every process (driver, each Ray actor) finds them in its own environment
through the AWS SDK's usual chain, so they never travel with a job, its plan or its logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Objects at least this large go up as multipart uploads (S3's maximum single put is 5 GiB).
DEFAULT_MULTIPART_BYTES = 64 * 1024 * 1024
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None = None  # e.g. http://minio:9000; None: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS
    path_style: bool = False  # bucket in the path, not the host name (MinIO, Ceph RGW)
    retries: int = 4  # retries after the first attempt (the SDKs' "standard" retry mode)
    multipart_bytes: int = DEFAULT_MULTIPART_BYTES  # objects this large use a multipart upload

    @property
    def endpoint(self) -> str | None:
        """The endpoint: the option, else the standard environment variables (as the SDKs read them)."""
        return self.endpoint_url or next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), None)


def is_s3_uri(location: str) -> bool:
    return str(location).startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/part`` -> ("bucket", "key/part"); ValueError when it names no bucket."""
    if not is_s3_uri(uri):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri}: no bucket name (expected s3://bucket/prefix)")
    return bucket, key.strip("/")


def pyarrow_filesystem(options: S3Options):
    """pyarrow's ``S3FileSystem`` with our endpoint, addressing and retries; credentials and region
    from the AWS SDK's own chain (environment, profile, web identity, instance role)."""
    from pyarrow import fs

    kwargs: dict = {}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if options.endpoint:
        kwargs["endpoint_override"] = options.endpoint
    if options.path_style:
        kwargs["force_virtual_addressing"] = False
    return fs.S3FileSystem(retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=options.retries + 1),
                           **kwargs)
