from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient


def test_health_ok(client: TestClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "mlflow": "ok", "database": "ok"}


def test_health_503_when_mlflow_down(client: TestClient, registry: Any) -> None:
    registry.down = True

    response = client.get("/health")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "mlflow": "error", "database": "ok"}


def test_health_503_when_mlflow_errors(client: TestClient, registry: Any) -> None:
    registry.fail_status = 503

    assert client.get("/health").json()["mlflow"] == "error"


def test_health_503_when_database_down(
    auth: dict[str, str], build_app: Any, tmp_path: Path
) -> None:
    broken = sa.create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")

    with TestClient(build_app(engine=broken), headers=auth) as client:
        response = client.get("/health")
        history = client.get("/v1/models/iris/audit")

    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "mlflow": "ok", "database": "error"}
    # Other database failures are a 503 with the JSON error body, not a 500.
    assert history.status_code == 503
    assert history.json()["error"]["code"] == "unavailable"


def test_openapi_is_served_with_service_title(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()

    assert spec["info"]["title"] == "model-gateway"
    # The package's own version, so a client can tell which gateway it talks to.
    assert spec["info"]["version"] == version("model-gateway")
    assert "/v1/models/{name}/aliases/{alias}" in spec["paths"]
    assert client.get("/docs").status_code == 200
