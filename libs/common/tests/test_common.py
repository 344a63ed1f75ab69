from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlops_common.errors import NotFound, install_error_handlers
from mlops_common.http import make_async_client
from mlops_common.settings import refuse_placeholder_secrets
from mlops_common.storage import S3Uri, S3UriError
from pydantic import BaseModel, SecretStr


class Body(BaseModel):
    count: int


def app_with_errors() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/items")
    def create(body: Body) -> dict[str, int]:
        return {"count": body.count}

    @app.get("/items/{name}")
    def get(name: str) -> None:
        raise NotFound(f"no item {name!r}", field="name")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret detail")

    return app


def test_domain_errors_render_with_status_and_field() -> None:
    response = TestClient(app_with_errors()).get("/items/x")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "no item 'x'", "field": "name"}
    }


def test_validation_errors_name_the_field() -> None:
    response = TestClient(app_with_errors()).post("/items", json={"count": "many"})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "count"


def test_unexpected_errors_hide_the_details() -> None:
    client = TestClient(app_with_errors(), raise_server_exceptions=False)
    response = client.get("/boom")
    assert response.status_code == 500
    assert "secret detail" not in response.text


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://mlflow/1/models/m-1/artifacts", "mlflow", "1/models/m-1/artifacts"),
        ("s3://data", "data", ""),
    ],
)
def test_s3_uri_parsing(uri: str, bucket: str, key: str) -> None:
    parsed = S3Uri.parse(uri)
    assert (parsed.bucket, parsed.key) == (bucket, key)


@pytest.mark.parametrize("uri", ["http://x/y", "s3:///key", "mlflow-artifacts:/1/x"])
def test_bad_s3_uris_are_refused(uri: str) -> None:
    with pytest.raises(S3UriError):
        S3Uri.parse(uri)


def test_placeholder_secrets_are_refused_outside_dev() -> None:
    refuse_placeholder_secrets("dev", S3_SECRET_ACCESS_KEY=SecretStr("minioadmin"))
    with pytest.raises(ValueError, match="S3_SECRET_ACCESS_KEY"):
        refuse_placeholder_secrets("prod", S3_SECRET_ACCESS_KEY=SecretStr("minioadmin"))
    refuse_placeholder_secrets("prod", S3_SECRET_ACCESS_KEY=SecretStr("a-real-generated-secret"))


def test_idempotent_requests_are_retried_on_503_but_posts_are_not() -> None:
    asyncio.run(_retries())


async def _retries() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return httpx.Response(503) if len(calls) < 3 else httpx.Response(200)

    async with make_async_client("http://svc", transport=httpx.MockTransport(handler)) as client:
        client._transport.backoff_s = 0  # type: ignore[attr-defined]
        assert (await client.get("/x")).status_code == 200
        assert calls == ["GET", "GET", "GET"]
        calls.clear()
        assert (await client.post("/x")).status_code == 503
        assert calls == ["POST"]


def test_every_service_refuses_any_placeholder_secret_setting_outside_dev() -> None:
    """Nested settings and service tokens included, not only the S3 key."""
    from mlops_common.settings import MLflowSettings, S3Settings, ServiceSettings

    class Service(ServiceSettings):
        port: int = 1
        gateway_token: SecretStr | None = None
        s3: S3Settings = S3Settings(access_key_id="k", secret_access_key=SecretStr("real-secret-1"))
        mlflow: MLflowSettings = MLflowSettings()

    Service(environment="test", gateway_token=SecretStr("changeme"))
    with pytest.raises(ValueError, match="gateway_token"):
        Service(environment="prod", gateway_token=SecretStr("changeme"))
    with pytest.raises(ValueError, match=r"mlflow\.tracking_password"):
        Service(
            environment="prod",
            mlflow=MLflowSettings(tracking_username="u", tracking_password=SecretStr("password")),
        )
    Service(environment="prod", gateway_token=SecretStr("mlops_" + "r" * 43))
