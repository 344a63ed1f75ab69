"""Rollouts as data in the gateway: validated, audited, published, promoted and aborted."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from .conftest import FakeMlflow
from .test_events import FakePublisher

SPLIT = {"variants": [{"alias": "champion", "weight": 90}, {"alias": "challenger", "weight": 10}]}


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def api(auth: dict[str, str], build_app: Any, engine: sa.Engine, publisher: FakePublisher) -> Any:
    with TestClient(build_app(engine=engine, publisher=publisher), headers=auth) as client:
        yield client


def test_without_a_rollout_every_request_goes_to_champion(api: TestClient) -> None:
    view = api.get("/v1/models/iris/rollout").json()
    assert view["active"] is False and view["revision"] == 0
    assert view["variants"] == [{"alias": "champion", "weight": 100, "version": 2}]


def test_a_rollout_is_stored_shown_with_versions_audited_and_published(
    api: TestClient, publisher: FakePublisher
) -> None:
    body = {
        **SPLIT,
        "sticky_header": "X-User-Id",
        "guard": {"max_error_rate": 0.01, "max_p99_ms": 50, "min_requests": 500},
        "reason": "canary v3",
    }
    response = api.put("/v1/models/iris/rollout", json=body, headers={"X-Actor": "alice"})
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["active"] and view["revision"] == 1
    assert [(v["alias"], v["weight"], v["version"]) for v in view["variants"]] == [
        ("champion", 90, 2),
        ("challenger", 10, 3),
    ]
    assert view["sticky_header"] == "X-User-Id" and view["guard"]["max_p99_ms"] == 50
    assert (view["actor"], view["on_behalf_of"], view["reason"]) == (
        "test-admin",
        "alice",
        "canary v3",
    )
    assert api.get("/v1/models/iris/rollout").json() == view
    assert publisher.events == [
        {"name": "iris", "type": "rollout", "action": "changed", "revision": 1}
    ]

    changed = api.put(
        "/v1/models/iris/rollout",
        json={
            "variants": [{"alias": "champion", "weight": 50}, {"alias": "challenger", "weight": 50}]
        },
    ).json()
    assert changed["revision"] == 2 and changed["started_at"] == view["started_at"]
    ended = api.delete("/v1/models/iris/rollout").json()
    assert ended["active"] is False and ended["revision"] == 3
    history = api.get("/v1/models/iris/rollout/history").json()["entries"]
    assert [(e["action"], e["revision"]) for e in history] == [
        ("ended", 3),
        ("changed", 2),
        ("started", 1),
    ]
    assert history[2]["spec"]["variants"] == SPLIT["variants"]
    assert [e["revision"] for e in publisher.events] == [1, 2, 3]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {
                "variants": [
                    {"alias": "champion", "weight": 90},
                    {"alias": "challenger", "weight": 20},
                ]
            },
            "variants",
            "sum to 110, not 100",
        ),
        (
            {
                "variants": [
                    {"alias": "champion", "weight": 90.5},
                    {"alias": "challenger", "weight": 9.5},
                ]
            },
            "variants.0.weight",
            "integer",
        ),
        (
            {
                "variants": [
                    {"alias": "champion", "weight": 50},
                    {"alias": "champion", "weight": 50},
                ]
            },
            "variants",
            "once",
        ),
        ({"variants": [{"alias": "champion", "weight": 100}], "mirror": "champion"}, "", "mirror"),
        ({"variants": [], "mirror": None}, "variants", "at least 1"),
        ({**SPLIT, "sticky_header": "X User"}, "sticky_header", "pattern"),
        ({**SPLIT, "guard": {"max_error_rate": 2}}, "guard.max_error_rate", "less than"),
        ({"variants": [{"alias": "latest ", "weight": 100}]}, "variants.0.alias", "invalid alias"),
    ],
)
def test_a_bad_split_is_a_422_naming_the_field(
    api: TestClient, body: dict[str, Any], field: str, message: str
) -> None:
    response = api.put("/v1/models/iris/rollout", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"].startswith(field) and message in error["message"]


def test_an_alias_that_does_not_resolve_is_a_422_and_nothing_changes(
    api: TestClient, publisher: FakePublisher
) -> None:
    body = {"variants": [{"alias": "champion", "weight": 90}, {"alias": "canary", "weight": 10}]}
    response = api.put("/v1/models/iris/rollout", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "variants[1].alias"
    mirrored = api.put("/v1/models/iris/rollout", json={**SPLIT, "mirror": "shadow"})
    assert mirrored.json()["error"]["field"] == "mirror"
    assert api.get("/v1/models/iris/rollout").json()["active"] is False
    assert publisher.events == []
    assert api.put("/v1/models/nope/rollout", json=SPLIT).status_code == 404


def test_promote_moves_champion_to_the_winner_and_ends_the_rollout(
    api: TestClient, registry: FakeMlflow
) -> None:
    assert api.put("/v1/models/iris/rollout", json=SPLIT).status_code == 200
    response = api.post("/v1/models/iris/rollout/promote", json={"reason": "p99 and f1 better"})
    assert response.status_code == 200, response.text
    promoted = response.json()
    assert promoted["move"]["version"] == 3 and promoted["move"]["previous_version"] == 2
    assert registry.models["iris"]["aliases"]["champion"] == 3
    assert promoted["rollout"]["active"] is False
    assert promoted["rollout"]["variants"] == [{"alias": "champion", "weight": 100, "version": 3}]
    history = api.get("/v1/models/iris/rollout/history").json()["entries"]
    assert history[0]["action"] == "promoted" and history[0]["reason"] == "p99 and f1 better"
    audit = api.get("/v1/models/iris/aliases/champion/history").json()["records"]
    assert audit[0]["to_version"] == 3 and audit[0]["reason"] == "p99 and f1 better"
    # Nothing left to promote or abort.
    assert api.post("/v1/models/iris/rollout/promote", json={}).status_code == 404
    assert api.post("/v1/models/iris/rollout/abort", json={}).status_code == 404


def test_promote_needs_a_named_winner_when_two_variants_weigh_the_same(
    api: TestClient, registry: FakeMlflow
) -> None:
    registry.models["iris"]["aliases"]["staging"] = 1
    body = {
        "variants": [
            {"alias": "champion", "weight": 50},
            {"alias": "challenger", "weight": 25},
            {"alias": "staging", "weight": 25},
        ]
    }
    assert api.put("/v1/models/iris/rollout", json=body).status_code == 200
    ambiguous = api.post("/v1/models/iris/rollout/promote", json={})
    assert ambiguous.status_code == 422 and ambiguous.json()["error"]["field"] == "alias"
    outsider = api.post("/v1/models/iris/rollout/promote", json={"alias": "nope"})
    assert outsider.status_code == 422
    named = api.post("/v1/models/iris/rollout/promote", json={"alias": "challenger"})
    assert named.status_code == 200 and named.json()["move"]["version"] == 3


def test_abort_ends_at_once_and_keeps_the_figures_that_tripped_the_guard(api: TestClient) -> None:
    assert api.put("/v1/models/iris/rollout", json=SPLIT).status_code == 200
    figures = {"error_rate": 0.12, "requests": 600.0, "p99_ms": 31.0}
    response = api.post(
        "/v1/models/iris/rollout/abort",
        json={"reason": "guard: error rate 0.12 > 0.01", "figures": figures},
    )
    assert response.status_code == 200 and response.json()["active"] is False
    entry = api.get("/v1/models/iris/rollout/history").json()["entries"][0]
    assert (entry["action"], entry["figures"]) == ("aborted", figures)


def test_rollouts_need_the_promote_scope_for_this_model(api: TestClient) -> None:
    created = api.post(
        "/v1/tokens", json={"name": "reader", "scopes": ["models:read"], "models": "iris"}
    ).json()
    reader = {"Authorization": f"Bearer {created['token']}"}
    assert api.get("/v1/models/iris/rollout", headers=reader).status_code == 200
    assert api.put("/v1/models/iris/rollout", json=SPLIT, headers=reader).status_code == 403
    assert api.delete("/v1/models/iris/rollout", headers=reader).status_code == 403
    assert api.post("/v1/models/iris/rollout/abort", json={}, headers=reader).status_code == 403


def _token(api: TestClient, name: str, scopes: list[str], models: str = "iris") -> dict[str, str]:
    response = api.post("/v1/tokens", json={"name": name, "scopes": scopes, "models": models})
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_the_abort_scope_ends_a_rollout_and_nothing_else(
    api: TestClient, registry: FakeMlflow, publisher: FakePublisher
) -> None:
    """Inference's own token: its guard may send every request back to champion, no more."""
    assert api.put("/v1/models/iris/rollout", json=SPLIT).status_code == 200
    guard = _token(api, "inference", ["models:read", "rollouts:abort"])

    refused = [
        api.put("/v1/models/iris/rollout", json=SPLIT, headers=guard),
        api.delete("/v1/models/iris/rollout", headers=guard),
        api.post("/v1/models/iris/rollout/promote", json={}, headers=guard),
        api.put("/v1/models/iris/aliases/champion", json={"version": 3}, headers=guard),
    ]
    for response in refused:
        assert response.status_code == 403, response.text
        assert "'models:promote'" in response.json()["error"]["message"]
        assert "rollouts:abort" not in response.json()["error"]["message"]
    assert registry.models["iris"]["aliases"]["champion"] == 2
    assert api.get("/v1/models/iris/rollout", headers=guard).json()["revision"] == 1

    figures = {"error_rate": 0.2, "requests": 500.0}
    aborted = api.post(
        "/v1/models/iris/rollout/abort",
        json={"reason": "guard: error rate 0.2 > 0.01", "figures": figures},
        headers=guard,
    )
    assert aborted.status_code == 200, aborted.text
    assert aborted.json()["active"] is False
    entry = api.get("/v1/models/iris/rollout/history").json()["entries"][0]
    assert (entry["action"], entry["actor"], entry["figures"]) == ("aborted", "inference", figures)
    assert registry.models["iris"]["aliases"]["champion"] == 2
    assert [e["revision"] for e in publisher.events] == [1, 2]


def test_the_abort_scope_alone_is_enough_to_abort(api: TestClient) -> None:
    assert api.put("/v1/models/iris/rollout", json=SPLIT).status_code == 200
    guard = _token(api, "abort-only", ["rollouts:abort"])
    response = api.post("/v1/models/iris/rollout/abort", json={}, headers=guard)
    assert response.status_code == 200, response.text


def test_abort_needs_promote_or_abort_for_this_model(api: TestClient) -> None:
    assert api.put("/v1/models/iris/rollout", json=SPLIT).status_code == 200
    neither = _token(api, "neither", ["models:read", "predict", "tokens:introspect"])
    elsewhere = _token(api, "churn-guard", ["models:read", "rollouts:abort"], models="churn*")

    lacking = api.post("/v1/models/iris/rollout/abort", json={}, headers=neither)
    assert lacking.status_code == 403
    error = lacking.json()["error"]
    assert "'models:promote' or 'rollouts:abort'" in error["message"]
    assert error["field"] == "Authorization"
    assert error["details"] == {"scopes": ["models:promote", "rollouts:abort"]}

    other_model = api.post("/v1/models/iris/rollout/abort", json={}, headers=elsewhere)
    assert other_model.status_code == 403
    assert "'iris'" in other_model.json()["error"]["message"]
    assert api.get("/v1/models/iris/rollout").json()["active"] is True


def test_the_promote_scope_still_aborts(api: TestClient) -> None:
    assert api.put("/v1/models/iris/rollout", json=SPLIT).status_code == 200
    promoter = _token(api, "promoter", ["models:promote"])
    response = api.post("/v1/models/iris/rollout/abort", json={}, headers=promoter)
    assert response.status_code == 200, response.text
