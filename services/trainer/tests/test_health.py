"""GET /health answers in time whatever its dependencies do, and says which one is degraded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient
from mlops_common.http import wait_until
from sqlalchemy import Engine
from trainer.app import create_app
from trainer.settings import TrainerSettings

from .conftest import WAIT_S, DatabaseSwitch, FakeQueue


@contextmanager
def api(settings: TrainerSettings, engine: Engine, queue: FakeQueue) -> Iterator[TestClient]:
    app = create_app(settings, engine=engine, queue=queue, objects=object(), run_migrations=False)  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield client


def test_health_reports_every_dependency(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
        "workers": ["trainer@test"],
        "pending_dispatch": 0,
        "degraded": [],
    }


def test_a_frozen_broker_is_reported_within_a_second(
    settings: TrainerSettings, engine: Engine, queue: FakeQueue
) -> None:
    with api(settings, engine, queue) as client:
        queue.freeze()
        try:
            began = time.monotonic()
            response = client.get("/health")
            took = time.monotonic() - began
        finally:
            queue.thaw()
    assert took < 1.0, f"/health took {took:.2f} s"
    # Jobs are still accepted: degraded, not unavailable.
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"], body["broker"]) == ("degraded", "ok", "timeout")
    assert body["workers"] == []
    assert body["degraded"][0].startswith("broker: timeout")


def test_polling_health_against_a_frozen_broker_runs_one_probe_at_a_time(
    settings: TrainerSettings, engine: Engine, queue: FakeQueue
) -> None:
    fast = settings.model_copy(update={"health_timeout_s": 0.05})
    with api(fast, engine, queue) as client:
        queue.freeze()
        try:
            answers = [client.get("/health").json()["broker"] for _ in range(20)]
            pings_while_frozen = queue.pings
        finally:
            queue.thaw()
        assert wait_until(lambda: client.get("/health").json()["status"] == "ok", WAIT_S, 0.05)
    assert answers == ["timeout"] * 20
    assert pings_while_frozen == 1


def test_a_broker_that_is_down_degrades_health_and_names_it(
    client: TestClient, queue: FakeQueue
) -> None:
    queue.down = True
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["broker"]) == ("degraded", "unavailable")
    assert any(
        line.startswith("broker: unavailable (ConnectionError)") for line in body["degraded"]
    )


def test_no_worker_is_degraded_not_unavailable(client: TestClient, queue: FakeQueue) -> None:
    queue.worker_names = []
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["workers"]) == ("degraded", [])
    assert body["degraded"] == ["workers: none answered; queued jobs wait for one"]


def test_a_database_outage_makes_health_503(
    settings: TrainerSettings, flaky_engine: Engine, database: DatabaseSwitch, queue: FakeQueue
) -> None:
    with api(settings, flaky_engine, queue) as client:
        database.down = True
        down = client.get("/health")
        database.down = False
        up = client.get("/health")
    assert down.status_code == 503
    body = down.json()
    assert (body["status"], body["database"], body["pending_dispatch"]) == (
        "unavailable",
        "unavailable",
        None,
    )
    assert body["degraded"] == ["database: unavailable (OperationalError); no job can be accepted"]
    assert (up.status_code, up.json()["status"]) == (200, "ok")
