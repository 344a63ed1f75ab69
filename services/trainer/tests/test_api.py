from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from trainer.jobs import JobStore

from .conftest import FakeQueue

IRIS = {"model_name": "iris", "dataset": {"builtin": "iris"}}


def error_field(response: Any) -> str:
    return response.json()["error"]["field"]


def test_train_records_and_queues_the_job(
    client: TestClient, queue: FakeQueue, store: JobStore
) -> None:
    response = client.post("/v1/train", json=IRIS)
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued"
    assert response.headers["location"] == f"/v1/jobs/{job['job_id']}"
    assert queue.sent == [job["job_id"]]
    assert store.get(job["job_id"]) is not None
    assert client.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "queued"


def test_idempotency_key_returns_the_same_job(client: TestClient, queue: FakeQueue) -> None:
    body = {**IRIS, "idempotency_key": "nightly-2026-11-27"}
    first = client.post("/v1/train", json=body)
    again = client.post("/v1/train", json=body)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert len(queue.sent) == 1


def test_idempotency_key_reused_for_another_request_conflicts(client: TestClient) -> None:
    client.post("/v1/train", json={**IRIS, "idempotency_key": "k"})
    other = client.post("/v1/train", json={**IRIS, "model_name": "other", "idempotency_key": "k"})
    assert other.status_code == 409
    assert error_field(other) == "idempotency_key"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"dataset": {"builtin": "iris"}}, "model_name"),
        ({**IRIS, "model_name": "bad name!"}, "model_name"),
        ({**IRIS, "dataset": {"builtin": "mnist"}}, "dataset.builtin"),
        ({**IRIS, "dataset": {"uri": "s3://data/x.csv"}}, "dataset"),
        ({**IRIS, "dataset": {"uri": "http://x/y.csv", "target": "t"}}, "dataset.uri"),
        ({**IRIS, "dataset": {"uri": "s3://data/x.json", "target": "t"}}, "dataset.uri"),
        ({**IRIS, "dataset": {}}, "dataset"),
        ({**IRIS, "algorithm": "xgboost"}, "algorithm"),
        ({**IRIS, "algorithm": "ridge"}, "algorithm"),
        ({**IRIS, "params": {"not_a_param": 1}}, "params.not_a_param"),
        ({**IRIS, "task": "clustering"}, "task"),
        ({**IRIS, "promote": {"metric": "bleu"}}, "promote.metric"),
        ({**IRIS, "promote": {"alias": "latest"}}, "promote.alias"),
        ({**IRIS, "promote": {"min_improvement": -1}}, "promote.min_improvement"),
        ({**IRIS, "surprise": True}, "surprise"),
    ],
)
def test_bad_requests_name_the_field(
    client: TestClient, queue: FakeQueue, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/train", json=body)
    assert response.status_code == 422, response.text
    assert error_field(response) == field
    assert response.json()["error"]["message"]
    assert queue.sent == []


def test_malformed_json_is_a_422_naming_the_body(client: TestClient) -> None:
    response = client.post(
        "/v1/train", content=b'{"model_name": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert error_field(response) == "body"
    assert "malformed JSON" in response.json()["error"]["message"]


def test_unknown_job_is_404(client: TestClient) -> None:
    response = client.get("/v1/jobs/does-not-exist")
    assert response.status_code == 404
    assert error_field(response) == "job_id"


def test_broker_down_leaves_no_job_behind(
    client: TestClient, queue: FakeQueue, store: JobStore
) -> None:
    queue.down = True
    response = client.post("/v1/train", json=IRIS)
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert store.recent(None, None, 10) == []


def test_health_reports_database_broker_and_workers(client: TestClient, queue: FakeQueue) -> None:
    body = client.get("/health").json()
    assert body == {"status": "ok", "database": "ok", "broker": "ok", "workers": ["trainer@test"]}
    queue.down = True
    assert client.get("/health").status_code == 503


def test_queued_jobs_are_sent_again_when_the_api_starts(
    settings: Any, engine: Any, store: JobStore
) -> None:
    from trainer.app import create_app

    job, _ = store.create("iris", {"model_name": "iris"}, None)
    queue = FakeQueue()
    app = create_app(settings, engine=engine, queue=queue, objects=object(), run_migrations=False)  # type: ignore[arg-type]
    with TestClient(app):
        assert queue.sent == [job.id]
