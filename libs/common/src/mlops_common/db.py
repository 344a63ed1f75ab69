"""The platform's own PostgreSQL state: engine creation and alembic migrations per service.

Every engine is bounded: a connection attempt gives up after ``connect_timeout_s``, a request
waits at most ``pool_timeout_s`` for a pooled connection, and a dead server is noticed on an idle
connection by TCP keepalives. A pooled connection is pinged before use, so after PostgreSQL
restarts the next request gets a fresh connection instead of an error. While the database is
down, calls fail fast with an error ``mlops_common.errors.is_database_outage`` recognises.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, create_engine, make_url, text

log = logging.getLogger(__name__)

MIGRATION_LOCK_TIMEOUT_S = 300

# libpq drivers: the connection options below are libpq's.
_LIBPQ_DRIVERS = frozenset({"psycopg2", "psycopg"})


def make_engine(
    url: str,
    pool_size: int = 5,
    *,
    connect_timeout_s: int = 5,
    pool_timeout_s: float = 5.0,
    pool_recycle_s: int = 1800,
) -> Engine:
    """An engine whose every call is bounded in time (see the module docstring).

    ``pool_recycle_s`` replaces connections older than that, before a firewall or the server
    drops them silently. SQLite URLs (tests) get the pool options their pool accepts.
    """
    parsed = make_url(url)
    options: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        # An in-memory database lives in one connection: no pool size or timeout to set.
        if parsed.database not in (None, "", ":memory:"):
            options |= {"pool_size": pool_size, "pool_timeout": pool_timeout_s}
        return create_engine(url, **options)
    options |= {
        "pool_size": pool_size,
        "pool_timeout": pool_timeout_s,
        "pool_recycle": pool_recycle_s,
    }
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in _LIBPQ_DRIVERS:
        options["connect_args"] = libpq_timeouts(connect_timeout_s)
    return create_engine(url, **options)


def libpq_timeouts(connect_timeout_s: int) -> dict[str, int]:
    """libpq options: give up connecting after ``connect_timeout_s`` (libpq's minimum is 2 s),
    and probe an idle connection after 30 s so a vanished server is noticed within a minute
    (a server that is only slow, or frozen on a live host, is not: its kernel still answers)."""
    return {
        "connect_timeout": max(2, connect_timeout_s),
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


def migrate(url: str, migrations_dir: Path, version_table: str) -> None:
    """Upgrade to head. Each service keeps its own version table in the shared database.

    Safe to call from several processes at once (replicas starting together): on PostgreSQL one
    of them migrates while the others wait, then find the schema at head. Alembic's context is
    process-global, so threads of one process must not call it concurrently.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir))
    cfg.attributes["sqlalchemy_url"] = url
    cfg.attributes["version_table"] = version_table
    command.upgrade(cfg, "head")


def run_migrations_online(target_metadata: MetaData) -> None:
    """Body of every service's alembic ``env.py``: URL and version table come from ``migrate``."""
    from alembic import context
    from sqlalchemy import pool

    cfg = context.config
    engine = create_engine(cfg.attributes["sqlalchemy_url"], poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table=cfg.attributes["version_table"],
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Held until this transaction ends; taken before alembic reads the version table,
                # so a replica that waited sees what the first one did. A replica waits for
                # another's migration (or any lock a migration needs) at most this long, then
                # fails and is restarted, rather than hanging behind a stuck one.
                connection.execute(text(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT_S}s'"))
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": migration_lock_key(cfg.attributes["version_table"])},
                )
            context.run_migrations()
    engine.dispose()


def migration_lock_key(version_table: str) -> int:
    """The advisory lock of one service's migrations: a signed 64-bit key from its version
    table's name, so services sharing a database do not wait for each other."""
    digest = hashlib.blake2b(f"mlops-migrations:{version_table}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
