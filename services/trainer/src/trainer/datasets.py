"""Loading a job's data set: a bundled scikit-learn set, or a CSV/Parquet object in S3."""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd
import pyarrow.parquet as pq
from mlops_common.datasets import (
    BUILTIN_TARGET,
    TABLE_SUFFIXES,
    frame_digest,
    is_parquet,
    read_table,
)
from mlops_common.datasets import load_builtin as load_builtin_table
from mlops_common.errors import Unprocessable
from mlops_common.storage import ObjectStore, ObjectTooLarge, S3Uri, is_not_found

# Data sets are read from these buckets unless TRAINER_DATASET_BUCKETS says otherwise; the MLflow
# artifact bucket and the like stay out of reach of a training request.
DEFAULT_DATASET_BUCKETS = ("data",)
DEFAULT_MAX_DATASET_BYTES = 2 * 1024**3
MAX_KEY_BYTES = 1024  # S3's limit on an object key
MAX_URI_LENGTH = len("s3://") + 63 + 1 + MAX_KEY_BYTES

_BUCKET_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_IPV4_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+")
_RESERVED_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
# For the OpenAPI schema: what check_dataset_uri accepts, short of the bucket's finer rules.
URI_PATTERN = (
    r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
    r"(/(?!\.{1,2}(/|$))[^/\x00-\x1f\x7f-\x9f]+)*"
    r"/[^/\x00-\x1f\x7f-\x9f]*\.([cC][sS][vV]|[pP][aA][rR][qQ][uU][eE][tT]|[pP][qQ])$"
)


def bucket_error(bucket: str) -> str | None:
    """Why ``bucket`` is not a valid S3 bucket name (AWS's naming rules), or None."""
    if not 3 <= len(bucket) <= 63:
        return f"bucket name {bucket!r} must be 3 to 63 characters long"
    if not all(_BUCKET_LABEL.fullmatch(label) for label in bucket.split(".")):
        return (
            f"bucket name {bucket!r} may only hold lowercase letters, digits, dots and hyphens, "
            "and must begin and end with a letter or digit (no '..', '.-' or '-.')"
        )
    if _IPV4_LIKE.fullmatch(bucket):
        return f"bucket name {bucket!r} must not look like an IP address"
    if bucket.startswith(_RESERVED_BUCKET_PREFIXES) or bucket.endswith(_RESERVED_BUCKET_SUFFIXES):
        return f"bucket name {bucket!r} uses a prefix or suffix S3 reserves"
    return None


def check_dataset_uri(uri: str) -> S3Uri:
    """The bucket and key of a data set URI, or ValueError saying what is wrong with it."""
    if not uri.startswith("s3://"):
        raise ValueError("must be an s3://bucket/key URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError("must be an s3://bucket/key URI")
    if problem := bucket_error(bucket):
        raise ValueError(problem)
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or 0xD800 <= ord(c) <= 0xDFFF for c in key):
        raise ValueError("the object key must not contain control characters")
    segments = key.split("/")
    if "" in segments:
        raise ValueError("the object key must not have empty segments ('//' or a trailing '/')")
    if "." in segments or ".." in segments:
        raise ValueError("the object key must not have '.' or '..' segments")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ValueError(f"the object key is longer than {MAX_KEY_BYTES} bytes")
    if not key.lower().endswith(TABLE_SUFFIXES):
        raise ValueError("must point to a .csv or .parquet object")
    return S3Uri(bucket, key)


def check_dataset_bucket(uri: str, buckets: Collection[str], field: str = "dataset.uri") -> None:
    """422 on ``field`` unless the URI's bucket is one data sets may be read from."""
    bucket = S3Uri.parse(uri).bucket
    if bucket not in buckets:
        raise Unprocessable(
            f"data sets are read only from the bucket(s) {', '.join(sorted(buckets))}, "
            f"not {bucket!r}",
            field=field,
        )


def _too_big(uri: str, size: int, max_bytes: int) -> Unprocessable:
    return Unprocessable(
        f"{uri} is {size} bytes; data sets may be at most {max_bytes} bytes "
        "(TRAINER_MAX_DATASET_BYTES)",
        field="dataset.uri",
    )


@dataclass(frozen=True)
class LoadedDataset:
    features: pd.DataFrame
    target: pd.Series
    source: str
    digest: str

    @property
    def rows(self) -> int:
        return len(self.features)


def load_builtin(name: str) -> LoadedDataset:
    whole = load_builtin_table(name)
    features, target = whole.drop(columns=[BUILTIN_TARGET]), whole[BUILTIN_TARGET]
    return LoadedDataset(features, target, f"sklearn:{name}", frame_digest(whole))


HEADER_CHUNK = 64 * 1024


def _parquet_columns(store: ObjectStore, uri: S3Uri, size: int) -> list[str]:
    # The schema is in the footer: its length sits in the 4 bytes before the closing magic.
    tail = store.get_range(uri, max(0, size - 8), size - 1)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise ValueError("no Parquet footer")
    footer_len = struct.unpack("<I", tail[:4])[0]
    footer = store.get_range(uri, max(0, size - footer_len - 8), size - 1)
    return list(pq.read_schema(io.BytesIO(b"PAR1" + footer)).names)


def _csv_columns(store: ObjectStore, uri: S3Uri, size: int) -> list[str]:
    head = b""
    while b"\n" not in head and len(head) < size:
        head += store.get_range(uri, len(head), min(size, len(head) + HEADER_CHUNK) - 1)
    return list(pd.read_csv(io.BytesIO(head.split(b"\n", 1)[0]), nrows=0).columns)


def object_size(store: ObjectStore, uri: str) -> int:
    try:
        return store.size(S3Uri.parse(uri))
    except Exception as exc:
        if is_not_found(exc):
            raise Unprocessable(f"no object at {uri}", field="dataset.uri") from exc
        raise


def object_columns(
    store: ObjectStore, uri: str, max_bytes: int = DEFAULT_MAX_DATASET_BYTES
) -> list[str]:
    """The column names of a table in S3, reading only its header (CSV) or footer (Parquet).

    An object over ``max_bytes`` is refused on its size alone, before any of it is read.
    """
    location = S3Uri.parse(uri)
    size = object_size(store, uri)
    if size > max_bytes:
        raise _too_big(uri, size, max_bytes)
    try:
        if is_parquet(uri):
            return _parquet_columns(store, location, size)
        return _csv_columns(store, location, size)
    except Exception as exc:
        kind = "Parquet" if is_parquet(uri) else "CSV"
        raise Unprocessable(
            f"{uri} is not a readable {kind} table: {exc}", field="dataset.uri"
        ) from exc


def check_target(
    store: ObjectStore, uri: str, target: str, max_bytes: int = DEFAULT_MAX_DATASET_BYTES
) -> None:
    columns = object_columns(store, uri, max_bytes)
    if target not in columns:
        shown = ", ".join(columns[:20]) + (" …" if len(columns) > 20 else "")
        raise Unprocessable(
            f"target column {target!r} is not in {uri} (columns: {shown})", field="dataset.target"
        )


def load_table(
    store: ObjectStore,
    uri: str,
    max_rows: int,
    *,
    buckets: Collection[str] = DEFAULT_DATASET_BUCKETS,
    max_bytes: int = DEFAULT_MAX_DATASET_BYTES,
) -> pd.DataFrame:
    """Download and parse a table; checks again what the API checked, since the object may have
    changed since (or the request predates the limits)."""
    try:
        location = check_dataset_uri(uri)
    except ValueError as exc:
        raise Unprocessable(f"{uri}: {exc}", field="dataset.uri") from exc
    check_dataset_bucket(uri, buckets)
    try:
        raw = store.get_bytes(location, max_bytes=max_bytes)
    except ObjectTooLarge as exc:
        raise _too_big(uri, exc.size, max_bytes) from exc
    except Exception as exc:
        if is_not_found(exc):
            raise Unprocessable(f"no object at {uri}", field="dataset.uri") from exc
        raise
    frame = read_table(raw, uri)
    if len(frame) > max_rows:
        raise Unprocessable(
            f"{uri} has {len(frame)} rows; the limit is {max_rows}", field="dataset.uri"
        )
    return frame


def load_uri(
    store: ObjectStore,
    uri: str,
    target: str,
    max_rows: int,
    *,
    buckets: Collection[str] = DEFAULT_DATASET_BUCKETS,
    max_bytes: int = DEFAULT_MAX_DATASET_BYTES,
) -> LoadedDataset:
    """A table with its target column: the rows that have a target value."""
    frame = load_table(store, uri, max_rows, buckets=buckets, max_bytes=max_bytes)
    if target not in frame.columns:
        raise Unprocessable(f"target column {target!r} is not in {uri}", field="dataset.target")
    frame = frame[frame[target].notna()]
    if len(frame) < 10:
        raise Unprocessable(
            f"{uri} has {len(frame)} rows with a target value; at least 10 are needed",
            field="dataset.uri",
        )
    return LoadedDataset(frame.drop(columns=[target]), frame[target], uri, frame_digest(frame))
