"""Body size limits and hostile input on every gateway route: 4xx naming the field, never 500."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlops_common.errors import Unprocessable
from mlops_common.names import (
    MODEL_NAME_PATTERN,
    READABLE_ALIAS_PATTERN,
    SETTABLE_ALIAS_PATTERN,
)
from model_gateway.handlers import validate_alias, validate_model_name

from .conftest import AUTH


def error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


@pytest.fixture
def small_client(build_app: Any, engine: Any) -> Iterator[TestClient]:
    with TestClient(build_app(engine=engine, max_body_bytes=1024), headers=AUTH) as client:
        yield client


# -- body size -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("PUT", "/v1/models/iris/aliases/champion"),
        ("POST", "/v1/tokens"),
        ("POST", "/v1/tokens/introspect"),
    ],
)
def test_a_declared_body_over_the_limit_is_413_naming_body(
    small_client: TestClient, registry: Any, method: str, url: str
) -> None:
    body = json.dumps({"version": 1, "reason": "r" * 2000}).encode()
    response = small_client.request(
        method, url, content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert error(response)["field"] == "body"
    assert "GATEWAY_MAX_BODY_BYTES" in error(response)["message"]
    assert registry.calls == []


def test_a_chunked_body_is_cut_off_at_the_limit(small_client: TestClient, rows: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"version": 1, "reason": "'
        for _ in range(10):
            yield b"r" * 200
        yield b'"}'

    response = small_client.put(
        "/v1/models/iris/aliases/champion",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert error(response)["field"] == "body"
    assert rows() == []


def test_a_chunked_body_under_the_limit_is_served(small_client: TestClient) -> None:
    response = small_client.put(
        "/v1/models/iris/aliases/champion",
        content=iter([b'{"version":', b" 1}"]),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200, response.text


def test_413s_are_counted_in_the_metrics(small_client: TestClient) -> None:
    small_client.post("/v1/tokens", content=b"x" * 2048)
    assert 'status="413"' in small_client.get("/metrics").text


# -- invalid text in paths and queries -----------------------------------------------------------

BAD_NAMES = ["%00", "a%00b", "a%0Ab", "%1B", "%7F", "%C2%85", "%20%20"]


def _name_routes(name: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/models/{name}"),
        ("GET", f"/v1/models/{name}/aliases/champion"),
        ("PUT", f"/v1/models/{name}/aliases/champion"),
        ("GET", f"/v1/models/{name}/aliases/champion/history"),
        ("GET", f"/v1/models/{name}/audit"),
        ("GET", f"/v1/models/{name}/versions/1/lineage"),
    ]


def _alias_routes(alias: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/v1/models/iris/aliases/{alias}"),
        ("PUT", f"/v1/models/iris/aliases/{alias}"),
        ("GET", f"/v1/models/iris/aliases/{alias}/history"),
    ]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_model_names_are_422_on_name_for_every_route(
    client: TestClient, registry: Any, rows: Any, name: str
) -> None:
    for method, url in _name_routes(name):
        response = client.request(method, url, json={"version": 1} if method == "PUT" else None)
        assert response.status_code == 422, (url, response.text)
        assert error(response)["field"] == "name", (url, response.text)
    assert registry.calls == []
    assert rows() == []


@pytest.mark.parametrize("alias", ["%00", "a%00", "a%0A", "%FF", "a" * 65])
def test_invalid_aliases_are_422_on_alias_for_every_route(
    client: TestClient, registry: Any, alias: str
) -> None:
    for method, url in _alias_routes(alias):
        response = client.request(method, url, json={"version": 1} if method == "PUT" else None)
        assert response.status_code == 422, (url, response.text)
        assert error(response)["field"] == "alias", (url, response.text)
    assert registry.calls == []


@pytest.mark.parametrize("token_name", ["%00", "a%00b", "a%0A", "%FF", "a" * 65])
def test_invalid_token_names_are_422(client: TestClient, token_name: str) -> None:
    response = client.delete(f"/v1/tokens/{token_name}")
    assert response.status_code == 422
    assert error(response)["field"] == "token_name"


@pytest.mark.parametrize("limit", ["%00", "0", "501", "99999999999999999999999", "1.5", "-1"])
def test_invalid_limits_are_422(client: TestClient, limit: str) -> None:
    for url in ("/v1/models/iris/audit", "/v1/models/iris/aliases/champion/history"):
        response = client.get(f"{url}?limit={limit}")
        assert response.status_code == 422
        assert error(response)["field"] == "limit"


@pytest.mark.parametrize(
    "url", ["/health?x=%00", "/metrics?x=%00", "/v1/tokens?x=%00", "/%00", "/v1/models/"]
)
def test_other_routes_never_fail_on_invalid_text(client: TestClient, url: str) -> None:
    assert client.get(url).status_code < 500


# -- invalid text in bodies ------------------------------------------------------------------

BAD_TEXT = ["\x00", "a\x00b", "\ud800", "\x1b[31m", "\x85"]


def _post(client: TestClient, method: str, url: str, body: Any) -> Any:
    # json.dumps escapes lone surrogates as \ud800, which is what a hostile client sends.
    return client.request(
        method, url, content=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )


@pytest.mark.parametrize("bad", BAD_TEXT)
def test_invalid_text_in_a_body_is_422_naming_the_field(
    client: TestClient, rows: Any, bad: str
) -> None:
    cases = [
        ("PUT", "/v1/models/iris/aliases/champion", {"version": 1, "reason": bad}, "reason"),
        ("PUT", "/v1/models/iris/aliases/champion", {"version": bad}, "version"),
        ("POST", "/v1/tokens", {"name": bad, "scopes": ["train"]}, "name"),
        ("POST", "/v1/tokens", {"name": f"x{bad}", "scopes": ["train"]}, "name"),
        ("POST", "/v1/tokens", {"name": "x", "scopes": [bad]}, "scopes"),
        ("POST", "/v1/tokens", {"name": "x", "scopes": ["train"], "models": bad}, "models"),
        ("POST", "/v1/tokens", {"name": "x", "scopes": ["train"], "expires_in": bad}, "expires_in"),
    ]
    for method, url, body, field in cases:
        response = _post(client, method, url, body)
        assert response.status_code == 422, (body, response.text)
        assert error(response)["field"].split(".")[0] == field, (body, response.text)
    assert rows() == []
    assert [t["name"] for t in client.get("/v1/tokens").json()["tokens"]] == ["test-admin"]


def test_a_trailing_newline_no_longer_slips_into_a_token_name(client: TestClient) -> None:
    response = client.post("/v1/tokens", json={"name": "abc\n", "scopes": ["train"]})
    assert response.status_code == 422
    assert error(response)["field"] == "name"


@pytest.mark.parametrize("token", ["\x00", "mlops_\x00", "\x1b", "é"])
def test_introspecting_a_malformed_token_says_inactive(client: TestClient, token: str) -> None:
    # RFC 7662, and inference reads any other answer as the gateway failing.
    response = _post(client, "POST", "/v1/tokens/introspect", {"token": token})
    assert response.status_code == 200
    assert response.json()["active"] is False


def test_tabs_and_line_breaks_stay_allowed_in_a_reason(client: TestClient, rows: Any) -> None:
    response = client.put(
        "/v1/models/iris/aliases/champion", json={"version": 1, "reason": "a\tb\r\nc"}
    )
    assert response.status_code == 200
    assert rows()[0]["reason"] == "a\tb\r\nc"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"version": 1, "reason": "\xed\xa0\x80"}',
        b'{"version": 1, "reason": "\xc0\xaf"}',
        b'{"version": NaN}',
        b'{"version": Infinity}',
        b'{"version": 1e400}',
        b'{"version": 1, "\\ud800": 1}',
    ],
)
def test_invalid_bytes_and_numbers_are_4xx(client: TestClient, raw: bytes) -> None:
    response = client.put(
        "/v1/models/iris/aliases/champion",
        content=raw,
        headers={"content-type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text


# -- the schema documents the rules the handler applies ---------------------------------------------


def _accepts(check: Any, value: str) -> bool:
    try:
        check(value)
    except Unprocessable:
        return False
    return True


NAMES = ["iris", "a b", "it's", "é", "x" * 256, "x" * 257, "a:b", "a/b", "", " ", "\t", "a\x00"]
NAMES += ["a\x85", "a\n", " a "]


@pytest.mark.parametrize("name", NAMES)
def test_the_documented_model_name_pattern_agrees_with_the_check(name: str) -> None:
    documented = bool(re.fullmatch(MODEL_NAME_PATTERN, name)) and len(name) <= 256
    assert _accepts(validate_model_name, name) == documented


ALIASES = ["champion", "latest", "LATEST", "Latest", "v1", "V12", "v", "vx", "1a", "a.b", "a" * 65]


@pytest.mark.parametrize("alias", ALIASES)
def test_the_documented_alias_patterns_agree_with_the_check(alias: str) -> None:
    for pattern, for_write in ((READABLE_ALIAS_PATTERN, False), (SETTABLE_ALIAS_PATTERN, True)):
        accepted = _accepts(lambda a, w=for_write: validate_alias(a, for_write=w), alias)
        assert accepted == bool(re.fullmatch(pattern, alias)), (alias, for_write)


def test_the_openapi_schema_documents_the_constraints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    params = {
        p["name"]: p["schema"]
        for p in spec["paths"]["/v1/models/{name}/aliases/{alias}"]["put"]["parameters"]
    }
    assert params["name"]["pattern"] == MODEL_NAME_PATTERN
    assert params["alias"]["pattern"] == SETTABLE_ALIAS_PATTERN
    read = spec["paths"]["/v1/models/{name}/aliases/{alias}"]["get"]["parameters"]
    assert {p["name"]: p["schema"] for p in read}["alias"]["pattern"] == READABLE_ALIAS_PATTERN
    token = spec["components"]["schemas"]["CreateTokenRequest"]["properties"]
    assert token["name"]["pattern"] and token["models"]["pattern"]
    assert token["scopes"]["items"]["enum"]
    reason = spec["components"]["schemas"]["MoveAliasRequest"]["properties"]["reason"]
    assert reason["anyOf"][0]["pattern"]
