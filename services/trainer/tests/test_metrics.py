from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from trainer.app import create_app
from trainer.settings import TrainerSettings

from .conftest import ADMIN_TOKEN, DatabaseSwitch, FakeQueue

IRIS = {"model_name": "iris", "dataset": {"builtin": "iris"}}


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def submitted(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], outcome: str) -> float:
    return samples[("trainer_jobs_submitted_total", frozenset({("outcome", outcome)}))]


@pytest.fixture
def flaky_client(
    settings: TrainerSettings, flaky_engine: Engine, queue: FakeQueue
) -> Iterator[TestClient]:
    app = create_app(
        settings, engine=flaky_engine, queue=queue, objects=object(), run_migrations=False
    )  # type: ignore[arg-type]
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(app, headers=auth) as test_client:
        yield test_client


def test_metrics_count_submissions_by_outcome(
    flaky_client: TestClient, queue: FakeQueue, database: DatabaseSwitch
) -> None:
    client = flaky_client
    before = scrape(client)
    assert [submitted(before, o) for o in ("created", "duplicate", "rejected")] == [0, 0, 0]

    keyed = {**IRIS, "idempotency_key": "k"}
    assert client.post("/v1/train", json=keyed).status_code == 202
    assert client.post("/v1/train", json=keyed).status_code == 200
    # Refused by the schema, by the handler's checks, and as an idempotency conflict.
    assert client.post("/v1/train", json={"dataset": {"builtin": "iris"}}).status_code == 422
    assert client.post("/v1/train", json={**IRIS, "algorithm": "xgboost"}).status_code == 422
    assert client.post("/v1/train", json={**keyed, "model_name": "other"}).status_code == 409
    # A broker outage refuses nothing; a database outage is the trainer's problem, not a
    # rejected request (the token is cached by now, so the submission itself meets it).
    queue.down = True
    assert client.post("/v1/train", json=IRIS).status_code == 202
    database.down = True
    assert client.post("/v1/train", json=IRIS).status_code == 503
    database.down = False

    after = scrape(client)
    assert submitted(after, "created") == 2
    assert submitted(after, "duplicate") == 1
    assert submitted(after, "rejected") == 3


def test_metrics_expose_http_requests_of_the_trainer(client: TestClient) -> None:
    client.post("/v1/train", json=IRIS)
    client.get("/v1/jobs/does-not-exist")

    samples = scrape(client)
    labels = {"service": "trainer", "method": "POST", "route": "/v1/train", "status": "202"}
    assert samples[("http_requests_total", frozenset(labels.items()))] == 1
    labels = {"service": "trainer", "method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"}
    assert samples[("http_requests_total", frozenset(labels.items()))] == 1
    duration = {"service": "trainer", "method": "POST", "route": "/v1/train"}
    assert samples[("http_request_duration_seconds_count", frozenset(duration.items()))] == 1
