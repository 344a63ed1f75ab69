from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from .conftest import FakeQueue

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


def test_metrics_count_submissions_by_outcome(client: TestClient, queue: FakeQueue) -> None:
    before = scrape(client)
    assert [submitted(before, o) for o in ("created", "duplicate", "rejected")] == [0, 0, 0]

    keyed = {**IRIS, "idempotency_key": "k"}
    assert client.post("/v1/train", json=keyed).status_code == 202
    assert client.post("/v1/train", json=keyed).status_code == 200
    # Refused by the schema, by the handler's checks, and as an idempotency conflict.
    assert client.post("/v1/train", json={"dataset": {"builtin": "iris"}}).status_code == 422
    assert client.post("/v1/train", json={**IRIS, "algorithm": "xgboost"}).status_code == 422
    assert client.post("/v1/train", json={**keyed, "model_name": "other"}).status_code == 409
    # The queue being down is the trainer's problem, not a rejected request.
    queue.down = True
    assert client.post("/v1/train", json=IRIS).status_code == 503

    after = scrape(client)
    assert submitted(after, "created") == 1
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
