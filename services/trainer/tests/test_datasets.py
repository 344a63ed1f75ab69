from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlops_common.errors import Unprocessable
from mlops_common.storage import ObjectStore
from trainer.datasets import check_target, load_uri, object_columns


class RangeClient:
    """The part of boto3's S3 client the loader uses, over in-memory objects; records ranges."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.bytes_read = 0

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if Key not in self.objects:
            from botocore.exceptions import ClientError

            raise ClientError(
                {"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}},
                "HeadObject",
            )
        return {"ContentLength": len(self.objects[Key])}

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
        data = self.objects[Key]
        if Range:
            start, end = (int(x) for x in Range.removeprefix("bytes=").split("-"))
            data = data[start : end + 1]
        self.bytes_read += len(data)
        return {"Body": io.BytesIO(data)}


def frame(n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "x": rng.normal(size=n),
            "colour": rng.choice(["red", "blue"], n),
            "y": rng.integers(0, 2, n),
        }
    )


@pytest.fixture
def store() -> ObjectStore:
    table = frame()
    parquet = io.BytesIO()
    table.to_parquet(parquet)
    client = RangeClient(
        {"t.csv": table.to_csv(index=False).encode(), "t.parquet": parquet.getvalue()}
    )
    return ObjectStore(client)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["t.csv", "t.parquet"])
def test_columns_are_read_from_the_header_or_footer_only(store: ObjectStore, key: str) -> None:
    assert object_columns(store, f"s3://data/{key}") == ["x", "colour", "y"]
    total = len(store.client.objects[key])  # type: ignore[attr-defined]
    assert store.client.bytes_read < total  # type: ignore[attr-defined]


def test_missing_target_names_the_field_and_lists_columns(store: ObjectStore) -> None:
    with pytest.raises(Unprocessable) as caught:
        check_target(store, "s3://data/t.parquet", "label")
    assert caught.value.field == "dataset.target"
    assert "x, colour, y" in caught.value.message


def test_missing_object_names_the_uri(store: ObjectStore) -> None:
    with pytest.raises(Unprocessable) as caught:
        check_target(store, "s3://data/absent.csv", "y")
    assert caught.value.field == "dataset.uri"


@pytest.mark.parametrize("key", ["t.csv", "t.parquet"])
def test_loading_drops_rows_without_a_target(store: ObjectStore, key: str) -> None:
    loaded = load_uri(store, f"s3://data/{key}", "y", max_rows=10_000)
    assert loaded.rows == 5000 and list(loaded.features.columns) == ["x", "colour"]
    assert loaded.source == f"s3://data/{key}"
    with pytest.raises(Unprocessable, match="limit"):
        load_uri(store, f"s3://data/{key}", "y", max_rows=100)
