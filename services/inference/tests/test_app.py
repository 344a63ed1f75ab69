from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pytest

pytestmark = pytest.mark.anyio


async def test_openapi_and_docs(service: Any) -> None:
    async with service() as svc:
        spec = (await svc.client.get("/openapi.json")).json()
        docs = await svc.client.get("/docs")
    assert spec["info"]["title"] == "inference"
    assert spec["info"]["version"] == version("inference")
    assert {"/predict", "/health", "/model-info"} <= set(spec["paths"])
    assert "413" in spec["paths"]["/predict"]["post"]["responses"]
    assert docs.status_code == 200


async def test_unknown_route_is_a_json_404(service: Any) -> None:
    async with service() as svc:
        response = await svc.client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
