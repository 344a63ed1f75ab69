"""ETL steps: load a raw table, check it, split it reproducibly, write Parquet and a manifest."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from mlops_common.datasets import (
    BUILTIN_TARGET,
    BUILTIN_TASKS,
    TABLE_SUFFIXES,
    frame_digest,
    load_builtin,
    read_table,
)
from mlops_common.storage import ObjectStore, S3Uri
from sklearn.model_selection import train_test_split

DATA_BUCKET = "data"


class DataCheckFailed(ValueError):
    """The data set breaks a check: the run fails with this readable reason, without retries."""


@dataclass(frozen=True)
class Checks:
    min_rows: int = 20
    max_null_fraction: float = 0.5
    # column -> [low, high]; either may be None for an open bound.
    ranges: dict[str, list[float | None]] = field(default_factory=dict)


def parse_source(source: str, target: str | None) -> dict[str, str]:
    """A DAG param (``breast_cancer`` or ``s3://data/raw/x.csv``) as a source description."""
    if source.startswith("s3://"):
        if not source.lower().endswith(TABLE_SUFFIXES):
            raise DataCheckFailed(f"source {source} must be a .csv or .parquet object")
        if not target:
            raise DataCheckFailed(f"source {source} needs a target column")
        return {"uri": source, "target": target}
    if source not in BUILTIN_TASKS:
        raise DataCheckFailed(
            f"unknown built-in data set {source!r}; known: {', '.join(sorted(BUILTIN_TASKS))}"
        )
    return {"builtin": source, "target": target or BUILTIN_TARGET}


def load_table(store: ObjectStore, uri: str) -> pd.DataFrame:
    return read_table(store.get_bytes(S3Uri.parse(uri)), uri)


def load_raw(store: ObjectStore, source: dict[str, str]) -> pd.DataFrame:
    if "builtin" in source:
        return load_builtin(source["builtin"])
    return load_table(store, source["uri"])


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def check(frame: pd.DataFrame, target: str, checks: Checks) -> dict[str, Any]:
    """Schema, target, null and range checks. Raises DataCheckFailed listing every problem."""
    problems: list[str] = []
    duplicated = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if duplicated:
        problems.append(f"duplicate columns: {', '.join(duplicated)}")
    if target not in frame.columns:
        problems.append(
            f"target column {target!r} is missing (columns: {', '.join(map(str, frame.columns[:20]))})"
        )
    if len(frame) < checks.min_rows:
        problems.append(f"{len(frame)} rows; at least {checks.min_rows} are needed")
    if target in frame.columns and frame[target].isna().any():
        problems.append(f"target {target!r} has {int(frame[target].isna().sum())} missing values")
    nulls = frame.isna().mean() if len(frame) else pd.Series(dtype=float)
    for column, fraction in nulls.items():
        if fraction > checks.max_null_fraction:
            problems.append(
                f"column {column!r} is {fraction:.0%} null (limit {checks.max_null_fraction:.0%})"
            )
    numeric = frame.select_dtypes(include="number")
    for column in numeric.columns:
        if np.isinf(numeric[column].to_numpy(dtype=float, na_value=np.nan)).any():
            problems.append(f"column {column!r} has infinite values")
    for column, (low, high) in checks.ranges.items():
        if column not in frame.columns:
            problems.append(f"range check on missing column {column!r}")
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        if low is not None and (values < low).any():
            problems.append(f"column {column!r} has {int((values < low).sum())} values below {low}")
        if high is not None and (values > high).any():
            problems.append(
                f"column {column!r} has {int((values > high).sum())} values above {high}"
            )
    if problems:
        raise DataCheckFailed("data checks failed: " + "; ".join(problems))
    return {
        "rows": len(frame),
        "columns": len(frame.columns),
        "null_fraction": {str(c): round(float(f), 4) for c, f in nulls.items() if f > 0},
    }


def split(
    frame: pd.DataFrame, target: str, test_size: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Same input, size and seed give the same split; stratified for class-like targets."""
    labels = frame[target]
    counts = labels.value_counts()
    class_like = labels.dtype == object or labels.nunique() <= 20
    stratify = (
        labels
        if class_like and counts.min() >= 2 and len(counts) * 2 <= len(frame) * test_size
        else None
    )
    train, test = train_test_split(frame, test_size=test_size, random_state=seed, stratify=stratify)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def processed_prefix(name: str, digest: str, test_size: float, seed: int) -> str:
    # Keyed by content and split settings: a re-run writes the same objects (idempotent).
    return f"processed/{name}/{digest}-t{round(test_size * 100)}-s{seed}"


def write_processed(
    store: ObjectStore,
    name: str,
    source: dict[str, str],
    frame: pd.DataFrame,
    test_size: float,
    seed: int,
) -> dict[str, Any]:
    target = source["target"]
    digest = frame_digest(frame)
    train, test = split(frame, target, test_size, seed)
    prefix = processed_prefix(name, digest, test_size, seed)
    train_uri = S3Uri(DATA_BUCKET, f"{prefix}/train.parquet")
    test_uri = S3Uri(DATA_BUCKET, f"{prefix}/test.parquet")
    store.put_bytes(train_uri, to_parquet(train))
    store.put_bytes(test_uri, to_parquet(test))
    manifest: dict[str, Any] = {
        "name": name,
        "source": source,
        "target": target,
        "digest": digest,
        "test_size": test_size,
        "seed": seed,
        "rows": {"total": len(frame), "train": len(train), "test": len(test)},
        "columns": [{"name": str(c), "dtype": str(t)} for c, t in frame.dtypes.items()],
        "train_uri": str(train_uri),
        "test_uri": str(test_uri),
        "train_digest": frame_digest(train),
        "test_digest": frame_digest(test),
        "created_at": datetime.now(UTC).isoformat(),
    }
    manifest_uri = S3Uri(DATA_BUCKET, f"{prefix}/manifest.json")
    store.put_bytes(manifest_uri, json.dumps(manifest, indent=2).encode())
    return {**manifest, "manifest_uri": str(manifest_uri)}
