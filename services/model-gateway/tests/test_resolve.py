from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient


def error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def test_resolve_direct_s3_uri_with_sklearn_signature(client: TestClient, registry: Any) -> None:
    response = client.get("/v1/models/iris/aliases/champion")

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "iris"
    assert body["alias"] == "champion"
    assert body["version"] == 2
    assert body["run_id"] == "run2"
    # Trailing slash from MLflow is dropped; s3:// is passed through otherwise unchanged.
    assert body["artifact_uri"] == "s3://models-bucket/direct/m-iris-2/artifacts"
    assert body["flavor"] == "sklearn"
    assert body["flavors"] == ["python_function", "sklearn"]
    assert body["signature"] == {
        "inputs": [
            {"type": "double", "name": "sepal length (cm)", "required": True},
            {"type": "double", "name": "petal width (cm)", "required": True},
        ],
        "outputs": [{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}],
        "params": None,
    }
    assert body["model_id"] == "m-iris-2"
    assert body["source"] == "models:/m-iris-2"
    assert body["created_at"].startswith("2025-11-24T")


def test_resolve_maps_mlflow_artifacts_uri_to_destination_bucket(
    client: TestClient, registry: Any, store: Any
) -> None:
    registry.models["iris"]["aliases"]["legacy"] = 1

    body = client.get("/v1/models/iris/aliases/legacy").json()

    assert body["version"] == 1
    assert body["artifact_uri"] == "s3://mlflow/1/models/m-iris-1/artifacts"
    assert store.reads == ["s3://mlflow/1/models/m-iris-1/artifacts/MLmodel"]


def test_resolve_pyfunc_only_model_without_signature(client: TestClient) -> None:
    body = client.get("/v1/models/iris/aliases/challenger").json()

    assert body["version"] == 3
    assert body["flavor"] == "python_function"
    assert body["flavors"] == ["python_function"]
    assert body["signature"] is None


def test_resolve_latest_names_newest_version(client: TestClient) -> None:
    assert client.get("/v1/models/iris/aliases/latest").json()["version"] == 3


def test_unknown_model_is_404_on_name(client: TestClient) -> None:
    response = client.get("/v1/models/nope/aliases/champion")

    assert response.status_code == 404
    assert error(response) == {
        "code": "not_found",
        "message": "registered model 'nope' not found",
        "field": "name",
    }


@pytest.mark.parametrize("mlflow_status", [400, 404])
def test_unset_alias_is_404_on_alias(client: TestClient, registry: Any, mlflow_status: int) -> None:
    registry.alias_missing_status = mlflow_status

    response = client.get("/v1/models/iris/aliases/staging")

    assert response.status_code == 404
    assert error(response)["field"] == "alias"
    assert error(response)["message"] == "alias 'staging' is not set on model 'iris'"


def test_latest_on_model_without_versions_is_404(client: TestClient) -> None:
    response = client.get("/v1/models/empty/aliases/latest")

    assert response.status_code == 404
    assert error(response)["field"] == "alias"


@pytest.mark.parametrize("alias", ["bad alias", "1st", "a.b", "x" * 65, "v2"])
def test_malformed_alias_is_422_without_calling_mlflow(
    client: TestClient, registry: Any, alias: str
) -> None:
    response = client.get(f"/v1/models/iris/aliases/{alias}")

    assert response.status_code == 422
    assert error(response)["field"] == "alias"
    assert registry.calls == []


def test_model_name_with_colon_is_422(client: TestClient) -> None:
    response = client.get("/v1/models/a:b/aliases/champion")

    assert response.status_code == 422
    assert error(response)["field"] == "name"


def test_mlmodel_part_is_cached_but_alias_is_resolved_each_time(
    client: TestClient, registry: Any, store: Any
) -> None:
    first = client.get("/v1/models/iris/aliases/champion").json()
    second = client.get("/v1/models/iris/aliases/champion").json()

    assert first == second
    assert registry.path_calls("/registered-models/alias") == 2
    assert registry.path_calls("/get-download-uri") == 1
    assert len(store.reads) == 1

    registry.models["iris"]["aliases"]["champion"] = 3
    assert client.get("/v1/models/iris/aliases/champion").json()["version"] == 3


def test_missing_mlmodel_is_502_naming_the_object(client: TestClient, store: Any) -> None:
    store.objects.clear()

    response = client.get("/v1/models/iris/aliases/champion")

    assert response.status_code == 502
    assert error(response)["code"] == "upstream_error"
    assert "s3://models-bucket/direct/m-iris-2/artifacts/MLmodel" in error(response)["message"]


def test_unsupported_artifact_scheme_is_502_naming_the_scheme(
    client: TestClient, registry: Any
) -> None:
    registry.models["iris"]["versions"][2]["_download_uri"] = "file:///var/mlruns/1/artifacts"

    response = client.get("/v1/models/iris/aliases/champion")

    assert response.status_code == 502
    assert "'file'" in error(response)["message"]
    assert error(response)["details"]["artifact_uri_scheme"] == "file"


def test_mlflow_unreachable_is_503_without_secrets(client: TestClient, registry: Any) -> None:
    registry.down = True

    response = client.get("/v1/models/iris/aliases/champion")

    assert response.status_code == 503
    assert error(response)["code"] == "upstream_unavailable"
    assert "MLflow" in error(response)["message"]
    assert "mlflow.test:5050" in error(response)["message"]
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text


def test_mlflow_5xx_is_503_without_its_message(client: TestClient, registry: Any) -> None:
    registry.fail_status = 500

    response = client.get("/v1/models/iris/aliases/champion")

    # Failing MLflow (its database down, say) is temporary: retry later.
    assert response.status_code == 503
    assert error(response)["details"]["upstream_status"] == 500
    assert "psycopg2" not in response.text


def test_behind_mlflow_basic_auth_a_missing_model_is_still_404(
    client: TestClient, registry: Any
) -> None:
    registry.basic_auth = True

    resolved = client.get("/v1/models/nope/aliases/champion")
    moved = client.put("/v1/models/nope/aliases/champion", json={"version": 1})

    assert resolved.status_code == 404 and resolved.json()["error"]["field"] == "name"
    assert moved.status_code == 404


def test_a_model_mlflow_refuses_the_gateway_is_a_502_not_a_404(
    client: TestClient, registry: Any
) -> None:
    registry.denied.add("iris")

    response = client.get("/v1/models/iris/aliases/champion")

    assert response.status_code == 502
    assert response.json()["error"]["details"]["upstream_status"] == 403
