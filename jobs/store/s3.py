"""S3-compatible object stores (AWS S3, MinIO, Ceph RGW, Cloudflare R2) behind ``Storage``.

boto3 does the work: its credential chain, its ``standard`` retry mode, its transfer manager
(single put below ``S3Options.multipart_bytes``, a multipart upload above, aborted on
failure). Request checksums are sent only when an operation requires one: since botocore 1.36 the
default adds CRC checksums (and aws-chunked uploads) that several S3-compatible servers refuse.

Object stores have no rename, so an object is atomic by itself: a put, or a multipart upload that
is visible only once completed. A multipart upload that a killed process never completed is
invisible; ``partial_writes`` lists those and ``discard_partial_writes`` aborts them.

Manifests are read by pyarrow's own S3 filesystem, configured from the same ``S3Options``
(``sdbatch.manifests.remote``).
"""

from __future__ import annotations

import io
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from sdbatch.manifests.remote import S3Options, split_s3_uri

from .storage import StorageError

log = logging.getLogger(__name__)

NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
NO_CREDENTIALS = ("no AWS credentials found (boto3 looks in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                  "AWS_PROFILE and ~/.aws, then the instance or pod role)")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # without a leading or trailing "/"; "" for the bucket's root

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        try:
            return cls(*split_s3_uri(uri))
        except ValueError as exc:
            raise StorageError(str(exc)) from None

    def child(self, relpath: str) -> "S3Location":
        relpath = relpath.strip("/")
        return S3Location(self.bucket, f"{self.key}/{relpath}" if self.key else relpath)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"


def client_config(options: S3Options) -> Config:
    return Config(
        retries={"mode": "standard", "total_max_attempts": options.retries + 1},
        s3={"addressing_style": "path" if options.path_style else "auto"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        max_pool_connections=32,  # encode threads and transfer-manager threads share one client
    )


def transfer_config(options: S3Options) -> TransferConfig:
    # parts of at least the threshold (and S3's 5 MiB minimum), a few uploading at once
    part = max(options.multipart_bytes, 5 * 1024 * 1024)
    return TransferConfig(multipart_threshold=options.multipart_bytes, multipart_chunksize=part,
                          max_concurrency=4)


_clients: dict[S3Options, object] = {}
_clients_lock = threading.Lock()


def s3_client(options: S3Options):
    """One client per process and options (boto3 clients are thread safe; sessions are not)."""
    with _clients_lock:
        if options not in _clients:
            session = boto3.session.Session()
            _clients[options] = session.client("s3", endpoint_url=options.endpoint,
                                               config=client_config(options))
        return _clients[options]


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def reporting(action: str, where: str):
    """botocore errors -> StorageError naming the object, the action and the cause."""
    try:
        yield
    except NoCredentialsError:
        raise StorageError(f"{where}: cannot {action}: {NO_CREDENTIALS}") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        cause = " ".join(filter(None, [str(error.get("Code", "")), str(error.get("Message", ""))]))
        raise StorageError(f"{where}: cannot {action}: {cause or exc}") from None
    except BotoCoreError as exc:
        raise StorageError(f"{where}: cannot {action}: {exc}") from None


class ObjectTooLarge(ValueError):
    """An object larger than the reader's limit (it was not read)."""


def read_object(uri: str, options: S3Options, max_bytes: int | None = None) -> bytes:
    """The whole object; FileNotFoundError when there is none, ObjectTooLarge when it holds more
    than ``max_bytes``."""
    where = S3Location.parse(uri)
    client = s3_client(options)
    with reporting("read", where.uri):
        try:
            response = client.get_object(Bucket=where.bucket, Key=where.key)
        except ClientError as exc:
            if _error_code(exc) in NOT_FOUND:
                raise FileNotFoundError(where.uri) from None
            raise
        body = response["Body"]
        if max_bytes is None:
            return body.read()
        if response.get("ContentLength", 0) > max_bytes:
            body.close()
            raise ObjectTooLarge(where.uri)
        data = body.read(max_bytes + 1)
        body.close()
        if len(data) > max_bytes:
            raise ObjectTooLarge(where.uri)
        return data


class S3Storage:
    """``s3://bucket/prefix`` as a ``Storage``: relative paths are keys under the prefix."""

    atomic_folders = False  # no rename: a shard's objects are written in place (see layouts)

    def __init__(self, root: str, options: S3Options):
        self.location = S3Location.parse(root)
        self.root = self.location.uri
        self.options = options

    @property
    def _client(self):
        return s3_client(self.options)

    def _at(self, relpath: str) -> S3Location:
        return self.location.child(relpath)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        if len(data) >= self.options.multipart_bytes:
            self.write_fileobj(relpath, io.BytesIO(data))
            return
        where = self._at(relpath)
        with reporting("write", where.uri):
            self._client.put_object(Bucket=where.bucket, Key=where.key, Body=data)

    def write_fileobj(self, relpath: str, source: BinaryIO) -> None:
        """One put, or a multipart upload (large objects): the object appears whole or not at all."""
        where = self._at(relpath)
        with reporting("write", where.uri):
            self._client.upload_fileobj(source, where.bucket, where.key, Config=transfer_config(self.options))

    def staging_folder(self):
        """A new local temporary folder (its files are uploaded by ``move_in``)."""
        import tempfile
        from pathlib import Path

        return Path(tempfile.mkdtemp(prefix="sdbatch-staging-"))

    def discard_staging(self, folder) -> None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)

    def move_in(self, relpath: str, local_path) -> None:
        """Upload a local file to ``relpath``, then remove the local file."""
        import os

        with open(local_path, "rb") as source:
            self.write_fileobj(relpath, source)
        os.unlink(local_path)

    def read_bytes(self, relpath: str) -> bytes:
        return read_object(self._at(relpath).uri, self.options)

    def exists(self, relpath: str) -> bool:
        where = self._at(relpath)
        with reporting("look up", where.uri):
            try:
                self._client.head_object(Bucket=where.bucket, Key=where.key)
                return True
            except ClientError as exc:
                if _error_code(exc) in NOT_FOUND:
                    return False
                raise

    def create_exclusive(self, relpath: str, data: bytes) -> bool:
        """Put ``relpath`` unless it exists (a conditional put, ``If-None-Match: *``; a store that
        ignores the condition makes this a plain put: best effort). Returns whether it was created."""
        where = self._at(relpath)
        with reporting("write", where.uri):
            try:
                self._client.put_object(Bucket=where.bucket, Key=where.key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as exc:
                code = _error_code(exc)
                if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                    return False
                if code not in ("NotImplemented", "501", "InvalidArgument", "InvalidRequest", "400"):
                    raise
            log.debug("%s: conditional puts refused by the store; a plain put instead", where.uri)
        if self.exists(relpath):
            return False
        self.write_bytes(relpath, data)
        return True

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every object under ``prefix`` and its size in bytes (one listing)."""
        where = self._at(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        out: dict[str, int] = {}
        with reporting("list", where.uri):
            for page in paginator.paginate(Bucket=where.bucket, Prefix=f"{where.key}/"):
                out.update((self._relative(item["Key"]), item["Size"]) for item in page.get("Contents", []))
        return out

    def _relative(self, key: str) -> str:
        return key[len(self.location.key) + 1:] if self.location.key else key

    def list(self, prefix: str) -> list[str]:
        where = self._at(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        with reporting("list", where.uri):
            for page in paginator.paginate(Bucket=where.bucket, Prefix=f"{where.key}/"):
                keys.extend(self._relative(item["Key"]) for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, relpath: str) -> None:
        where = self._at(relpath)
        with reporting("delete", where.uri):
            self._client.delete_object(Bucket=where.bucket, Key=where.key)

    def delete_prefix(self, prefix: str) -> int:
        """Every object under ``prefix``, in requests of up to 1,000 keys."""
        keys = [self._at(p).key for p in self.list(prefix)]
        for first in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[first:first + 1000]]
            with reporting("delete", self._at(prefix).uri):
                self._client.delete_objects(Bucket=self.location.bucket, Delete={"Objects": chunk, "Quiet": True})
        return len(keys)

    def replace_folder(self, source: str, target: str) -> None:
        raise NotImplementedError("object stores have no rename; see atomic_folders")

    def url(self, relpath: str) -> str:
        return self._at(relpath).uri

    def check(self) -> None:
        """A clear error now (missing bucket, no credentials, no access) rather than mid-job."""
        bucket = self.location.bucket
        endpoint = self.options.endpoint or "AWS"
        try:
            self._client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            raise StorageError(f"{self.root}: {NO_CREDENTIALS}") from None
        except ClientError as exc:
            code = _error_code(exc)
            if code in NOT_FOUND:
                raise StorageError(f"{self.root}: bucket {bucket!r} does not exist at {endpoint}") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise StorageError(f"{self.root}: access to bucket {bucket!r} at {endpoint} denied "
                                   "(check the credentials and their permissions)") from None
            raise StorageError(f"{self.root}: cannot reach bucket {bucket!r} at {endpoint}: {code} {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.root}: cannot reach {endpoint}: {exc}") from None

    def check_writable(self) -> None:
        self.check()

    def remove_if_empty(self) -> None:
        pass  # an object store has no folders

    def _uploads(self) -> list[dict]:
        prefix = f"{self.location.key}/" if self.location.key else ""
        paginator = self._client.get_paginator("list_multipart_uploads")
        uploads: list[dict] = []
        with reporting("list multipart uploads", self.root):
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=prefix):
                uploads.extend(page.get("Uploads", []))
        return uploads

    def partial_writes(self) -> list[str]:
        """Multipart uploads started and never completed (nor aborted): not objects, but storage."""
        return sorted(self._relative(upload["Key"]) for upload in self._uploads())

    def discard_partial_writes(self) -> int:
        uploads = self._uploads()
        for upload in uploads:
            with reporting("abort a multipart upload", f"s3://{self.location.bucket}/{upload['Key']}"):
                self._client.abort_multipart_upload(Bucket=self.location.bucket, Key=upload["Key"],
                                                    UploadId=upload["UploadId"])
        return len(uploads)
