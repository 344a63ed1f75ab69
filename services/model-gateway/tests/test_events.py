"""Alias moves published for subscribers (inference): fakes only, no Redis server needed."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis.exceptions
import sqlalchemy as sa
from fastapi.testclient import TestClient
from model_gateway.events import RedisAliasEvents
from pydantic import ValidationError

from .conftest import make_settings


class FakePublisher:
    def __init__(self, fail: Exception | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail

    async def publish(self, event: dict[str, Any]) -> None:
        if self.fail is not None:
            raise self.fail
        self.events.append(event)


class FakeRedisServer:
    """Speaks just enough RESP for redis-py to connect and PUBLISH; runs on its own loop."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str]] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeRedisServer:
        self.thread.start()
        assert self.ready.wait(5), "fake Redis did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while header := await reader.readline():
                args = []
                for _ in range(int(header[1:])):
                    size = int((await reader.readline())[1:])
                    args.append((await reader.readexactly(size + 2))[:-2].decode())
                command = args[0].upper()
                if command == "PUBLISH":
                    self.published.append((args[1], args[2]))
                    writer.write(b":1\r\n")
                elif command == "PING":
                    writer.write(b"+PONG\r\n")
                else:  # CLIENT SETINFO, SELECT
                    writer.write(b"+OK\r\n")
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
def fake_redis() -> Iterator[FakeRedisServer]:
    with FakeRedisServer() as server:
        yield server


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def metric(client: TestClient, line_start: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the handler publishes committed moves ----------------------------------------------------


def test_move_publishes_one_event_with_the_move(
    auth: dict[str, str], build_app: Any, engine: sa.Engine
) -> None:
    publisher = FakePublisher()
    with TestClient(build_app(engine=engine, publisher=publisher), headers=auth) as client:
        response = client.put(
            "/v1/models/iris/aliases/champion", json={"version": 3}, headers={"X-Actor": "alice"}
        )

    assert response.status_code == 200
    [event] = publisher.events
    assert event == {
        "name": "iris",
        "alias": "champion",
        "version": 3,
        "previous_version": 2,
        "moved_at": event["moved_at"],
        "actor": "test-admin",
        "on_behalf_of": "alice",
    }
    assert datetime.fromisoformat(event["moved_at"]) == datetime.fromisoformat(
        response.json()["moved_at"]
    )
    json.dumps(event)  # what goes on the wire


def test_new_alias_publishes_null_previous_version(
    auth: dict[str, str], build_app: Any, engine: sa.Engine
) -> None:
    publisher = FakePublisher()
    with TestClient(build_app(engine=engine, publisher=publisher), headers=auth) as client:
        assert client.put("/v1/models/iris/aliases/staging", json={"version": 1}).status_code == 200

    [event] = publisher.events
    assert (event["alias"], event["version"], event["previous_version"]) == ("staging", 1, None)


def test_noop_move_publishes_nothing(
    auth: dict[str, str], build_app: Any, engine: sa.Engine
) -> None:
    publisher = FakePublisher()
    with TestClient(build_app(engine=engine, publisher=publisher), headers=auth) as client:
        response = client.put("/v1/models/iris/aliases/champion", json={"version": 2})
        moves = metric(client, "gateway_alias_moves_total{")

    assert response.status_code == 200 and response.json()["moved"] is False
    assert publisher.events == []
    assert moves == 0


def test_failed_or_refused_move_publishes_nothing(
    auth: dict[str, str], build_app: Any, engine: sa.Engine
) -> None:
    publisher = FakePublisher()
    with TestClient(build_app(engine=engine, publisher=publisher), headers=auth) as client:
        assert (
            client.put("/v1/models/iris/aliases/champion", json={"version": 9}).status_code == 404
        )
        assert client.put("/v1/models/iris/aliases/latest", json={"version": 1}).status_code == 422

    assert publisher.events == []


def test_failing_publisher_does_not_fail_the_move(
    auth: dict[str, str],
    build_app: Any,
    engine: sa.Engine,
    registry: Any,
    rows: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher = FakePublisher(fail=ConnectionError("redis is down"))
    with TestClient(build_app(engine=engine, publisher=publisher), headers=auth) as client:
        response = client.put("/v1/models/iris/aliases/champion", json={"version": 3})
        failed = metric(client, "gateway_alias_events_failed_total ")
        resolved = client.get("/v1/models/iris/aliases/champion").json()

    assert response.status_code == 200
    assert response.json()["moved"] is True
    assert registry.models["iris"]["aliases"]["champion"] == 3
    assert resolved["version"] == 3
    assert len(rows()) == 1
    assert failed == 1
    assert "iris@champion moved to 3 but the move was not published" in caplog.text


# -- the Redis implementation, against an in-process fake server -----------------------------


def test_redis_publisher_sends_json_on_the_channel(fake_redis: FakeRedisServer) -> None:
    event = {"name": "iris", "alias": "champion", "version": 3, "previous_version": 2}

    async def publish() -> None:
        events = RedisAliasEvents.from_url(
            f"redis://127.0.0.1:{fake_redis.port}/0", "test:moves", timeout_s=2.0
        )
        try:
            await events.publish(event)
        finally:
            await events.aclose()

    asyncio.run(publish())

    [(channel, message)] = fake_redis.published
    assert channel == "test:moves"
    assert json.loads(message) == event


def test_redis_publisher_raises_when_redis_is_unreachable() -> None:
    async def publish() -> None:
        events = RedisAliasEvents.from_url(
            f"redis://127.0.0.1:{closed_port()}/0", "test:moves", timeout_s=1.0
        )
        try:
            await events.publish({"name": "iris"})
        finally:
            await events.aclose()

    with pytest.raises(redis.exceptions.ConnectionError):
        asyncio.run(publish())


def test_app_publishes_through_redis_when_configured(
    auth: dict[str, str], build_app: Any, engine: sa.Engine, fake_redis: FakeRedisServer
) -> None:
    app = build_app(engine=engine, redis_url=f"redis://127.0.0.1:{fake_redis.port}/0")
    with TestClient(app, headers=auth) as client:
        response = client.put(
            "/v1/models/iris/aliases/champion", json={"version": 1}, headers={"X-Actor": "ci"}
        )

    assert response.status_code == 200
    [(channel, message)] = fake_redis.published
    assert channel == "mlops:alias-moves"
    event = json.loads(message)
    assert (event["name"], event["alias"], event["version"], event["previous_version"]) == (
        "iris",
        "champion",
        1,
        2,
    )
    assert (event["actor"], event["on_behalf_of"]) == ("test-admin", "ci")


def test_app_moves_alias_quickly_when_redis_is_down(
    auth: dict[str, str], build_app: Any, engine: sa.Engine, registry: Any
) -> None:
    app = build_app(
        engine=engine, redis_url=f"redis://127.0.0.1:{closed_port()}/0", redis_timeout_s=0.5
    )
    with TestClient(app, headers=auth) as client:
        started = time.monotonic()
        response = client.put("/v1/models/iris/aliases/champion", json={"version": 3})
        elapsed = time.monotonic() - started
        failed = metric(client, "gateway_alias_events_failed_total ")

    assert response.status_code == 200
    assert registry.models["iris"]["aliases"]["champion"] == 3
    assert failed == 1
    assert elapsed < 2.0


# -- settings -------------------------------------------------------------------------------


def test_redis_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://:s3cret@redis.internal:6379/2")
    monkeypatch.setenv("GATEWAY_ALIAS_CHANNEL", "prod:alias-moves")
    settings = make_settings(db_url)
    assert settings.redis_url == "redis://:s3cret@redis.internal:6379/2"
    assert settings.alias_channel == "prod:alias-moves"


def test_redis_is_off_by_default_and_when_empty(
    monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    monkeypatch.delenv("GATEWAY_REDIS_URL", raising=False)
    assert make_settings(db_url).redis_url is None
    assert make_settings(db_url).alias_channel == "mlops:alias-moves"
    monkeypatch.setenv("GATEWAY_REDIS_URL", "")
    assert make_settings(db_url).redis_url is None


def test_redis_url_must_be_a_redis_url(db_url: str) -> None:
    with pytest.raises(ValidationError, match="redis_url"):
        make_settings(db_url, redis_url="http://redis:6379")
