"""Request limits and hostile input: body size, queue depth, NUL bytes and other invalid text."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlops_common.names import SETTABLE_ALIAS_PATTERN
from sqlalchemy import Engine
from trainer.app import create_app
from trainer.jobs import JobStore
from trainer.settings import TrainerSettings

from .conftest import ADMIN_TOKEN, FakeQueue

IRIS = {"model_name": "iris", "dataset": {"builtin": "iris"}}


def error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


@pytest.fixture
def make_client(settings: TrainerSettings, engine: Engine, queue: FakeQueue) -> Iterator[Any]:
    clients: list[TestClient] = []

    def build(objects: Any = None, **overrides: Any) -> TestClient:
        app = create_app(
            settings.model_copy(update=overrides),
            engine=engine,
            queue=queue,
            objects=objects if objects is not None else object(),
            run_migrations=False,
        )
        client = TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        clients.append(client.__enter__())
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


# -- body size -------------------------------------------------------------------------------


def test_a_declared_body_over_the_limit_is_413_naming_body(make_client: Any) -> None:
    client = make_client(max_body_bytes=1024)
    body = json.dumps({**IRIS, "idempotency_key": "k" * 2000}).encode()
    response = client.post("/v1/train", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert error(response)["field"] == "body"
    assert error(response)["code"] == "payload_too_large"
    assert "TRAINER_MAX_BODY_BYTES" in error(response)["message"]


def test_a_chunked_body_is_cut_off_at_the_limit(make_client: Any) -> None:
    client = make_client(max_body_bytes=1024)

    def chunks() -> Iterator[bytes]:
        yield b'{"model_name": "iris", "idempotency_key": "'
        for _ in range(10):
            yield b"k" * 200
        yield b'"}'

    response = client.post(
        "/v1/train", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert error(response)["field"] == "body"


def test_a_chunked_body_under_the_limit_is_served(make_client: Any, queue: FakeQueue) -> None:
    client = make_client(max_body_bytes=1024)
    raw = json.dumps(IRIS).encode()
    response = client.post(
        "/v1/train",
        content=iter([raw[:10], raw[10:]]),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 202, response.text
    assert queue.wait_until(lambda sent: len(sent) == 1)


def test_the_default_body_limit_is_one_mebibyte(settings: TrainerSettings) -> None:
    assert settings.max_body_bytes == 1024 * 1024


# -- queue bound -----------------------------------------------------------------------------


def test_a_full_queue_is_429_with_retry_after(
    make_client: Any, queue: FakeQueue, store: JobStore
) -> None:
    client = make_client(max_active_jobs=2, queue_full_retry_after_s=17)
    first = client.post("/v1/train", json={**IRIS, "idempotency_key": "one"})
    assert first.status_code == 202
    assert client.post("/v1/train", json=IRIS).status_code == 202
    refused = client.post("/v1/train", json=IRIS)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "17"
    assert error(refused)["code"] == "too_many_requests"
    assert "TRAINER_MAX_ACTIVE_JOBS" in error(refused)["message"]
    assert store.active_count() == 2
    # Replaying a known idempotency key creates nothing, so it is still answered.
    again = client.post("/v1/train", json={**IRIS, "idempotency_key": "one"})
    assert again.status_code == 200
    # Finished jobs do not count.
    store.claim(first.json()["job_id"], "w")
    store.succeed(first.json()["job_id"], "w")
    assert client.post("/v1/train", json=IRIS).status_code == 202


def test_running_jobs_count_toward_the_bound(make_client: Any, store: JobStore) -> None:
    client = make_client(max_active_jobs=1)
    job = client.post("/v1/train", json=IRIS).json()
    store.claim(job["job_id"], "w")
    assert store.active_count() == 1
    assert client.post("/v1/train", json=IRIS).status_code == 429


def test_an_invalid_request_is_422_even_when_the_queue_is_full(make_client: Any) -> None:
    client = make_client(max_active_jobs=1)
    client.post("/v1/train", json=IRIS)
    response = client.post("/v1/train", json={**IRIS, "params": {"n_jobs": 4}})
    assert response.status_code == 422


def test_rejected_submissions_are_counted(make_client: Any) -> None:
    client = make_client(max_active_jobs=1)
    client.post("/v1/train", json=IRIS)
    client.post("/v1/train", json=IRIS)
    metrics = client.get("/metrics").text
    assert 'trainer_jobs_submitted_total{outcome="rejected"} 1.0' in metrics


# -- NUL bytes and other invalid text ------------------------------------------------------------

BAD_TEXT = ["\x00", "a\x00b", "\ud800", "a\udfffb", "\x1b[31m", "\n", "x" * 5000]


def _json(body: Any) -> bytes:
    # json.dumps escapes lone surrogates as \ud800, which is what a hostile client sends.
    return json.dumps(body).encode()


def _bodies(bad: str) -> list[tuple[dict[str, Any], str]]:
    uri = {"uri": "s3://data/t.csv", "target": "y"}
    return [
        ({**IRIS, "model_name": bad}, "model_name"),
        ({**IRIS, "dataset": {"builtin": bad}}, "dataset.builtin"),
        ({**IRIS, "dataset": {**uri, "uri": f"s3://data/{bad}.csv"}}, "dataset.uri"),
        ({**IRIS, "dataset": {**uri, "target": bad}}, "dataset.target"),
        ({**IRIS, "algorithm": bad}, "algorithm"),
        ({**IRIS, "task": bad}, "task"),
        ({**IRIS, "params": {"C": bad}}, "params.C"),
        ({**IRIS, "params": {bad: 1}}, "params"),
        ({**IRIS, "promote": {"alias": bad}}, "promote.alias"),
        ({**IRIS, "promote": {"metric": bad}}, "promote.metric"),
        ({**IRIS, "idempotency_key": bad}, "idempotency_key"),
    ]


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_invalid_text_anywhere_in_a_train_body_is_422_naming_the_field(
    client: TestClient, store: JobStore, bad: str
) -> None:
    for body, field in _bodies(bad):
        response = client.post(
            "/v1/train", content=_json(body), headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, (body, response.text)
        assert error(response)["field"] == field, (body, response.text)
    assert store.recent(None, None, 10) == []


@pytest.mark.parametrize("key", ["\x00", "\ud800", "a\ud800"])
def test_invalid_text_in_an_unknown_top_level_key_is_422(client: TestClient, key: str) -> None:
    response = client.post(
        "/v1/train", content=_json({**IRIS, key: 1}), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model_name": "\xed\xa0\x80", "dataset": {"builtin": "iris"}}',  # encoded surrogate
        b'{"model_name": "\xc0\xaf", "dataset": {"builtin": "iris"}}',  # overlong UTF-8
        b'{"model_name": "\xff", "dataset": {"builtin": "iris"}}',
        b'{"model_name": "iris", "dataset": {"builtin": "iris"}, "random_state": NaN}',
        b'{"model_name": "iris", "dataset": {"builtin": "iris"}, "params": {"C": Infinity}}',
        b'{"model_name": "iris", "dataset": {"builtin": "iris"}, "params": {"C": 1e400}}',
        b'{"model_name": "iris", "dataset": {"builtin": "iris"}, "promote": '
        b'{"min_improvement": Infinity}}',
    ],
)
def test_invalid_bytes_and_numbers_in_the_body_are_4xx(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/train", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/v1/jobs?model_name=%00", "model_name"),
        ("/v1/jobs?model_name=a%00b", "model_name"),
        ("/v1/jobs?model_name=%ed%a0%80", "model_name"),
        ("/v1/jobs?model_name=%ff", "model_name"),
        ("/v1/jobs?model_name=" + "a" * 500, "model_name"),
        ("/v1/jobs?status=%00", "status"),
        ("/v1/jobs?limit=%00", "limit"),
        ("/v1/jobs?limit=99999999999999999999999999999", "limit"),
        ("/v1/jobs?limit=-1", "limit"),
        ("/v1/jobs/%00", "job_id"),
        ("/v1/jobs/a%00b", "job_id"),
        ("/v1/jobs/%ff%fe", "job_id"),
        ("/v1/jobs/" + "a" * 100, "job_id"),
    ],
)
def test_invalid_text_in_the_path_or_query_is_422_naming_it(
    client: TestClient, url: str, field: str
) -> None:
    response = client.get(url)
    assert response.status_code == 422, response.text
    assert error(response)["field"] == field


@pytest.mark.parametrize("url", ["/health?x=%00", "/metrics?x=%00", "/%00", "/v1/%ff"])
def test_other_routes_ignore_or_refuse_invalid_text(client: TestClient, url: str) -> None:
    assert client.get(url).status_code < 500


# -- aliases agree with the gateway --------------------------------------------------------------


@pytest.mark.parametrize("alias", ["latest", "LATEST", "Latest", "v2", "V2", "v010", "1st", "a.b"])
def test_an_alias_the_gateway_would_refuse_is_422_at_submit(
    client: TestClient, store: JobStore, alias: str
) -> None:
    response = client.post("/v1/train", json={**IRIS, "promote": {"alias": alias}})
    assert response.status_code == 422
    assert error(response)["field"] == "promote.alias"
    assert store.recent(None, None, 10) == []


@pytest.mark.parametrize("alias", ["champion", "v", "vx2", "latest2", "V2a", "a" * 64])
def test_aliases_the_gateway_sets_are_taken(client: TestClient, alias: str) -> None:
    assert client.post("/v1/train", json={**IRIS, "promote": {"alias": alias}}).status_code == 202


@pytest.mark.parametrize(
    "alias", ["latest", "LATEST", "v2", "V2", "champion", "v", "vx2", "1st", "a-b_c", "a" * 65]
)
def test_the_documented_alias_pattern_matches_the_rule(client: TestClient, alias: str) -> None:
    accepted = client.post("/v1/train", json={**IRIS, "promote": {"alias": alias}})
    assert (accepted.status_code == 202) == bool(re.fullmatch(SETTABLE_ALIAS_PATTERN, alias))


def test_the_openapi_schema_documents_the_constraints(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["TrainRequest"]["properties"]
    assert request["model_name"]["pattern"] and request["model_name"]["maxLength"] == 128
    assert request["params"]["additionalProperties"] is False
    assert request["params"]["properties"]["n_estimators"]["anyOf"] == [
        {"type": "integer", "minimum": 1, "maximum": 5000}
    ]
    assert "n_jobs" not in request["params"]["properties"]
    assert schemas["DatasetSpec"]["properties"]["uri"]["pattern"].startswith("^s3://")
    assert schemas["DatasetSpec"]["oneOf"]
    assert schemas["Promotion"]["properties"]["alias"]["pattern"] == SETTABLE_ALIAS_PATTERN
