"""Data set URIs: valid S3 names, no path tricks, allowed buckets only, bounded size."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlops_common.errors import Unprocessable
from mlops_common.storage import ObjectStore
from sqlalchemy import Engine
from trainer.app import create_app
from trainer.datasets import URI_PATTERN, check_dataset_uri, load_uri
from trainer.schemas import TrainRequest
from trainer.settings import TrainerSettings

from .conftest import ADMIN_TOKEN, FakeQueue
from .test_datasets import RangeClient

CSV = pd.DataFrame({"x": range(20), "y": [0, 1] * 10}).to_csv(index=False).encode()


class SizedClient(RangeClient):
    """Claims a size of its own choosing (a 3 GiB object without 3 GiB of memory)."""

    def __init__(self, objects: dict[str, bytes], sizes: dict[str, int]) -> None:
        super().__init__(objects)
        self.sizes = sizes
        self.gets = 0

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        head = super().head_object(Bucket, Key)
        return {"ContentLength": self.sizes.get(Key, head["ContentLength"])}

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
        self.gets += 1
        if Range:
            return super().get_object(Bucket, Key, Range)
        client = self

        class Body(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                data = super().read(size)
                client.bytes_read += len(data)
                return data

        size = self.sizes.get(Key, len(self.objects[Key]))
        return {"Body": Body(self.objects[Key]), "ContentLength": size}


@pytest.fixture
def s3() -> SizedClient:
    return SizedClient({"t.csv": CSV, "huge.csv": CSV}, {"huge.csv": 3 * 1024**3})


@pytest.fixture
def client(
    settings: TrainerSettings, engine: Engine, queue: FakeQueue, s3: SizedClient
) -> Iterator[TestClient]:
    app = create_app(
        settings.model_copy(update={"dataset_buckets": ["data", "raw.data"]}),
        engine=engine,
        queue=queue,
        objects=ObjectStore(s3),  # type: ignore[arg-type]
        run_migrations=False,
    )
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as test_client:
        yield test_client


def train(client: TestClient, uri: str) -> Any:
    body = {"model_name": "t", "dataset": {"uri": uri, "target": "y"}}
    return client.post("/v1/train", json=body)


BAD_URIS = [
    "s3://data/../mlflow/x.csv",
    "s3://data/./x.csv",
    "s3://data/a/../x.csv",
    "s3://data//x.csv",
    "s3://data/a//x.csv",
    "s3://data/",
    "s3://data",
    "s3:///x.csv",
    "s3://Bad_Bucket!/x.csv",
    "s3://UPPER/x.csv",
    "s3://ab/x.csv",
    "s3://" + "a" * 64 + "/x.csv",
    "s3://-data/x.csv",
    "s3://data-/x.csv",
    "s3://da..ta/x.csv",
    "s3://da.-ta/x.csv",
    "s3://192.168.1.1/x.csv",
    "s3://xn--data/x.csv",
    "s3://data--ol-s3/x.csv",
    "s3://data/x\x00.csv",
    "s3://data/x\n.csv",
    "s3://data/" + "k" * 1030 + ".csv",
    "s3://data/x.json",
    "http://data/x.csv",
]


@pytest.mark.parametrize("uri", BAD_URIS)
def test_malformed_uris_are_422_on_dataset_uri(
    client: TestClient, s3: SizedClient, uri: str
) -> None:
    response = train(client, uri)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "dataset.uri"
    assert s3.gets == 0 and s3.bytes_read == 0


@pytest.mark.parametrize("uri", ["s3://mlflow/x.csv", "s3://models/1/t.csv", "s3://data2/t.csv"])
def test_buckets_outside_the_allowlist_are_422_without_touching_s3(
    client: TestClient, s3: SizedClient, uri: str
) -> None:
    response = train(client, uri)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "dataset.uri"
    assert "data, raw.data" in response.json()["error"]["message"]
    assert s3.bytes_read == 0


def test_an_allowed_bucket_is_read(client: TestClient) -> None:
    assert train(client, "s3://data/t.csv").status_code == 202
    assert train(client, "s3://raw.data/t.csv").status_code == 202


def test_an_object_over_the_size_cap_is_refused_before_download(
    client: TestClient, s3: SizedClient
) -> None:
    response = train(client, "s3://data/huge.csv")
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "dataset.uri"
    assert "TRAINER_MAX_DATASET_BYTES" in response.json()["error"]["message"]
    assert s3.bytes_read == 0


def test_the_worker_refuses_an_oversized_object_before_reading_it(s3: SizedClient) -> None:
    store = ObjectStore(s3)  # type: ignore[arg-type]
    with pytest.raises(Unprocessable) as caught:
        load_uri(store, "s3://data/huge.csv", "y", max_rows=100)
    assert caught.value.field == "dataset.uri"
    assert s3.bytes_read == 0
    with pytest.raises(Unprocessable):
        load_uri(store, "s3://data/t.csv", "y", max_rows=100, max_bytes=len(CSV) - 1)
    assert load_uri(store, "s3://data/t.csv", "y", max_rows=100, max_bytes=len(CSV)).rows == 20


def test_the_worker_checks_the_bucket_and_uri_too(s3: SizedClient) -> None:
    store = ObjectStore(s3)  # type: ignore[arg-type]
    for uri in ("s3://mlflow/t.csv", "s3://data/../t.csv"):
        with pytest.raises(Unprocessable) as caught:
            load_uri(store, uri, "y", max_rows=100)
        assert caught.value.field == "dataset.uri"
    assert s3.gets == 0


def test_a_body_without_size_is_still_capped() -> None:
    class Unsized(RangeClient):
        def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:
            return {"Body": io.BytesIO(self.objects[Key])}

    store = ObjectStore(Unsized({"t.csv": CSV}))  # type: ignore[arg-type]
    with pytest.raises(Unprocessable):
        load_uri(store, "s3://data/t.csv", "y", max_rows=100, max_bytes=10)


def test_settings_refuse_an_invalid_bucket(settings: TrainerSettings) -> None:
    with pytest.raises(ValueError, match="bucket name"):
        TrainerSettings(environment="test", dataset_buckets=["Bad_Bucket"])
    assert settings.dataset_buckets == ["data"]
    assert settings.max_dataset_bytes == 2 * 1024**3


GOOD_URIS = ["s3://data/t.csv", "s3://data/a/b/c.PARQUET", "s3://a.b-c/x y/.csv", "s3://abc/é.pq"]


@pytest.mark.parametrize("uri", BAD_URIS + GOOD_URIS)
def test_the_documented_uri_pattern_agrees_with_the_check(uri: str) -> None:
    try:
        check_dataset_uri(uri)
        accepted = True
    except ValueError:
        accepted = False
    bucket_rules = ("..", ".-", "-.", "192.168", "xn--", "--ol-s3", "k" * 1030)
    if any(rule in uri for rule in bucket_rules):
        return  # finer rules than the pattern states
    assert accepted == bool(re.fullmatch(URI_PATTERN, uri)), uri


def train_with_test(client: TestClient, test_uri: str) -> Any:
    dataset = {"uri": "s3://data/t.csv", "test_uri": test_uri, "target": "y"}
    return client.post("/v1/train", json={"model_name": "t", "dataset": dataset})


@pytest.mark.parametrize("uri", ["s3://mlflow/t.csv", "s3://data/../t.csv", "s3://data/x.json"])
def test_a_test_uri_is_held_to_the_rules_of_the_uri(client: TestClient, uri: str) -> None:
    response = train_with_test(client, uri)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "dataset.test_uri"


def test_a_test_uri_in_an_allowed_bucket_is_accepted(client: TestClient) -> None:
    assert train_with_test(client, "s3://raw.data/t.csv").status_code == 202
    missing = train_with_test(client, "s3://data/missing.csv")
    assert missing.status_code == 422 and "no object at" in missing.json()["error"]["message"]


def test_a_test_uri_goes_with_a_uri_only() -> None:
    with pytest.raises(ValueError, match='"test_uri" applies only to "uri" data sets'):
        TrainRequest.model_validate(
            {"model_name": "t", "dataset": {"builtin": "iris", "test_uri": "s3://data/t.csv"}}
        )
