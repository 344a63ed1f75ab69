from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient


def test_describe_model_lists_versions_with_aliases_and_metrics(
    client: TestClient, registry: Any
) -> None:
    response = client.get("/v1/models/iris")

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "iris"
    assert body["description"] == "Iris classifier"
    assert body["aliases"] == {"challenger": 3, "champion": 2}
    assert [v["version"] for v in body["versions"]] == [3, 2, 1]
    v3, v2, v1 = body["versions"]
    assert v2["aliases"] == ["champion"]
    assert v3["aliases"] == ["challenger"]
    assert v1["aliases"] == []
    # MLflow sends NaN as a string; JSON has no NaN, so it becomes null.
    assert v2["metrics"] == {"accuracy": 0.95, "f1": None}
    assert v2["params"] == {"C": "0.5", "max_iter": "200"}
    assert v1["metrics"] == {"accuracy": 0.90, "f1": 0.88}
    # run3 no longer exists: the version is listed without metrics rather than failing.
    assert (v3["run_id"], v3["metrics"], v3["params"]) == ("run3", {}, {})
    assert v2["status"] == "READY"
    assert v2["source"] == "models:/m-iris-2"
    assert v2["model_id"] == "m-iris-2"
    assert v2["created_at"].startswith("2025-11-24T")
    # Three versions with a page size of two: the second page was fetched.
    assert registry.path_calls("/model-versions/search") == 2
    assert registry.path_calls("/runs/get") == 3


def test_describe_model_without_versions(client: TestClient) -> None:
    body = client.get("/v1/models/empty").json()

    assert body == {"name": "empty", "description": None, "aliases": {}, "versions": []}


def test_describe_model_name_with_quote_is_searched_with_double_quotes(
    client: TestClient, registry: Any
) -> None:
    registry.add_model("bob's model")
    registry.add_version("bob's model", download_uri="s3://b/k")

    response = client.get("/v1/models/bob's model")

    assert response.status_code == 200
    assert [v["version"] for v in response.json()["versions"]] == [1]


def test_describe_unknown_model_is_404_on_name(client: TestClient) -> None:
    response = client.get("/v1/models/nope")

    assert response.status_code == 404
    assert response.json()["error"]["field"] == "name"


def test_describe_model_with_mlflow_down_is_503(client: TestClient, registry: Any) -> None:
    registry.down = True

    response = client.get("/v1/models/iris")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert "MLflow" in response.json()["error"]["message"]
