from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from inference.app import create_app
from inference.gateway import GatewayClient
from inference.manager import ModelManager
from inference.model import ModelVersion, Prediction
from inference.validation import InputColumn, InputSchema
from mlops_common.http import make_async_client

from .conftest import CALLER, VERIFIER

pytestmark = pytest.mark.anyio

ROW = {"age": 40.0, "income": 52000.5, "visits": 3, "city": "lyon", "plan": "pro", "member": True}


async def test_health_is_503_until_the_alias_exists_then_200(
    service: Any, gateway: Any, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="inference")
    async with service() as svc:
        for _ in range(3):
            assert not await svc.manager.poll_once()
        waiting = await svc.client.get("/health")
        gateway.set_alias("churn", 1)
        assert await svc.manager.poll_once()
        ready = await svc.client.get("/health")

    assert waiting.status_code == 503
    assert waiting.headers["retry-after"]
    body = waiting.json()
    assert body["status"] == "loading"
    assert body["last_error"] is None
    assert "has no alias 'champion'" in body["message"]
    # Waiting for a first promotion is normal: said once, not on every poll, never as an error.
    waits = [r for r in caplog.records if "waiting for churn@champion" in r.getMessage()]
    assert len(waits) == 1
    assert all(r.levelno < logging.WARNING for r in waits)

    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ok",
        "model": {"name": "churn", "version": 1, "alias": "champion"},
        "source": "registry",
        "degraded": [],
        "last_error": None,
        "pending_version": None,
        "message": None,
        "rollout": None,
    }


async def test_model_info(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    before = datetime.now(UTC)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.client.get("/model-info")
    assert response.status_code == 200
    info = response.json()
    assert info["name"] == "churn"
    assert info["version"] == 1
    assert info["alias"] == "champion"
    assert info["run_id"] == "run-churn-1"
    assert info["artifact_uri"] == "s3://mlflow/models/churn-v1/artifacts"
    assert info["flavor"] == "sklearn"
    inputs = {col["name"]: col for col in info["signature"]["inputs"]}
    assert list(inputs) == ["age", "income", "visits", "city", "plan", "member"]
    assert inputs["age"] == {"name": "age", "type": "double", "required": False}
    assert inputs["visits"]["type"] == "long"
    assert inputs["member"]["type"] == "boolean"
    loaded_at = datetime.fromisoformat(info["loaded_at"].replace("Z", "+00:00"))
    assert loaded_at.tzinfo is not None
    assert loaded_at >= before


async def test_alias_move_swaps_in_the_new_version(
    service: Any, gateway: Any, store: Any, tmp_path: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        old = svc.manager.current
        gateway.set_alias("churn", 2)
        assert await svc.manager.poll_once()
        new = svc.manager.current
        response = await svc.post_json("/predict", {"instances": [ROW]})
        assert not await svc.manager.poll_once()  # same version again: nothing to do

    assert old is not None and new is not None
    assert (old.meta.version, new.meta.version) == (1, 2)
    assert response.json()["model"]["version"] == 2
    # A request that picked up the old model before the swap can still finish with it.
    assert old.predict(_frame_of(old, [ROW])).predictions
    # The served version and the one before it stay in the cache, under their verified
    # manifests' digests.
    digest, before = new.meta.manifest_sha256, old.meta.manifest_sha256
    assert digest is not None and before is not None
    assert new.meta.signed_by == VERIFIER.key_ids[0]
    cached = sorted(p.name for p in (tmp_path / "cache" / "churn").iterdir())
    copies = [digest, f"{digest}.source.json", before, f"{before}.source.json"]
    assert cached == sorted([*copies, "current.json"])
    assert len(store.downloads) == 2


async def test_moving_the_alias_back_uses_the_kept_copy(
    service: Any, gateway: Any, store: Any, tmp_path: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        for version in (2, 1, 2):
            gateway.set_alias("churn", version)
            assert await svc.manager.poll_once()
        served = svc.manager.current

    assert served is not None and served.meta.version == 2
    # Versions 1 and 2 were downloaded once each: every move back found its copy kept.
    assert len(store.downloads) == 2
    folders = [p for p in (tmp_path / "cache" / "churn").iterdir() if p.is_dir()]
    assert len(folders) == 2


async def test_broken_version_keeps_the_old_one_serving(
    service: Any, gateway: Any, store: Any, clock: Any
) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        gateway.set_alias("churn", 3)  # MLmodel fine, model.skops garbage
        assert not await svc.manager.poll_once()
        health = (await svc.client.get("/health")).json()
        served = (await svc.post_json("/predict", {"instances": [ROW]})).json()

        # Not retried on every poll...
        for _ in range(5):
            await svc.manager.poll_once()
        assert store.downloads.count("s3://mlflow/models/churn-broken/artifacts") == 1
        # ...but again once the backoff has passed.
        clock.now += 31
        await svc.manager.poll_once()
        assert store.downloads.count("s3://mlflow/models/churn-broken/artifacts") == 2

        # Removing the alias makes the old failure irrelevant.
        gateway.aliases.clear()
        await svc.manager.poll_once()
        removed = (await svc.client.get("/health")).json()
        gateway.set_alias("churn", 3)
        clock.now += 3600
        await svc.manager.poll_once()

        # Rolling the alias back clears the error.
        gateway.set_alias("churn", 1)
        await svc.manager.poll_once()
        healed = (await svc.client.get("/health")).json()

    assert health["status"] == "ok"
    assert health["model"]["version"] == 1
    assert health["pending_version"] == 3
    assert "churn version 3" in health["last_error"]
    assert "model.skops" in health["last_error"]
    assert served["model"]["version"] == 1
    assert removed["status"] == "ok"
    assert removed["last_error"] is None
    assert removed["pending_version"] is None
    assert "waiting for churn@champion" in removed["message"]
    assert healed["last_error"] is None
    assert healed["pending_version"] is None


async def test_broken_first_version_is_unavailable(service: Any, gateway: Any, caplog: Any) -> None:
    gateway.set_alias("churn", 3)
    async with service() as svc:
        await svc.manager.poll_once()
        response = await svc.client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["pending_version"] == 3
    assert "churn version 3" in body["last_error"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "churn version 3" in errors[0].getMessage()


async def test_missing_artifacts_are_a_load_error(service: Any, gateway: Any) -> None:
    gateway.set_alias("ghost", 1)
    async with service("ghost") as svc:
        await svc.manager.poll_once()
        body = (await svc.client.get("/health")).json()
    assert "no artifacts under s3://mlflow/models/missing/artifacts" in body["last_error"]


async def test_gateway_failure_is_reported_and_cleared(service: Any, gateway: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
        gateway.fail_with = 500
        await svc.manager.poll_once()
        failing = await svc.client.get("/health")
        gateway.fail_with = None
        await svc.manager.poll_once()
        recovered = (await svc.client.get("/health")).json()
    # Still serving: degraded, not down.
    assert failing.status_code == 200
    body = failing.json()
    assert body["status"] == "degraded"
    assert body["source"] == "registry"
    assert "gateway answered 500" in body["last_error"]
    assert body["degraded"] == [f"gateway: {body['last_error']}"]
    assert recovered["status"] == "ok"
    assert recovered["degraded"] == []
    assert recovered["last_error"] is None


async def test_a_restart_reuses_the_downloaded_copy(service: Any, gateway: Any, store: Any) -> None:
    gateway.set_alias("churn", 1)
    async with service() as svc:
        await svc.manager.poll_once()
    async with service() as svc:
        assert await svc.manager.poll_once()
    assert len(store.downloads) == 1


async def test_background_polling_loads_the_model(
    settings_for: Any, gateway: Any, store: Any
) -> None:
    gateway.set_alias("churn", 1)
    settings = settings_for(poll_interval_s=0.05)
    app = create_app(settings, gateway_transport=httpx.MockTransport(gateway.handler), store=store)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=transport, base_url="http://inference.test", headers=CALLER
        ) as client,
    ):
        first = await client.get("/health")  # the app answers before the model is there
        assert first.status_code in (200, 503)

        async def serving(version: int) -> bool:
            response = await client.get("/health")
            return response.status_code == 200 and response.json()["model"]["version"] == version

        await _eventually(lambda: serving(1))
        gateway.set_alias("churn", 2)
        await _eventually(lambda: serving(2))


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    """Poll a condition with a deadline (readiness, not a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await anyio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout_s}s")


class _StubModel:
    """A ServedModel that records the thread it predicts on, or refuses rows like sklearn does."""

    flavor = "stub"

    def __init__(self, local_dir: Path, meta: ModelVersion) -> None:
        self.meta = meta
        self.loaded_at: datetime | None = None
        self.input_schema = InputSchema((InputColumn("x", "double", True),))
        self.signature: dict[str, Any] | None = None
        self.input_example: list[Any] | None = [{"x": 1.0}]
        self.threads: list[int] = []
        self.proba_classes: list[Any] | None = None
        self.compiled = False
        self.call_cost_s = 0.0

    # No compiled path: every request goes through predict.
    def decode_json(self, raw: bytes) -> None:
        return None

    def decode_rows(self, instances: Any) -> None:
        return None

    def decode_columns(self, columns: Any, rows: int) -> None:
        return None

    def load(self) -> None:
        self.loaded_at = datetime.now(UTC)

    def predict(self, frame: Any) -> Prediction:
        self.threads.append(threading.get_ident())
        if (frame["x"] < 0).any():
            raise ValueError("Input contains negative values.\nmore detail")
        return Prediction(predictions=frame["x"].tolist())


def _stub_loader(local_dir: Path, meta: ModelVersion) -> _StubModel:
    model = _StubModel(local_dir, meta)
    model.load()
    return model


async def test_prediction_runs_off_the_event_loop_and_model_errors_are_422(
    settings_for: Any, gateway: Any, store: Any, clock: Any
) -> None:
    gateway.set_alias("churn", 1)
    settings = settings_for()
    client = make_async_client("http://gw", transport=httpx.MockTransport(gateway.handler))
    manager = ModelManager(
        model_name="churn",
        alias="champion",
        gateway=GatewayClient(client),
        store=store,
        cache_dir=settings.cache_dir,
        verifier=settings.manifest_verifier(),
        loader=_stub_loader,
        clock=clock,
    )
    app = create_app(
        settings, manager=manager, gateway_transport=httpx.MockTransport(gateway.handler)
    )
    async with (
        client,
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", headers=CALLER
        ) as http,
    ):
        await manager.poll_once()
        loop_thread = threading.get_ident()
        ok = await http.post("/predict", json={"instances": [{"x": 2.5}]})
        refused = await http.post("/predict", json={"instances": [[-1]]})
    model = manager.current
    assert isinstance(model, _StubModel)
    assert ok.json()["predictions"] == [2.5]
    assert ok.json()["probabilities"] is None
    assert loop_thread not in model.threads[1:]  # [0] is the load check, already in a thread
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["field"] == "instances"
    assert error["message"] == (
        "the model cannot score these rows: ValueError: Input contains negative values."
    )


def _frame_of(model: Any, rows: list[dict[str, Any]]) -> Any:
    from inference.validation import build_frame

    return build_frame(rows, model.input_schema)
