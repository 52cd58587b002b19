"""Which storage a root names: ``open_storage`` gives a local folder's or an ``s3://`` prefix's
(boto3 is imported only for the latter, so local jobs and ``status`` never load it)."""

from __future__ import annotations

from sdbatch.manifests.remote import S3Options, is_s3_uri

from .storage import LocalStorage, Storage, StorageError


def open_storage(root: str, options: S3Options | None = None) -> Storage:
    """The storage for an ``--out`` (or any root): ``s3://bucket/prefix``, or a local folder."""
    root = str(root)
    if is_s3_uri(root):
        from .s3 import S3Storage  # boto3 only for S3

        return S3Storage(root, options or S3Options())
    if "://" in root and not root.startswith("file://"):
        raise StorageError(f"{root}: unsupported location; use a local path, file:// or s3://bucket/prefix")
    return LocalStorage(root.removeprefix("file://"))
