from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_count_alias_moves_per_model_and_alias(client: TestClient) -> None:
    client.put("/v1/models/iris/aliases/champion", json={"version": 3})
    client.put("/v1/models/iris/aliases/champion", json={"version": 1})
    client.put("/v1/models/iris/aliases/champion", json={"version": 1})  # no-op
    client.put("/v1/models/iris/aliases/staging", json={"version": 1})

    samples = scrape(client)
    moves = "gateway_alias_moves_total"
    assert value(samples, moves, model="iris", alias="champion") == 2
    assert value(samples, moves, model="iris", alias="staging") == 1
    assert value(samples, "gateway_alias_events_failed_total") == 0


def test_metrics_expose_gateway_http_requests_by_route(client: TestClient) -> None:
    assert client.get("/v1/models/iris/aliases/champion").status_code == 200
    assert client.get("/v1/models/nope/aliases/champion").status_code == 404

    samples = scrape(client)
    route = "/v1/models/{name}/aliases/{alias}"
    common = {"service": "model-gateway", "method": "GET", "route": route}
    assert value(samples, "http_requests_total", **common, status="200") == 1
    assert value(samples, "http_requests_total", **common, status="404") == 1
    assert value(samples, "http_request_duration_seconds_count", **common) == 2
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
