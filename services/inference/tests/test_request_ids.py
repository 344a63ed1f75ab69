"""Request ids on every scoring answer, and the instance's identity on every alias resolve."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from inference.gateway import GatewayClient
from inference.request_ids import PATTERN
from mlops_common.http import make_async_client

pytestmark = pytest.mark.anyio

SAFE = re.compile(PATTERN)
MIXED_V2 = (
    ("age", "FP64"),
    ("income", "FP64"),
    ("visits", "INT64"),
    ("city", "BYTES"),
    ("plan", "BYTES"),
)


def v2_inputs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"name": name, "datatype": kind, "shape": [len(rows)], "data": [r[name] for r in rows]}
        for name, kind in MIXED_V2
    ]


async def test_predict_answers_carry_a_new_id_in_header_and_body(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    body = {"instances": to_rows(artifacts.frames["mixed"].iloc[:1])}
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        assert await svc.manager.poll_once()
        first = await svc.post_json("/predict", body)
        second = await svc.post_json("/predict", body)
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(SAFE.fullmatch(rid) for rid in ids), ids
    assert ids[0] != ids[1]
    assert [first.json()["request_id"], second.json()["request_id"]] == ids


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("order-42.retry_1", True),
        ("A" * 64, True),
        ("A" * 65, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
        ("é", False),
    ],
)
async def test_a_client_id_is_kept_only_when_short_and_safe(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any, sent: str, kept: bool
) -> None:
    body = {"instances": to_rows(artifacts.frames["mixed"].iloc[:1])}
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        assert await svc.manager.poll_once()
        response = await svc.client.post(
            "/predict", json=body, headers={"X-Request-Id": sent.encode()}
        )
    assert response.status_code == 200, response.text
    rid = response.headers["x-request-id"]
    assert (rid == sent) is kept
    assert SAFE.fullmatch(rid)
    assert response.json()["request_id"] == rid


async def test_errors_carry_the_request_id_too(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        before_model = await svc.post_json("/predict", {"instances": [{}]})
        assert await svc.manager.poll_once()
        invalid = await svc.client.post(
            "/predict", json={"instances": "no"}, headers={"X-Request-Id": "mine-1"}
        )
        unknown_token = await svc.client.post(
            "/predict",
            json={"instances": []},
            headers={"Authorization": "Bearer " + "mlops_" + "x" * 43, "X-Request-Id": "mine-2"},
        )
        v2_wrong_model = await svc.post_json("/v2/models/nope/infer", {"inputs": []})
    assert before_model.status_code == 503
    assert SAFE.fullmatch(before_model.headers["x-request-id"])
    assert (invalid.status_code, invalid.headers["x-request-id"]) == (422, "mine-1")
    assert (unknown_token.status_code, unknown_token.headers["x-request-id"]) == (401, "mine-2")
    assert v2_wrong_model.status_code == 422
    assert SAFE.fullmatch(v2_wrong_model.headers["x-request-id"])


async def test_v2_echoes_the_client_id_and_sends_ours_in_the_header(
    service: Any, gateway: Any, artifacts: Any, to_rows: Any
) -> None:
    rows = to_rows(artifacts.frames["mixed"].iloc[:2])
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        assert await svc.manager.poll_once()
        url = "/v2/models/mixed/infer"
        with_id = await svc.post_json(url, {"id": "client 7", "inputs": v2_inputs(rows)})
        without_id = await svc.post_json(url, {"inputs": v2_inputs(rows)})
        both = await svc.client.post(
            url,
            json={"id": "client 8", "inputs": v2_inputs(rows)},
            headers={"X-Request-Id": "trace-8"},
        )
        not_found = await svc.post_json("/v2/models/other/infer", {"inputs": v2_inputs(rows)})
    assert with_id.status_code == 200, with_id.text
    assert with_id.json()["id"] == "client 7"
    assert SAFE.fullmatch(with_id.headers["x-request-id"])
    assert without_id.json()["id"] == without_id.headers["x-request-id"]
    assert (both.json()["id"], both.headers["x-request-id"]) == ("client 8", "trace-8")
    assert not_found.status_code == 404
    assert SAFE.fullmatch(not_found.headers["x-request-id"])


# ---- the instance's identity at the gateway -------------------------------------------------------
async def test_alias_resolves_name_the_instance_and_the_version_it_serves(
    service: Any, gateway: Any
) -> None:
    gateway.set_alias("mixed", 1)
    async with service("mixed") as svc:
        assert await svc.manager.poll_once()
        await svc.manager.poll_once()
    first, second = gateway.resolve_headers[:2]
    assert first["x-inference-instance"] == "inference-test:8800"
    assert first["x-served-version"] == ""
    assert second["x-inference-instance"] == "inference-test:8800"
    assert second["x-served-version"] == "1"


async def test_a_gateway_client_without_an_instance_sends_only_the_version(gateway: Any) -> None:
    gateway.set_alias("mixed", 1)
    transport = httpx.MockTransport(gateway.handler)
    async with make_async_client("http://gateway.test", transport=transport, retries=0) as client:
        await GatewayClient(client).resolve("mixed", "champion", served_version=3)
    [headers] = gateway.resolve_headers
    assert "x-inference-instance" not in headers
    assert headers["x-served-version"] == "3"
