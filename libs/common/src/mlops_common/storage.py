"""S3 access with boto3 and an endpoint URL, so the same code runs on MinIO, SeaweedFS or AWS."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from mlops_common.settings import S3Settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


class S3UriError(ValueError):
    """An ``s3://`` URI that cannot be split into bucket and key."""


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        if not uri.startswith("s3://"):
            raise S3UriError(f"expected an s3://bucket/key URI, got {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise S3UriError(f"no bucket in {uri!r}")
        return cls(bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def make_s3_client(settings: S3Settings) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key.get_secret_value(),
        region_name=settings.region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=settings.connect_timeout_s,
            read_timeout=settings.read_timeout_s,
            retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        ),
    )


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    # Changes whenever the content does (an MD5 for single-part uploads): a cheap change check.
    etag: str


class ObjectTooLarge(Exception):
    def __init__(self, uri: S3Uri, size: int) -> None:
        super().__init__(f"{uri} is at least {size} bytes")
        self.uri = uri
        self.size = size


class ObjectStore:
    """The few object-store operations the services need, on top of a boto3 client."""

    def __init__(self, client: S3Client) -> None:
        self.client = client

    @classmethod
    def from_settings(cls, settings: S3Settings) -> ObjectStore:
        return cls(make_s3_client(settings))

    def get_bytes(self, uri: S3Uri, max_bytes: int | None = None) -> bytes:
        """The object's content; past ``max_bytes``, ObjectTooLarge instead of reading it all."""
        response = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
        body = response["Body"]
        if max_bytes is None:
            return body.read()
        # The declared size refuses a large object before any of it is read; the bounded read
        # still holds when a server declares none.
        declared = response.get("ContentLength")
        if isinstance(declared, int) and declared > max_bytes:
            body.close()
            raise ObjectTooLarge(uri, declared)
        raw = body.read(max_bytes + 1)
        if len(raw) > max_bytes:
            body.close()
            raise ObjectTooLarge(uri, len(raw))
        return raw

    def get_range(self, uri: S3Uri, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of the object, both included (an HTTP range)."""
        response = self.client.get_object(
            Bucket=uri.bucket, Key=uri.key, Range=f"bytes={start}-{end}"
        )
        return response["Body"].read()

    def size(self, uri: S3Uri) -> int:
        """The object's size in bytes, from a HEAD request."""
        return int(self.client.head_object(Bucket=uri.bucket, Key=uri.key)["ContentLength"])

    def put_bytes(self, uri: S3Uri, data: bytes) -> None:
        self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=data)

    def list_keys(self, prefix: S3Uri) -> list[str]:
        return [obj.key for obj in self.list_objects(prefix)]

    def list_objects(self, prefix: S3Uri) -> list[StoredObject]:
        """Every object whose key starts with ``prefix.key``, with its size and ETag."""
        found: list[StoredObject] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=prefix.bucket, Prefix=prefix.key):
            found.extend(
                StoredObject(obj["Key"], int(obj.get("Size", 0)), str(obj.get("ETag", "")))
                for obj in page.get("Contents", [])
            )
        return found

    def download_file(self, uri: S3Uri, filename: str) -> None:
        self.client.download_file(uri.bucket, uri.key, filename)

    def download_prefix(self, prefix: S3Uri, dest: Path) -> int:
        """Copy every object under ``prefix`` into ``dest``, keeping relative paths. Returns count."""
        base = prefix.key.rstrip("/") + "/"
        keys = [k for k in self.list_keys(S3Uri(prefix.bucket, base)) if not k.endswith("/")]
        for key in keys:
            target = dest / key[len(base) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(prefix.bucket, key, str(target))
        return len(keys)


def is_not_found(exc: Exception) -> bool:
    return isinstance(exc, ClientError) and _status(exc) in (403, 404)


def _status(exc: ClientError) -> int:
    meta: Any = exc.response.get("ResponseMetadata", {})
    code = exc.response.get("Error", {}).get("Code", "")
    if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
        return 404
    return int(meta.get("HTTPStatusCode", 0))
