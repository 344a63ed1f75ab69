from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient


def error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def test_move_alias_changes_holder_and_writes_audit_row(
    client: TestClient, registry: Any, rows: Any
) -> None:
    response = client.put(
        "/v1/models/iris/aliases/champion",
        json={"version": 3, "reason": "better f1"},
        headers={"X-Actor": "alice"},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "iris"
    assert body["alias"] == "champion"
    assert body["version"] == 3
    assert body["previous_version"] == 2
    assert body["moved"] is True
    # The token is the actor; the header is only a note of whom the caller acts for.
    assert (body["actor"], body["on_behalf_of"]) == ("test-admin", "alice")
    assert datetime.fromisoformat(body["moved_at"]).tzinfo is not None
    assert registry.models["iris"]["aliases"]["champion"] == 3
    assert registry.posted == [{"name": "iris", "alias": "champion", "version": "3"}]
    [row] = rows()
    assert row["id"] == body["audit_id"]
    assert (row["model_name"], row["alias"], row["from_version"], row["to_version"]) == (
        "iris",
        "champion",
        2,
        3,
    )
    assert (row["actor"], row["on_behalf_of"], row["reason"]) == (
        "test-admin",
        "alice",
        "better f1",
    )

    assert client.get("/v1/models/iris/aliases/champion").json()["version"] == 3


def test_new_alias_has_no_previous_version_and_the_token_is_the_actor(
    client: TestClient, registry: Any, rows: Any
) -> None:
    response = client.put("/v1/models/iris/aliases/staging", json={"version": "1"})

    assert response.status_code == 200
    assert response.json()["previous_version"] is None
    assert response.json()["actor"] == "test-admin"
    assert response.json()["on_behalf_of"] is None
    assert registry.models["iris"]["aliases"]["staging"] == 1
    assert rows()[0]["from_version"] is None


def test_move_to_current_version_is_a_noop(client: TestClient, registry: Any, rows: Any) -> None:
    response = client.put("/v1/models/iris/aliases/champion", json={"version": 2})

    assert response.status_code == 200
    body = response.json()
    assert (body["version"], body["previous_version"], body["moved"]) == (2, 2, False)
    assert body["audit_id"] is None
    assert registry.posted == []
    assert rows() == []


def test_move_to_unknown_version_is_404_on_version(
    client: TestClient, registry: Any, rows: Any
) -> None:
    response = client.put("/v1/models/iris/aliases/champion", json={"version": 42})

    assert response.status_code == 404
    assert error(response)["field"] == "version"
    assert "42" in error(response)["message"]
    assert registry.models["iris"]["aliases"]["champion"] == 2
    assert rows() == []


def test_move_on_unknown_model_is_404_on_name(client: TestClient, rows: Any) -> None:
    response = client.put("/v1/models/nope/aliases/champion", json={"version": 1})

    assert response.status_code == 404
    assert error(response)["field"] == "name"
    assert rows() == []


def test_move_to_version_not_ready_is_409(client: TestClient, registry: Any) -> None:
    registry.add_version("iris", download_uri="s3://b/k", status="PENDING_REGISTRATION")

    response = client.put("/v1/models/iris/aliases/champion", json={"version": 4})

    assert response.status_code == 409
    assert error(response)["field"] == "version"
    assert registry.posted == []


@pytest.mark.parametrize(
    "alias", ["latest", "LATEST", "v1", "V12", "1abc", "has space", "bad.dot", "a" * 65]
)
def test_invalid_or_reserved_alias_is_422_on_alias(
    client: TestClient, registry: Any, alias: str
) -> None:
    response = client.put(f"/v1/models/iris/aliases/{alias}", json={"version": 1})

    assert response.status_code == 422
    assert error(response)["field"] == "alias"
    assert registry.calls == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "version"),
        ({"version": "abc"}, "version"),
        ({"version": 0}, "version"),
        ({"version": 1.5}, "version"),
        ({"version": True}, "version"),
        ({"version": None}, "version"),
        ({"version": 1, "reason": 5}, "reason"),
        ({"version": 1, "verison": 2}, "verison"),
        ([1], "body"),
    ],
)
def test_bad_body_is_422_naming_the_field(
    client: TestClient, registry: Any, payload: Any, field: str
) -> None:
    response = client.put("/v1/models/iris/aliases/champion", json=payload)

    assert response.status_code == 422
    assert error(response)["code"] == "invalid_input"
    assert error(response)["field"] == field
    assert field in error(response)["message"]
    assert registry.posted == []


def test_malformed_json_is_422_on_body(client: TestClient) -> None:
    response = client.put(
        "/v1/models/iris/aliases/champion",
        content=b'{"version": 3',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422
    assert error(response)["field"] == "body"
    assert "malformed JSON" in error(response)["message"]


def test_missing_body_is_422(client: TestClient) -> None:
    response = client.put("/v1/models/iris/aliases/champion")

    assert response.status_code == 422
    assert error(response)["code"] == "invalid_input"


def test_overlong_actor_header_is_422(client: TestClient) -> None:
    response = client.put(
        "/v1/models/iris/aliases/champion", json={"version": 3}, headers={"X-Actor": "a" * 300}
    )

    assert response.status_code == 422
    assert error(response)["field"] == "X-Actor"


def test_failed_mlflow_write_leaves_no_audit_row(
    client: TestClient, registry: Any, rows: Any
) -> None:
    registry.fail_post_status = 500

    response = client.put("/v1/models/iris/aliases/champion", json={"version": 3})

    assert response.status_code == 503
    assert error(response)["code"] == "upstream_unavailable"
    assert response.headers["Retry-After"]
    assert rows() == []
    assert registry.models["iris"]["aliases"]["champion"] == 2


def test_history_is_newest_first_and_filtered_by_alias(client: TestClient) -> None:
    moves = [("champion", 3, "alice"), ("champion", 1, "bob"), ("challenger", 1, "carol")]
    for alias, version, actor in moves:
        response = client.put(
            f"/v1/models/iris/aliases/{alias}",
            json={"version": version, "reason": f"to {version}"},
            headers={"X-Actor": actor},
        )
        assert response.status_code == 200

    champion = client.get("/v1/models/iris/aliases/champion/history").json()
    assert champion["name"] == "iris"
    assert [
        (r["from_version"], r["to_version"], r["on_behalf_of"]) for r in champion["records"]
    ] == [(3, 1, "bob"), (2, 3, "alice")]
    assert {r["actor"] for r in champion["records"]} == {"test-admin"}
    assert champion["records"][0]["reason"] == "to 1"
    assert champion["records"][0]["moved_at"] >= champion["records"][1]["moved_at"]

    audit = client.get("/v1/models/iris/audit").json()
    assert [r["on_behalf_of"] for r in audit["records"]] == ["carol", "bob", "alice"]
    assert audit["records"][0]["alias"] == "challenger"

    limited = client.get("/v1/models/iris/audit", params={"limit": 1}).json()
    assert [r["on_behalf_of"] for r in limited["records"]] == ["carol"]

    assert client.get("/v1/models/other/audit").json() == {"name": "other", "records": []}


@pytest.mark.parametrize("limit", ["0", "501", "many"])
def test_history_limit_is_validated(client: TestClient, limit: str) -> None:
    response = client.get("/v1/models/iris/audit", params={"limit": limit})

    assert response.status_code == 422
    assert error(response)["field"] == "limit"
