"""Alias moves while requests keep coming: every request succeeds, on the old or the new model."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

ROWS = [
    {"age": 30.0, "income": 42000.0, "visits": 3, "city": "lyon", "plan": "pro", "member": True}
]


async def test_repeated_swaps_under_load_fail_no_request(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        assert await svc.manager.poll_once()
        statuses: list[int] = []
        versions: set[int] = set()
        stop = asyncio.Event()
        answered = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                response = await svc.post_json("/predict", {"instances": ROWS})
                statuses.append(response.status_code)
                answered.set()
                if response.status_code == 200:
                    versions.add(response.json()["model"]["version"])

        clients = [asyncio.create_task(client()) for _ in range(8)]
        for target in (2, 1, 2, 1):
            gateway.set_alias("churn", target)
            assert await svc.manager.poll_once()
            served_before = len(statuses)
            while len(statuses) < served_before + 20:  # requests keep flowing between swaps
                answered.clear()
                await answered.wait()
        stop.set()
        await asyncio.gather(*clients)

    assert statuses and set(statuses) == {200}
    assert versions == {1, 2}


async def test_a_version_that_fails_its_check_is_not_swapped_in(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        gateway.set_alias("churn", 3)  # its model file is garbage
        assert not await svc.manager.poll_once()
        response = await svc.post_json("/predict", {"instances": ROWS})
        health = (await svc.client.get("/health")).json()
        metrics = (await svc.client.get("/metrics")).text
    assert response.status_code == 200 and response.json()["model"]["version"] == 1
    assert health["status"] == "ok" and "version 3" in health["last_error"]
    assert 'inference_model_events_total{event="load_failed"} 1.0' in metrics
    assert 'inference_model_version{alias="champion",model="churn"} 1.0' in metrics


async def test_overload_answers_503_with_retry_after(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 2)  # the forest: batched
    async with service(batching="on", max_queued_requests=1, batch_max_wait_ms=50) as svc:
        await svc.manager.poll_once()
        responses = await asyncio.gather(
            *(svc.post_json("/predict", {"instances": ROWS}) for _ in range(12))
        )
        metrics = (await svc.client.get("/metrics")).text
    codes = [r.status_code for r in responses]
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "capacity" in refused.json()["error"]["message"]
    assert "inference_overload_rejections_total" in metrics
