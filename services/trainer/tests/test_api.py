from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlops_common.http import wait_until
from sqlalchemy import Engine
from trainer.app import create_app
from trainer.jobs import JobStore
from trainer.settings import TrainerSettings

from .conftest import ADMIN_TOKEN, WAIT_S, DatabaseSwitch, FakeQueue

IRIS = {"model_name": "iris", "dataset": {"builtin": "iris"}}


def error_field(response: Any) -> str:
    return response.json()["error"]["field"]


def test_train_records_the_job_and_the_dispatcher_sends_it(
    client: TestClient, queue: FakeQueue, store: JobStore
) -> None:
    response = client.post("/v1/train", json=IRIS)
    assert response.status_code == 202
    job = response.json()
    assert job["status"] == "queued"
    assert response.headers["location"] == f"/v1/jobs/{job['job_id']}"
    assert queue.wait_until(lambda sent: sent == [job["job_id"]])
    assert wait_until(lambda: store.pending_count() == 0, WAIT_S, 0.01)
    assert client.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "queued"


def test_idempotency_key_returns_the_same_job(
    client: TestClient, queue: FakeQueue, store: JobStore
) -> None:
    body = {**IRIS, "idempotency_key": "nightly-2026-11-27"}
    first = client.post("/v1/train", json=body)
    again = client.post("/v1/train", json=body)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["job_id"] == first.json()["job_id"]
    assert queue.wait_until(lambda sent: sent == [first.json()["job_id"]])
    assert [j.id for j in store.recent(None, None, 10)] == [first.json()["job_id"]]


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
    client: TestClient, store: JobStore, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/train", json=body)
    assert response.status_code == 422, response.text
    assert error_field(response) == field
    assert response.json()["error"]["message"]
    assert store.recent(None, None, 10) == []


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


def test_a_job_submitted_while_the_broker_is_down_is_kept_and_sent_once_it_is_back(
    client: TestClient, queue: FakeQueue, store: JobStore
) -> None:
    queue.down = True
    response = client.post("/v1/train", json=IRIS)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert store.pending_count() == 1
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["broker"] == "unavailable" and health.json()["pending_dispatch"] == 1
    queue.down = False
    assert queue.wait_until(lambda sent: sent == [job_id])
    assert wait_until(lambda: store.pending_count() == 0, WAIT_S, 0.01)


def test_a_frozen_broker_delays_no_submission(
    client: TestClient, queue: FakeQueue, store: JobStore
) -> None:
    queue.freeze()
    try:
        began = time.monotonic()
        responses = [client.post("/v1/train", json=IRIS) for _ in range(3)]
        took = time.monotonic() - began
        assert [r.status_code for r in responses] == [202] * 3
        assert took < 2.0, f"3 submissions took {took:.1f} s with the broker frozen"
        assert store.pending_count() == 3
    finally:
        queue.thaw()
    ids = {r.json()["job_id"] for r in responses}
    assert queue.wait_until(lambda sent: set(sent) == ids)


def test_a_database_outage_is_a_503_and_the_next_request_after_it_works(
    settings: TrainerSettings, flaky_engine: Engine, database: DatabaseSwitch, queue: FakeQueue
) -> None:
    app = create_app(
        settings,
        engine=flaky_engine,
        queue=queue,
        objects=object(),  # type: ignore[arg-type]
        run_migrations=False,
    )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(app, headers=auth, raise_server_exceptions=False) as client:
        assert client.get("/v1/jobs").status_code == 200  # the token is checked and cached
        database.down = True
        listing = client.get("/v1/jobs")
        submit = client.post("/v1/train", json=IRIS)
        database.down = False
        after = client.post("/v1/train", json=IRIS)
    for response in (listing, submit):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        assert response.json()["error"] == {
            "code": "unavailable",
            "message": "the database is unavailable; retry later",
        }
    assert after.status_code == 202


def test_queued_jobs_are_sent_again_when_the_api_starts(
    settings: TrainerSettings, engine: Engine, store: JobStore
) -> None:
    waiting, _ = store.create("iris", {"model_name": "iris"}, None)
    sent, _ = store.create("iris", {"model_name": "iris", "x": 1}, None)
    store.dispatch(lambda _job_id: None)  # sent by an earlier process
    queue = FakeQueue()
    app = create_app(settings, engine=engine, queue=queue, objects=object(), run_migrations=False)  # type: ignore[arg-type]
    with TestClient(app):
        assert queue.wait_until(lambda s: sorted(s) == sorted([waiting.id, sent.id]))


def test_a_job_names_the_worker_that_claimed_it(client: TestClient, store: JobStore) -> None:
    job_id = client.post("/v1/train", json=IRIS).json()["job_id"]
    assert client.get(f"/v1/jobs/{job_id}").json()["worker"] is None
    worker = "trainer@node-2/7.abc123/9"
    assert store.claim(job_id, worker) is not None
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert (view["status"], view["worker"], view["attempts"]) == ("running", worker, 1)
