"""Loading a job's data set: a bundled scikit-learn set, or a CSV/Parquet object in S3."""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import pyarrow.parquet as pq
from mlops_common.errors import Unprocessable
from mlops_common.storage import ObjectStore, S3Uri, is_not_found
from sklearn import datasets as skdatasets

from trainer.algorithms import Task


def _bunch(loader: Callable[..., object]) -> Callable[[], tuple[pd.DataFrame, pd.Series]]:
    def load() -> tuple[pd.DataFrame, pd.Series]:
        bunch = loader(as_frame=True)
        frame: pd.DataFrame = bunch.frame  # type: ignore[attr-defined]
        target = "target"
        return frame.drop(columns=[target]), frame[target].rename(target)

    return load


BUILTIN_DATASETS: dict[str, Callable[[], tuple[pd.DataFrame, pd.Series]]] = {
    "iris": _bunch(skdatasets.load_iris),
    "wine": _bunch(skdatasets.load_wine),
    "breast_cancer": _bunch(skdatasets.load_breast_cancer),
    "digits": _bunch(skdatasets.load_digits),
    "diabetes": _bunch(skdatasets.load_diabetes),
}


BUILTIN_TASKS: dict[str, Task] = {
    "iris": "classification",
    "wine": "classification",
    "breast_cancer": "classification",
    "digits": "classification",
    "diabetes": "regression",
}


@dataclass(frozen=True)
class LoadedDataset:
    features: pd.DataFrame
    target: pd.Series
    source: str
    digest: str

    @property
    def rows(self) -> int:
        return len(self.features)


def frame_digest(frame: pd.DataFrame) -> str:
    """Content digest of a table (values and column names), stable across file formats."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    return hashlib.sha256(",".join(map(str, frame.columns)).encode() + hashed).hexdigest()[:16]


def load_builtin(name: str) -> LoadedDataset:
    features, target = BUILTIN_DATASETS[name]()
    whole = features.assign(**{str(target.name): target})
    return LoadedDataset(features, target, f"sklearn:{name}", frame_digest(whole))


def _is_parquet(uri: str) -> bool:
    return uri.lower().endswith((".parquet", ".pq"))


HEADER_CHUNK = 64 * 1024


def _read_range(store: ObjectStore, uri: S3Uri, start: int, end: int) -> bytes:
    response = store.client.get_object(Bucket=uri.bucket, Key=uri.key, Range=f"bytes={start}-{end}")
    return response["Body"].read()


def _parquet_columns(store: ObjectStore, uri: S3Uri, size: int) -> list[str]:
    # The schema is in the footer: its length sits in the 4 bytes before the closing magic.
    tail = _read_range(store, uri, max(0, size - 8), size - 1)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise ValueError("no Parquet footer")
    footer_len = struct.unpack("<I", tail[:4])[0]
    footer = _read_range(store, uri, max(0, size - footer_len - 8), size - 1)
    return list(pq.read_schema(io.BytesIO(b"PAR1" + footer)).names)


def _csv_columns(store: ObjectStore, uri: S3Uri, size: int) -> list[str]:
    head = b""
    while b"\n" not in head and len(head) < size:
        head += _read_range(store, uri, len(head), min(size, len(head) + HEADER_CHUNK) - 1)
    return list(pd.read_csv(io.BytesIO(head.split(b"\n", 1)[0]), nrows=0).columns)


def object_columns(store: ObjectStore, uri: str) -> list[str]:
    """The column names of a table in S3, reading only its header (CSV) or footer (Parquet)."""
    location = S3Uri.parse(uri)
    try:
        size = store.client.head_object(Bucket=location.bucket, Key=location.key)["ContentLength"]
    except Exception as exc:
        if is_not_found(exc):
            raise Unprocessable(f"no object at {uri}", field="dataset.uri") from exc
        raise
    try:
        if _is_parquet(uri):
            return _parquet_columns(store, location, size)
        return _csv_columns(store, location, size)
    except Exception as exc:
        kind = "Parquet" if _is_parquet(uri) else "CSV"
        raise Unprocessable(
            f"{uri} is not a readable {kind} table: {exc}", field="dataset.uri"
        ) from exc


def check_target(store: ObjectStore, uri: str, target: str) -> None:
    columns = object_columns(store, uri)
    if target not in columns:
        shown = ", ".join(columns[:20]) + (" …" if len(columns) > 20 else "")
        raise Unprocessable(
            f"target column {target!r} is not in {uri} (columns: {shown})", field="dataset.target"
        )


def load_uri(store: ObjectStore, uri: str, target: str, max_rows: int) -> LoadedDataset:
    location = S3Uri.parse(uri)
    try:
        raw = store.get_bytes(location)
    except Exception as exc:
        if is_not_found(exc):
            raise Unprocessable(f"no object at {uri}", field="dataset.uri") from exc
        raise
    frame = pd.read_parquet(io.BytesIO(raw)) if _is_parquet(uri) else pd.read_csv(io.BytesIO(raw))
    if target not in frame.columns:
        raise Unprocessable(f"target column {target!r} is not in {uri}", field="dataset.target")
    if len(frame) > max_rows:
        raise Unprocessable(
            f"{uri} has {len(frame)} rows; the limit is {max_rows}", field="dataset.uri"
        )
    frame = frame[frame[target].notna()]
    if len(frame) < 10:
        raise Unprocessable(
            f"{uri} has {len(frame)} rows with a target value; at least 10 are needed",
            field="dataset.uri",
        )
    return LoadedDataset(frame.drop(columns=[target]), frame[target], uri, frame_digest(frame))
