"""Callers need a token with `predict` for the served model; probes and scrapers do not."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from .conftest import CALLER_TOKEN

pytestmark = pytest.mark.anyio

ROW = {"instances": [{"x": 1.0}]}
PROTECTED = [
    ("POST", "/predict", ROW),
    ("GET", "/model-info", None),
    ("GET", "/v2", None),
    ("GET", "/v2/models/churn", None),
    ("GET", "/v2/models/churn/versions/1", None),
    ("GET", "/v2/models/churn/ready", None),
    ("POST", "/v2/models/churn/infer", {"inputs": []}),
    ("POST", "/v2/models/churn/versions/1/infer", {"inputs": []}),
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("header", [None, "Bearer", "Basic Zm9vOmJhcg==", "Bearer mlops_nope"])
async def test_serving_endpoints_need_a_valid_token(
    service: Any, gateway: Any, method: str, path: str, body: Any, header: str | None
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        del svc.client.headers["Authorization"]
        headers = {"Authorization": header} if header else {}
        response = await svc.client.request(method, path, json=body, headers=headers)

    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_probes_and_metrics_stay_open(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        del svc.client.headers["Authorization"]
        for path in ("/health", "/v2/health/live", "/v2/health/ready", "/metrics"):
            assert (await svc.client.get(path)).status_code == 200, path


@pytest.mark.parametrize(
    ("answer", "needed"),
    [
        ({"active": True, "name": "ops", "scopes": ["models:read"], "models": "*"}, "'predict'"),
        ({"active": True, "name": "fraud", "scopes": ["predict"], "models": "fraud*"}, "'churn'"),
    ],
)
async def test_a_token_without_predict_for_this_model_is_403(
    service: Any, gateway: Any, answer: dict[str, Any], needed: str
) -> None:
    token = "mlops_" + "o" * 43
    gateway.tokens[token] = answer
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.client.post("/predict", json=ROW, headers=bearer(token))
        info = await svc.client.get("/model-info", headers=bearer(token))

    assert response.status_code == 403 and needed in response.json()["error"]["message"]
    assert info.status_code == 403


async def test_a_checked_token_is_remembered_not_asked_per_request(
    service: Any, gateway: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        for _ in range(20):
            assert (await svc.client.get("/model-info")).status_code == 200

    assert gateway.introspections == 1


async def test_an_unauthenticated_body_is_refused_before_it_is_read(
    service: Any, gateway: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service(max_body_bytes=1024) as svc:
        await svc.manager.poll_once()
        del svc.client.headers["Authorization"]
        big = b"[" + b"1," * 4096 + b"1]"
        v2 = await svc.client.post("/v2/models/churn/infer", content=big)
        predict = await svc.client.post("/predict", content=big)

    # 401, not 413: the size check would mean the body was being read.
    assert (v2.status_code, predict.status_code) == (401, 401)


async def test_a_new_token_while_the_gateway_is_down_is_503_not_a_verdict(
    service: Any, gateway: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        gateway.fail_with = 503
        response = await svc.client.get("/model-info")

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"


async def test_auth_off_is_explicit_and_warned_about(
    service: Any, gateway: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gateway.set_alias("churn", 1)
    with caplog.at_level(logging.WARNING, logger="inference.app"):
        async with service(auth_enabled=False) as svc:
            await svc.manager.poll_once()
            del svc.client.headers["Authorization"]
            response = await svc.client.get("/model-info")

    assert response.status_code == 200
    assert "INFERENCE_AUTH_ENABLED is false" in caplog.text
    assert gateway.introspections == 0
    assert CALLER_TOKEN not in caplog.text


async def test_a_dropped_connection_to_the_gateway_is_retried_not_a_503(
    service: Any, gateway: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        gateway.dropped_introspections = 2
        response = await svc.client.get("/model-info")

    assert response.status_code == 200
    assert gateway.introspections == 3


async def test_callers_seen_lately_are_served_while_the_gateway_is_down_even_after_a_restart(
    service: Any, gateway: Any
) -> None:
    stranger = "mlops_" + "s" * 43
    gateway.tokens[stranger] = {"active": True, "name": "s", "scopes": ["predict"], "models": "*"}
    gateway.set_alias("churn", 1)
    # A TTL this short expires between two requests: every request after it asks the gateway.
    async with service(token_cache_ttl_s=0.001) as svc:
        await svc.manager.poll_once()
        assert (await svc.client.get("/model-info")).status_code == 200
        gateway.fail_with = 503
        await asyncio.sleep(0.01)  # past the TTL, not a readiness wait
        during = await svc.client.get("/model-info")
    async with service(token_cache_ttl_s=0.001) as restarted:
        # A new process on the same cache folder; its model comes from the manager as before.
        gateway.fail_with = None
        await restarted.manager.poll_once()
        gateway.fail_with = 503
        after_restart = await restarted.client.get("/model-info")
        never_seen = await restarted.client.get("/model-info", headers=bearer(stranger))
    async with service(token_cache_ttl_s=0.001, token_stale_grace_s=0) as strict:
        gateway.fail_with = None
        await strict.manager.poll_once()
        gateway.fail_with = 503
        without_grace = await strict.client.get("/model-info")

    assert (during.status_code, after_restart.status_code) == (200, 200)
    assert never_seen.status_code == 503
    assert without_grace.status_code == 503
