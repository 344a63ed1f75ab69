"""The gateway's own table: one audit row per alias move."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_gateway"

metadata = sa.MetaData()

alias_audit = sa.Table(
    "alias_audit",
    metadata,
    # BIGINT is not a rowid alias in SQLite, so it would not autoincrement there.
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("from_version", sa.Integer(), nullable=True),
    sa.Column("to_version", sa.Integer(), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("on_behalf_of", sa.String(256), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_alias_audit_model_alias_moved_at", "model_name", "alias", "moved_at"),
)


@dataclass(frozen=True)
class AuditRecord:
    id: int
    model_name: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    on_behalf_of: str | None
    reason: str | None
    moved_at: datetime


def insert_move(
    conn: Connection,
    *,
    model_name: str,
    alias: str,
    from_version: int | None,
    to_version: int,
    actor: str,
    on_behalf_of: str | None,
    reason: str | None,
    moved_at: datetime,
) -> int:
    """Insert one audit row in the caller's transaction and return its id."""
    result = conn.execute(
        alias_audit.insert()
        .values(
            model_name=model_name,
            alias=alias,
            from_version=from_version,
            to_version=to_version,
            actor=actor,
            on_behalf_of=on_behalf_of,
            reason=reason,
            moved_at=moved_at,
        )
        .returning(alias_audit.c.id)
    )
    return int(result.scalar_one())


def list_moves(engine: Engine, model_name: str, alias: str | None, limit: int) -> list[AuditRecord]:
    """Newest first; ``alias=None`` means every alias of the model."""
    query = sa.select(alias_audit).where(alias_audit.c.model_name == model_name)
    if alias is not None:
        query = query.where(alias_audit.c.alias == alias)
    query = query.order_by(alias_audit.c.moved_at.desc(), alias_audit.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        AuditRecord(
            id=row["id"],
            model_name=row["model_name"],
            alias=row["alias"],
            from_version=row["from_version"],
            to_version=row["to_version"],
            actor=row["actor"],
            on_behalf_of=row["on_behalf_of"],
            reason=row["reason"],
            moved_at=as_utc(row["moved_at"]),
        )
        for row in rows
    ]


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def as_utc(value: datetime) -> datetime:
    # SQLite drops the offset on the way back; every value was written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
