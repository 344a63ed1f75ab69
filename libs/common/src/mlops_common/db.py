"""The platform's own PostgreSQL state: engine creation and alembic migrations per service."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, MetaData, create_engine

log = logging.getLogger(__name__)


def make_engine(url: str, pool_size: int = 5) -> Engine:
    return create_engine(url, pool_size=pool_size, pool_pre_ping=True, future=True)


def migrate(url: str, migrations_dir: Path, version_table: str) -> None:
    """Upgrade to head. Each service keeps its own version table in the shared database."""
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
            context.run_migrations()
    engine.dispose()
