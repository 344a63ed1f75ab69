"""In-process fakes: MLflow's REST API over httpx.MockTransport, an object store, SQLite."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient
from mlops_common.auth import TokenStore
from mlops_common.auth import metadata as auth_metadata
from mlops_common.settings import DatabaseSettings, MLflowSettings, S3Settings
from mlops_common.storage import ObjectTooLarge, S3Uri
from model_gateway.app import create_app
from model_gateway.db import metadata
from model_gateway.settings import GatewaySettings

API = "/api/2.0/mlflow"
# A token of the right shape that the fixtures store with the admin scope.
ADMIN_TOKEN = "mlops_" + "a" * 43
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

SKLEARN_MLMODEL = """\
artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
  sklearn:
    pickled_model: model.pkl
    sklearn_version: 1.9.0
mlflow_version: 3.17.2
model_id: {model_id}
run_id: {run_id}
signature:
  inputs: '[{{"type": "double", "name": "sepal length (cm)", "required": true}}, {{"type":
    "double", "name": "petal width (cm)", "required": true}}]'
  outputs: '[{{"type": "tensor", "tensor-spec": {{"dtype": "int64", "shape": [-1]}}}}]'
  params: null
utc_time_created: '2026-11-27 07:49:25.717079'
"""

PYFUNC_MLMODEL = """\
artifact_path: model
flavors:
  python_function:
    loader_module: my_module
mlflow_version: 3.17.2
model_id: {model_id}
run_id: {run_id}
"""


def _error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error_code": code, "message": message})


class FakeMlflow:
    """An in-memory model registry answering like MLflow 3.17's REST API."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, str]]] = []
        self.posted: list[dict[str, Any]] = []
        self.down = False
        self.fail_status: int | None = None
        # MLflow's basic-auth app: a missing model is a plain-text 403 except on
        # registered-models/get; ``denied`` models are refused for this user on every call.
        self.basic_auth = False
        self.denied: set[str] = set()
        self.fail_post_status: int | None = None
        # MLflow 3.17 answers 400 INVALID_PARAMETER_VALUE for an unset alias.
        self.alias_missing_status = 400
        self._clock = 1_764_000_000_000

    # -- seeding -------------------------------------------------------------------------------

    def add_model(self, name: str, description: str | None = None) -> None:
        self.models[name] = {"description": description, "versions": {}, "aliases": {}}

    def add_version(
        self,
        name: str,
        *,
        download_uri: str,
        run_id: str | None = None,
        status: str = "READY",
        tags: dict[str, str] | None = None,
    ) -> int:
        model = self.models[name]
        number = len(model["versions"]) + 1
        self._clock += 1000
        model_id = f"m-{name}-{number}"
        mv: dict[str, Any] = {
            "name": name,
            "version": str(number),
            "creation_timestamp": self._clock,
            "last_updated_timestamp": self._clock,
            "current_stage": "None",
            "source": f"models:/{model_id}",
            "status": status,
            # Like MLflow 3.17, no model_id field: only the source names the logged model.
            "_download_uri": download_uri,
        }
        if run_id:
            mv["run_id"] = run_id
        if tags:
            mv["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        model["versions"][number] = mv
        return number

    def add_run(
        self,
        run_id: str,
        metrics: dict[str, Any],
        params: dict[str, str] | None = None,
        *,
        tags: dict[str, str] | None = None,
        experiment_id: str = "1",
        start_time: int | None = None,
        end_time: int | None = None,
    ) -> None:
        info: dict[str, Any] = {
            "run_id": run_id,
            "run_uuid": run_id,
            "run_name": f"run-{run_id}",
            "experiment_id": experiment_id,
            "status": "FINISHED",
            "lifecycle_stage": "active",
        }
        if start_time is not None:
            info["start_time"] = start_time
        if end_time is not None:
            info["end_time"] = end_time
        data: dict[str, Any] = {
            "metrics": [
                {"key": k, "value": v, "timestamp": 1, "step": 0} for k, v in metrics.items()
            ],
            "params": [{"key": k, "value": v} for k, v in (params or {}).items()],
        }
        if tags:
            data["tags"] = [{"key": k, "value": v} for k, v in tags.items()]
        self.runs[run_id] = {"info": info, "data": data}

    def path_calls(self, suffix: str) -> int:
        return sum(1 for _, path, _ in self.calls if path.endswith(suffix))

    # -- transport -----------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        query = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        self.calls.append((request.method, request.url.path, query))
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.fail_status is not None:
            return _error(self.fail_status, "INTERNAL_ERROR", "boom: psycopg2 trace here")
        route = (request.method, request.url.path.removeprefix(API))
        if route == ("GET", "/health"):
            return httpx.Response(200, text="OK")
        handlers = {
            ("GET", "/registered-models/get"): self._get_model,
            ("GET", "/registered-models/alias"): self._get_by_alias,
            ("POST", "/registered-models/alias"): self._set_alias,
            ("GET", "/model-versions/get"): self._get_version,
            ("GET", "/model-versions/get-download-uri"): self._download_uri,
            ("GET", "/model-versions/search"): self._search,
            ("GET", "/runs/get"): self._get_run,
        }
        handler = handlers.get(route)
        if handler is None:
            return _error(404, "ENDPOINT_NOT_FOUND", f"no endpoint {request.url.path}")
        if request.method == "POST":
            query = json.loads(request.content)
        name = query.get("name")
        if name in self.denied or (
            self.basic_auth
            and name is not None
            and name not in self.models
            and route != ("GET", "/registered-models/get")
        ):
            return httpx.Response(403, text="Permission denied")
        return handler(query)

    def _model(self, name: str) -> dict[str, Any] | None:
        return self.models.get(name)

    def _missing_model(self, name: str) -> httpx.Response:
        return _error(
            404, "RESOURCE_DOES_NOT_EXIST", f"Registered Model with name={name} not found"
        )

    def _public(self, mv: dict[str, Any]) -> dict[str, Any]:
        # Like MLflow's search quirk, versions carry no aliases here; registered-models/get does.
        return {k: v for k, v in mv.items() if not k.startswith("_")}

    def _version(self, name: str, raw: str) -> dict[str, Any] | httpx.Response:
        try:
            number = int(raw)
        except ValueError:
            return _error(400, "INVALID_PARAMETER_VALUE", f"version must be an integer: {raw}")
        model = self._model(name)
        if model is None or number not in model["versions"]:
            return _error(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"Model Version (name={name}, version={number}) not found",
            )
        mv: dict[str, Any] = model["versions"][number]
        return mv

    def _get_model(self, q: dict[str, str]) -> httpx.Response:
        model = self._model(q["name"])
        if model is None:
            return self._missing_model(q["name"])
        body: dict[str, Any] = {"name": q["name"], "creation_timestamp": 1}
        if model["description"]:
            body["description"] = model["description"]
        if model["aliases"]:
            body["aliases"] = [{"alias": a, "version": str(v)} for a, v in model["aliases"].items()]
        return httpx.Response(200, json={"registered_model": body})

    def _get_by_alias(self, q: dict[str, str]) -> httpx.Response:
        name, alias = q["name"], q["alias"]
        model = self._model(name)
        if model is None:
            return self._missing_model(name)
        if alias.lower() == "latest":
            if not model["versions"]:
                return _error(
                    404, "RESOURCE_DOES_NOT_EXIST", f"Latest version not found for {name}"
                )
            mv = model["versions"][max(model["versions"])]
        elif alias in model["aliases"]:
            mv = model["versions"][model["aliases"][alias]]
        elif self.alias_missing_status == 404:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", f"alias {alias} not found")
        else:
            return _error(
                400, "INVALID_PARAMETER_VALUE", f"Registered model alias {alias} not found."
            )
        return httpx.Response(200, json={"model_version": self._public(mv)})

    def _set_alias(self, body: dict[str, Any]) -> httpx.Response:
        self.posted.append(body)
        if self.fail_post_status is not None:
            return _error(self.fail_post_status, "INTERNAL_ERROR", "write failed")
        assert isinstance(body["version"], str), "MLflow's proto wants the version as a string"
        found = self._version(body["name"], body["version"])
        if isinstance(found, httpx.Response):
            return found
        self.models[body["name"]]["aliases"][body["alias"]] = int(body["version"])
        return httpx.Response(200, json={})

    def _get_version(self, q: dict[str, str]) -> httpx.Response:
        found = self._version(q["name"], q["version"])
        if isinstance(found, httpx.Response):
            return found
        return httpx.Response(200, json={"model_version": self._public(found)})

    def _download_uri(self, q: dict[str, str]) -> httpx.Response:
        found = self._version(q["name"], q["version"])
        if isinstance(found, httpx.Response):
            return found
        return httpx.Response(200, json={"artifact_uri": found["_download_uri"]})

    def _search(self, q: dict[str, str]) -> httpx.Response:
        match = re.fullmatch(r"name=(['\"])(.*)\1", q.get("filter", ""))
        if match is None:
            return _error(400, "INVALID_PARAMETER_VALUE", "bad filter")
        model = self._model(match.group(2))
        versions = [
            self._public(v) for _, v in sorted((model or {"versions": {}})["versions"].items())
        ]
        start = int(q.get("page_token", "0"))
        size = int(q.get("max_results", "10000"))
        body: dict[str, Any] = {"model_versions": versions[start : start + size]}
        if start + size < len(versions):
            body["next_page_token"] = str(start + size)
        return httpx.Response(200, json=body)

    def _get_run(self, q: dict[str, str]) -> httpx.Response:
        run = self.runs.get(q["run_id"])
        if run is None:
            return _error(404, "RESOURCE_DOES_NOT_EXIST", f"Run '{q['run_id']}' not found")
        return httpx.Response(200, json={"run": run})


class FakeStore:
    """Holds MLmodel files by s3:// URI; missing keys fail like S3's NoSuchKey."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.reads: list[str] = []
        self.limits: list[int | None] = []

    def get_bytes(self, uri: S3Uri, max_bytes: int | None = None) -> bytes:
        self.reads.append(str(uri))
        self.limits.append(max_bytes)
        try:
            data = self.objects[str(uri)]
        except KeyError:
            raise ClientError(
                {
                    "Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."},
                    "ResponseMetadata": {"HTTPStatusCode": 404},
                },
                "GetObject",
            ) from None
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLarge(uri, len(data))
        return data


# Seeded registry: iris v1 (mlflow-artifacts:/, sklearn), v2 (direct s3://, sklearn, champion),
# v3 (mlflow-artifacts:/, pyfunc only, no signature, challenger).
V1_ARTIFACTS = "s3://mlflow/1/models/m-iris-1/artifacts"
V2_ARTIFACTS = "s3://models-bucket/direct/m-iris-2/artifacts"
V3_ARTIFACTS = "s3://mlflow/1/models/m-iris-3/artifacts"


@pytest.fixture
def registry() -> FakeMlflow:
    fake = FakeMlflow()
    fake.add_model("iris", description="Iris classifier")
    fake.add_version(
        "iris", download_uri="mlflow-artifacts:/1/models/m-iris-1/artifacts", run_id="run1"
    )
    fake.add_version("iris", download_uri=V2_ARTIFACTS + "/", run_id="run2")
    fake.add_version(
        "iris", download_uri="mlflow-artifacts:/1/models/m-iris-3/artifacts", run_id="run3"
    )
    fake.models["iris"]["aliases"] = {"champion": 2, "challenger": 3}
    fake.add_run("run1", {"accuracy": 0.90, "f1": 0.88}, {"C": "1.0"})
    fake.add_run("run2", {"accuracy": 0.95, "f1": "NaN"}, {"C": "0.5", "max_iter": "200"})
    # run3 was deleted from the tracking server: its version must still be listed.
    fake.add_model("empty")
    return fake


@pytest.fixture
def store() -> FakeStore:
    fake = FakeStore()
    for number, uri, template in (
        (1, V1_ARTIFACTS, SKLEARN_MLMODEL),
        (2, V2_ARTIFACTS, SKLEARN_MLMODEL),
        (3, V3_ARTIFACTS, PYFUNC_MLMODEL),
    ):
        text = template.format(model_id=f"m-iris-{number}", run_id=f"run{number}")
        fake.objects[f"{uri}/MLmodel"] = text.encode()
    return fake


def make_settings(db_url: str, **overrides: Any) -> GatewaySettings:
    values: dict[str, Any] = {
        "environment": "test",
        "mlflow": MLflowSettings(tracking_uri="http://user:hunter2@mlflow.test:5050"),
        "s3": S3Settings(access_key_id="test", secret_access_key="test"),
        "db": DatabaseSettings(url=db_url),
        "mlflow_retries": 0,
        "mlflow_search_page_size": 2,
        "migrate_on_startup": False,
    }
    values.update(overrides)
    return GatewaySettings(**values)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(db_url)
    metadata.create_all(eng)
    auth_metadata.create_all(eng)
    TokenStore(eng).ensure("test-admin", ADMIN_TOKEN, ["admin"])
    yield eng
    eng.dispose()


@pytest.fixture
def client(
    registry: FakeMlflow, store: FakeStore, engine: sa.Engine, db_url: str
) -> Iterator[TestClient]:
    app = create_app(
        make_settings(db_url),
        mlflow_transport=httpx.MockTransport(registry.handle),
        store=store,
        engine=engine,
    )
    with TestClient(app, headers=AUTH) as test_client:
        yield test_client


@pytest.fixture
def auth() -> dict[str, str]:
    """Headers of the admin token the ``engine`` fixture stores."""
    return dict(AUTH)


def audit_rows(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM alias_audit ORDER BY id")).mappings().all()
    return [dict(r) for r in rows]


@pytest.fixture
def rows(engine: sa.Engine) -> Any:
    return lambda: audit_rows(engine)


@pytest.fixture
def build_app(registry: FakeMlflow, store: FakeStore, db_url: str) -> Any:
    """Returns ``build(engine=..., publisher=..., **settings_overrides) -> FastAPI`` wired to
    the fakes."""

    def build(engine: sa.Engine | None = None, publisher: Any = None, **overrides: Any) -> Any:
        return create_app(
            make_settings(overrides.pop("db_url", db_url), **overrides),
            mlflow_transport=httpx.MockTransport(registry.handle),
            store=store,
            engine=engine,
            publisher=publisher,
        )

    return build
