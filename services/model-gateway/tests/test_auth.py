"""Who may do what: tokens, scopes, model patterns, the token API and the audit actor."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from mlops_common.auth import TokenStore, api_tokens


@pytest.fixture
def tokens(engine: sa.Engine) -> TokenStore:
    return TokenStore(engine)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PROTECTED = [
    ("GET", "/v1/models/iris", None),
    ("GET", "/v1/models/iris/aliases/champion", None),
    ("PUT", "/v1/models/iris/aliases/champion", {"version": 3}),
    ("GET", "/v1/models/iris/aliases/champion/history", None),
    ("GET", "/v1/models/iris/audit", None),
    ("GET", "/v1/models/iris/versions/1/lineage", None),
    ("GET", "/v1/tokens", None),
    ("POST", "/v1/tokens", {"name": "x", "scopes": ["predict"]}),
    ("DELETE", "/v1/tokens/x", None),
    ("POST", "/v1/tokens/introspect", {"token": "mlops_x"}),
]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize(
    ("header", "invalid"),
    [
        (None, False),
        ("Basic dXNlcjpwYXNz", True),
        ("Bearer", True),
        ("Bearer mlops_" + "z" * 43, True),
        ("Bearer not-even-the-shape", True),
    ],
)
def test_every_endpoint_needs_a_valid_token(
    client: TestClient,
    registry: Any,
    rows: Any,
    method: str,
    path: str,
    body: Any,
    header: str | None,
    invalid: bool,
) -> None:
    del client.headers["Authorization"]
    headers = {"Authorization": header} if header else {}
    response = client.request(method, path, json=body, headers=headers)

    assert response.status_code == 401, response.text
    expected = 'Bearer error="invalid_token"' if invalid else "Bearer"
    assert response.headers["WWW-Authenticate"] == expected
    assert response.json()["error"]["field"] == "Authorization"
    assert registry.posted == [] and rows() == []


def test_health_metrics_and_docs_stay_open(client: TestClient) -> None:
    del client.headers["Authorization"]
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["token"]["scheme"] == "bearer"


def test_a_token_without_the_scope_is_403_naming_it_and_changes_nothing(
    client: TestClient, tokens: TokenStore, registry: Any, rows: Any
) -> None:
    secret, _ = tokens.create("reader", ["models:read"])

    read = client.get("/v1/models/iris/aliases/champion", headers=bearer(secret))
    move = client.put(
        "/v1/models/iris/aliases/champion", json={"version": 3}, headers=bearer(secret)
    )
    listing = client.get("/v1/tokens", headers=bearer(secret))

    assert read.status_code == 200
    assert move.status_code == 403
    assert "models:promote" in move.json()["error"]["message"]
    assert listing.status_code == 403 and "admin" in listing.json()["error"]["message"]
    assert registry.models["iris"]["aliases"]["champion"] == 2
    assert registry.posted == [] and rows() == []


def test_a_token_limited_to_a_model_glob_cannot_touch_other_models(
    client: TestClient, tokens: TokenStore, registry: Any
) -> None:
    registry.add_model("churn-eu")
    registry.add_version("churn-eu", download_uri="s3://mlflow/9/models/m/artifacts", run_id="r9")
    secret, _ = tokens.create("churn-promoter", ["models:read", "models:promote"], "churn*")

    own = client.put(
        "/v1/models/churn-eu/aliases/champion", json={"version": 1}, headers=bearer(secret)
    )
    other = client.put(
        "/v1/models/iris/aliases/champion", json={"version": 3}, headers=bearer(secret)
    )
    other_read = client.get("/v1/models/iris", headers=bearer(secret))

    assert own.status_code == 200
    assert other.status_code == 403
    assert "'iris'" in other.json()["error"]["message"]
    assert other_read.status_code == 403
    assert registry.models["iris"]["aliases"]["champion"] == 2


def test_the_audit_names_the_token_even_under_a_forged_actor(
    client: TestClient, tokens: TokenStore, rows: Any
) -> None:
    secret, _ = tokens.create("ci-bot", ["models:promote"])

    response = client.put(
        "/v1/models/iris/aliases/champion",
        json={"version": 3},
        headers={**bearer(secret), "X-Actor": "admin"},
    )

    assert response.status_code == 200
    [row] = rows()
    assert (row["actor"], row["on_behalf_of"]) == ("ci-bot", "admin")


def test_expired_and_revoked_tokens_are_refused(
    client: TestClient, tokens: TokenStore, engine: sa.Engine
) -> None:
    expired, _ = tokens.create("old", ["models:read"], expires_in=timedelta(days=1))
    with engine.begin() as conn:
        conn.execute(
            api_tokens.update()
            .where(api_tokens.c.name == "old")
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    revoked, _ = tokens.create("gone", ["models:read"])
    assert client.get("/v1/models/iris", headers=bearer(revoked)).status_code == 200

    assert client.delete("/v1/tokens/gone").status_code == 200

    for secret in (expired, revoked):
        response = client.get("/v1/models/iris", headers=bearer(secret))
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_the_token_api_shows_a_secret_once_and_never_again(
    client: TestClient, engine: sa.Engine
) -> None:
    created = client.post(
        "/v1/tokens",
        json={"name": "churn-team", "scopes": ["predict", "train"], "models": "churn*"},
    )
    assert created.status_code == 201
    secret = created.json()["token"]
    assert secret.startswith("mlops_") and len(secret) >= 49

    listing = client.get("/v1/tokens")
    assert secret not in listing.text
    [entry] = [t for t in listing.json()["tokens"] if t["name"] == "churn-team"]
    assert (entry["scopes"], entry["models"], entry["active"]) == (
        ["predict", "train"],
        "churn*",
        True,
    )
    with engine.connect() as conn:
        stored = conn.execute(sa.select(api_tokens.c.token_sha256)).scalars().all()
    assert secret not in stored

    assert (
        client.post("/v1/tokens", json={"name": "churn-team", "scopes": ["predict"]}).status_code
        == 409
    )
    revoked = client.delete("/v1/tokens/churn-team")
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    assert client.delete("/v1/tokens/nobody").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "bad name!", "scopes": ["predict"]}, "name"),
        ({"name": "x", "scopes": ["predict"], "models": "a b"}, "models"),
        ({"name": "x", "scopes": ["predict"], "expires_in": "forever"}, "expires_in"),
    ],
)
def test_bad_token_requests_are_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/tokens", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_introspection_needs_its_scope_and_says_little_about_bad_tokens(
    client: TestClient, tokens: TokenStore
) -> None:
    inspector, _ = tokens.create("inference", ["tokens:introspect"])
    user, _ = tokens.create("user", ["predict"], "demo")

    good = client.post("/v1/tokens/introspect", json={"token": user}, headers=bearer(inspector))
    bad = client.post(
        "/v1/tokens/introspect", json={"token": "mlops_" + "q" * 43}, headers=bearer(inspector)
    )
    refused = client.post("/v1/tokens/introspect", json={"token": user}, headers=bearer(user))

    assert good.json() | {"expires_at": None} == {
        "active": True,
        "name": "user",
        "scopes": ["predict"],
        "models": "demo",
        "expires_at": None,
    }
    assert bad.json() == {
        "active": False,
        "name": None,
        "scopes": [],
        "models": None,
        "expires_at": None,
    }
    assert refused.status_code == 403


def test_an_admin_limited_to_some_models_hands_out_nothing_wider(
    client: TestClient, tokens: TokenStore
) -> None:
    """Else a model-limited admin could mint itself an unlimited one."""
    secret, _ = tokens.create("churn-admin", ["admin"], "churn*")
    tokens.create("fraud-team", ["predict"], "fraud*")
    limited = bearer(secret)

    for models in ("*", "c*", "fraud", "churn*x*"):
        refused = client.post(
            "/v1/tokens", json={"name": "wide", "scopes": ["admin"], "models": models},
            headers=limited,
        )  # fmt: skip
        assert refused.status_code == 403, models
        assert refused.json()["error"]["field"] == "models"
    for models in ("churn*", "churn-eu"):
        made = client.post(
            "/v1/tokens", json={"name": f"ok-{models.strip('*')}", "scopes": ["predict"],
                                "models": models},
            headers=limited,
        )  # fmt: skip
        assert made.status_code == 201, made.text

    listed = {t["name"] for t in client.get("/v1/tokens", headers=limited).json()["tokens"]}
    assert "fraud-team" not in listed and "ok-churn-eu" in listed
    assert client.delete("/v1/tokens/fraud-team", headers=limited).status_code == 404
    assert [t.active for t in tokens.list() if t.name == "fraud-team"] == [True]
    assert client.delete("/v1/tokens/ok-churn-eu", headers=limited).status_code == 200
