from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from mlops_common.service import from_state, load_settings
from mlops_common.settings import ServiceSettings
from pydantic_settings import SettingsConfigDict


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="ignore")

    port: int
    workers: int = 1


Handler = Annotated[dict[str, Any], Depends(from_state("handler"))]


def test_bad_settings_exit_with_one_line_per_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_PORT", "not-a-port")
    monkeypatch.setenv("DEMO_WORKERS", "many")
    with pytest.raises(SystemExit) as info:
        load_settings("demo", DemoSettings)
    message = str(info.value)
    assert message.startswith("demo: invalid settings (DemoSettings): ")
    assert "port: Input should be a valid integer" in message
    assert "workers: Input should be a valid integer" in message
    assert "Traceback" not in message


def test_from_state_hands_the_lifespan_object_to_a_route() -> None:
    app = FastAPI()
    app.state.handler = {"answer": 42}

    @app.get("/")
    async def route(handler: Handler) -> dict[str, Any]:
        return handler

    assert TestClient(app).get("/").json() == {"answer": 42}
