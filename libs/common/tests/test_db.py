"""A database outage is a 503 the client can retry, never a 500; every database call is bounded,
and a connection broken while pooled (a database restart) is replaced, not served."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlops_common.db import make_engine, migration_lock_key
from mlops_common.errors import install_error_handlers, is_database_outage
from sqlalchemy import text
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout


def broken(invalidated: bool) -> DBAPIError:
    return DBAPIError(
        "SELECT 1", {}, Exception("SSL SYSCALL error"), connection_invalidated=invalidated
    )


OUTAGES: dict[str, Exception] = {
    "operational": OperationalError("SELECT 1", {}, Exception("connection refused")),
    "interface": InterfaceError("SELECT 1", {}, Exception("connection already closed")),
    "invalidated": broken(invalidated=True),
    "pool-timeout": PoolTimeout("QueuePool limit of size 5 overflow 10 reached"),
}
BUGS: dict[str, Exception] = {
    "integrity": IntegrityError("INSERT", {}, Exception("duplicate key")),
    "programming": ProgrammingError("SELEC 1", {}, Exception("syntax error")),
    "not-invalidated": broken(invalidated=False),
}


def app_raising(exc: Exception) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, string_error_prefixes=("/v2",))

    @app.get("/items")
    def items() -> None:
        raise exc

    @app.get("/v2/items")
    def v2_items() -> None:
        raise exc

    return app


@pytest.mark.parametrize("name", OUTAGES)
def test_a_database_outage_is_a_503_with_retry_after(name: str) -> None:
    response = TestClient(app_raising(OUTAGES[name])).get("/items")
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json() == {
        "error": {"code": "unavailable", "message": "the database is unavailable; retry later"}
    }


def test_a_database_outage_on_a_string_error_route_is_a_503_too() -> None:
    response = TestClient(app_raising(OUTAGES["operational"])).get("/v2/items")
    assert response.status_code == 503
    assert response.json() == {"error": "the database is unavailable; retry later"}


@pytest.mark.parametrize("name", BUGS)
def test_other_database_errors_stay_500s(name: str) -> None:
    client = TestClient(app_raising(BUGS[name]), raise_server_exceptions=False)
    response = client.get("/items")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "duplicate" not in response.text and "syntax" not in response.text


def test_outages_are_told_from_bugs() -> None:
    assert all(is_database_outage(exc) for exc in OUTAGES.values())
    assert not any(is_database_outage(exc) for exc in BUGS.values())
    assert not is_database_outage(ValueError("not a database error"))


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "db.sqlite")


def test_sqlite_engines_keep_working(db_path: str) -> None:
    for url in ("sqlite://", f"sqlite:///{db_path}"):
        with make_engine(url).connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1


def test_a_pooled_connection_broken_while_idle_is_replaced_at_the_next_checkout(
    db_path: str,
) -> None:
    engine = make_engine(f"sqlite:///{db_path}", pool_size=1)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        raw = conn.connection.dbapi_connection
    assert raw is not None
    # The server goes away under the idle pooled connection (a restart): the pool cannot know.
    raw.close()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        assert conn.connection.dbapi_connection is not raw


def test_waiting_for_a_pooled_connection_is_bounded(db_path: str) -> None:
    engine = make_engine(f"sqlite:///{db_path}", pool_size=1, pool_timeout_s=0.2)
    held = [engine.connect() for _ in range(1 + 10)]  # the pool and its default overflow
    try:
        began = time.monotonic()
        with pytest.raises(PoolTimeout) as raised:
            engine.connect()
        assert time.monotonic() - began < 2.0
        assert is_database_outage(raised.value)
    finally:
        for conn in held:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers on them."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_a_database_that_never_answers_fails_the_connection_in_bounded_time(
    silent_server: int,
) -> None:
    url = f"postgresql+psycopg2://user:secret@127.0.0.1:{silent_server}/platform"
    engine = make_engine(url, connect_timeout_s=2)
    began = time.monotonic()
    with pytest.raises(OperationalError) as raised:
        engine.connect()
    took = time.monotonic() - began
    assert took < 5.0, f"connecting took {took:.1f} s"
    assert is_database_outage(raised.value)


def test_each_service_has_its_own_migration_lock() -> None:
    trainer, gateway = (
        migration_lock_key(t) for t in ("alembic_version_trainer", "alembic_version_gateway")
    )
    assert trainer != gateway
    assert migration_lock_key("alembic_version_trainer") == trainer  # the same in every process
    assert all(-(2**63) <= key < 2**63 for key in (trainer, gateway))  # PostgreSQL's bigint
