"""Tokens on the trainer: scopes per route, model patterns on submissions and listings."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from mlops_common.auth import TokenStore
from trainer.jobs import JobStore

from .conftest import FakeQueue


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/train", {"model_name": "iris", "dataset": {"builtin": "iris"}}),
        ("GET", "/v1/jobs", None),
        ("GET", "/v1/jobs/0b6e3c1e-0000-4000-8000-000000000000", None),
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer", "Bearer mlops_" + "x" * 43, "Token abc"])
def test_every_route_but_health_needs_a_valid_token(
    client: TestClient,
    store: JobStore,
    method: str,
    path: str,
    body: object,
    header: str | None,
) -> None:
    del client.headers["Authorization"]
    response = client.request(
        method, path, json=body, headers={"Authorization": header} if header else {}
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["field"] == "Authorization"
    assert store.recent(None, None, 10) == []


def test_health_and_metrics_need_no_token(client: TestClient) -> None:
    del client.headers["Authorization"]
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_train_scope_and_model_pattern_are_enforced(
    client: TestClient, tokens: TokenStore, queue: FakeQueue
) -> None:
    reader, _ = tokens.create("reader", ["jobs:read"])
    churn, _ = tokens.create("churn-trainer", ["train", "jobs:read"], "churn*")

    no_scope = client.post(
        "/v1/train",
        json={"model_name": "churn", "dataset": {"builtin": "iris"}},
        headers=bearer(reader),
    )
    other_model = client.post(
        "/v1/train",
        json={"model_name": "fraud", "dataset": {"builtin": "iris"}},
        headers=bearer(churn),
    )
    own_model = client.post(
        "/v1/train",
        json={"model_name": "churn-eu", "dataset": {"builtin": "iris"}},
        headers=bearer(churn),
    )

    assert no_scope.status_code == 403 and "'train'" in no_scope.json()["error"]["message"]
    assert other_model.status_code == 403 and "'fraud'" in other_model.json()["error"]["message"]
    assert own_model.status_code == 202
    assert queue.wait_until(lambda sent: sent == [own_model.json()["job_id"]])


def test_job_reads_show_only_the_models_a_token_may_see(
    client: TestClient, tokens: TokenStore
) -> None:
    ids = {}
    for name in ("churn_eu", "churnXeu", "fraud"):
        response = client.post(
            "/v1/train", json={"model_name": name, "dataset": {"builtin": "iris"}}
        )
        ids[name] = response.json()["job_id"]
    # "_" is a literal here, not SQL's one-character wildcard.
    churn, _ = tokens.create("churn-reader", ["jobs:read"], "churn_*")
    trainer_only, _ = tokens.create("submitter", ["train"])

    listed = client.get("/v1/jobs", headers=bearer(churn)).json()
    assert [job["model_name"] for job in listed] == ["churn_eu"]
    assert client.get(f"/v1/jobs/{ids['churn_eu']}", headers=bearer(churn)).status_code == 200
    assert client.get(f"/v1/jobs/{ids['fraud']}", headers=bearer(churn)).status_code == 403
    assert client.get("/v1/jobs?model_name=fraud", headers=bearer(churn)).status_code == 403
    assert client.get("/v1/jobs", headers=bearer(trainer_only)).status_code == 403
