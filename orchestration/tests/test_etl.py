from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlops_common.datasets import frame_digest
from mlops_common.storage import S3Uri
from mlops_dags import etl


class MemoryStore:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_bytes(self, uri: S3Uri, data: bytes) -> None:
        self.objects[str(uri)] = data

    def get_bytes(self, uri: S3Uri) -> bytes:
        return self.objects[str(uri)]


def table(n: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n).astype(float),
            "city": rng.choice(["a", "b"], n),
            "label": rng.choice(["y", "n"], n),
        }
    )


def test_a_clean_table_passes_with_a_summary() -> None:
    frame = table()
    frame.loc[:4, "age"] = np.nan
    summary = etl.check(frame, "label", etl.Checks(ranges={"age": [0, 120]}))
    assert summary["rows"] == 100 and summary["null_fraction"] == {"age": 0.05}


@pytest.mark.parametrize(
    ("mutate", "checks", "reason"),
    [
        (lambda f: f.drop(columns=["label"]), etl.Checks(), "target column 'label' is missing"),
        (lambda f: f.head(5), etl.Checks(), "5 rows; at least 20"),
        (
            lambda f: f.assign(label=[None] * 3 + list(f["label"][3:])),
            etl.Checks(),
            "target 'label' has 3 missing",
        ),
        (
            lambda f: f.assign(age=np.nan),
            etl.Checks(max_null_fraction=0.5),
            "column 'age' is 100% null",
        ),
        (lambda f: f.assign(age=np.inf), etl.Checks(), "column 'age' has infinite values"),
        (lambda f: f, etl.Checks(ranges={"age": [30, None]}), "values below 30"),
        (
            lambda f: f,
            etl.Checks(ranges={"height": [0, 3]}),
            "range check on missing column 'height'",
        ),
    ],
)
def test_each_failed_check_gives_a_readable_reason(
    mutate: Any, checks: etl.Checks, reason: str
) -> None:
    with pytest.raises(etl.DataCheckFailed, match="data checks failed") as caught:
        etl.check(mutate(table()), "label", checks)
    assert reason in str(caught.value)


def test_split_is_reproducible_and_stratified() -> None:
    frame = table(200)
    train_a, test_a = etl.split(frame, "label", 0.25, seed=7)
    _, test_b = etl.split(frame, "label", 0.25, seed=7)
    pd.testing.assert_frame_equal(test_a, test_b)
    assert len(test_a) == 50 and len(train_a) == 150
    share = frame["label"].value_counts(normalize=True)
    assert abs(test_a["label"].value_counts(normalize=True)["y"] - share["y"]) < 0.03
    assert not etl.split(frame, "label", 0.25, seed=8)[1].equals(test_a)


def test_processed_splits_and_manifest_are_written_idempotently() -> None:
    store = MemoryStore()
    frame = table()
    source = {"uri": "s3://data/raw/t.csv", "target": "label"}
    first = etl.write_processed(store, "t", source, frame, 0.2, 42)  # type: ignore[arg-type]
    again = etl.write_processed(store, "t", source, frame, 0.2, 42)  # type: ignore[arg-type]
    assert first["manifest_uri"] == again["manifest_uri"] and len(store.objects) == 3
    assert first["train_uri"].startswith("s3://data/processed/t/")
    train = pd.read_parquet(io.BytesIO(store.objects[first["train_uri"]]))
    assert len(train) == first["rows"]["train"] == 80
    manifest = json.loads(store.objects[first["manifest_uri"]])
    assert manifest["digest"] == frame_digest(frame)
    assert [c["name"] for c in manifest["columns"]] == ["age", "city", "label"]


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("iris", "", {"builtin": "iris", "target": "target"}),
        ("s3://data/raw/x.csv", "y", {"uri": "s3://data/raw/x.csv", "target": "y"}),
    ],
)
def test_sources(source: str, target: str, expected: dict[str, str]) -> None:
    assert etl.parse_source(source, target or None) == expected


@pytest.mark.parametrize(
    ("source", "target"),
    [("mnist", None), ("s3://data/raw/x.json", "y"), ("s3://data/raw/x.csv", None)],
)
def test_bad_sources_fail_with_a_reason(source: str, target: str | None) -> None:
    with pytest.raises(etl.DataCheckFailed):
        etl.parse_source(source, target)
