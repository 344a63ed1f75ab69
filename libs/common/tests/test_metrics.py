from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlops_common.errors import NotFound, install_error_handlers
from mlops_common.metrics import LATENCY_BUCKETS, install_metrics
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from pydantic import BaseModel


class Item(BaseModel):
    count: int


def make_app(service: str = "svc") -> tuple[FastAPI, CollectorRegistry]:
    app = FastAPI()
    install_error_handlers(app)
    registry = install_metrics(app, service)

    @app.get("/items/{name}")
    def get_item(name: str) -> dict[str, str]:
        if name == "missing":
            raise NotFound(f"no item {name!r}", field="name")
        return {"name": name}

    @app.post("/items")
    def create_item(item: Item) -> dict[str, int]:
        return {"count": item.count}

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("bug")

    return app, registry


def requests(
    registry: CollectorRegistry, route: str, status: int, method: str = "GET", service: str = "svc"
) -> float:
    labels = {"service": service, "method": method, "route": route, "status": str(status)}
    return registry.get_sample_value("http_requests_total", labels) or 0.0


def route_labels(registry: CollectorRegistry) -> set[str]:
    return {
        sample.labels["route"]
        for metric in registry.collect()
        for sample in metric.samples
        if "route" in sample.labels
    }


def test_requests_are_counted_by_route_template_not_raw_path() -> None:
    app, registry = make_app()
    with TestClient(app) as client:
        assert client.get("/items/a").status_code == 200
        assert client.get("/items/b").status_code == 200

    assert requests(registry, "/items/{name}", 200) == 2
    assert "/items/a" not in route_labels(registry)


def test_status_label_records_errors_from_handlers_and_validation() -> None:
    app, registry = make_app()
    with TestClient(app) as client:
        assert client.get("/items/missing").status_code == 404
        assert client.post("/items", json={"count": "many"}).status_code == 422
        assert client.post("/items", json={"count": 3}).status_code == 200

    assert requests(registry, "/items/{name}", 404) == 1
    assert requests(registry, "/items", 422, method="POST") == 1
    assert requests(registry, "/items", 200, method="POST") == 1


def test_unhandled_exception_is_counted_as_500() -> None:
    app, registry = make_app()
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500

    assert requests(registry, "/boom", 500) == 1


def test_unmatched_paths_and_unknown_methods_share_bounded_labels() -> None:
    app, registry = make_app()
    with TestClient(app) as client:
        for n in range(5):
            assert client.get(f"/scan/{n}/wp-admin.php").status_code == 404
        # A known path with a method it does not serve is a partial match: 405 on its template.
        assert client.request("BREW", "/items/x").status_code == 405

    assert requests(registry, "unmatched", 404) == 5
    assert requests(registry, "/items/{name}", 405, method="OTHER") == 1
    assert route_labels(registry) == {"unmatched", "/items/{name}"}


def test_latency_histogram_is_observed_per_route() -> None:
    app, registry = make_app()
    with TestClient(app) as client:
        for _ in range(3):
            client.get("/items/a")

    labels = {"service": "svc", "method": "GET", "route": "/items/{name}"}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 3
    total = registry.get_sample_value("http_request_duration_seconds_sum", labels)
    assert total is not None and 0 < total < 10
    top = registry.get_sample_value(
        "http_request_duration_seconds_bucket", {**labels, "le": str(LATENCY_BUCKETS[-1])}
    )
    assert top == 3
    smallest = registry.get_sample_value(
        "http_request_duration_seconds_bucket", {**labels, "le": "0.0005"}
    )
    assert smallest is not None


def test_metrics_endpoint_serves_text_format_and_is_not_counted() -> None:
    app, registry = make_app()
    with TestClient(app) as client:
        client.get("/items/a")
        for _ in range(3):
            response = client.get("/metrics")
        schema = client.get("/openapi.json").json()

    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert (
        'http_requests_total{method="GET",route="/items/{name}",service="svc",status="200"} 1.0'
        in response.text
    )
    assert "/metrics" not in route_labels(registry)
    assert "/metrics" not in schema["paths"]


def test_two_apps_in_one_process_keep_separate_registries() -> None:
    app_a, registry_a = make_app("a")
    app_b, registry_b = make_app("b")
    with TestClient(app_a) as a, TestClient(app_b) as b:
        a.get("/items/x")
        a.get("/items/y")
        b.get("/items/x")
        metrics_b = b.get("/metrics").text

    assert registry_a is not registry_b
    assert requests(registry_a, "/items/{name}", 200, service="a") == 2
    assert requests(registry_b, "/items/{name}", 200, service="b") == 1
    assert 'service="a"' not in metrics_b


def test_services_register_their_own_metrics_on_the_returned_registry() -> None:
    app = FastAPI()
    registry = CollectorRegistry()
    assert install_metrics(app, "svc", registry) is registry
    jobs = Counter("jobs_total", "Jobs", registry=registry)
    jobs.inc(2)

    with TestClient(app) as client:
        body = client.get("/metrics").text

    assert "jobs_total 2.0" in body
