"""The gateway's own tables: one audit row per alias move, one row per inference instance and
alias it resolves (what that instance last said it serves)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

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

# One row per (instance, model, alias): what the instance last reported serving, and when.
served_versions = sa.Table(
    "served_versions",
    metadata,
    sa.Column("instance", sa.String(255), primary_key=True),
    sa.Column("model_name", sa.String(256), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("served_version", sa.Integer(), nullable=True),
    sa.Column("reported_by", sa.String(64), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_served_versions_model_version", "model_name", "served_version"),
    sa.Index("ix_served_versions_last_seen", "last_seen"),
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
    return [_audit_record(row) for row in rows]


def _audit_record(row: sa.RowMapping) -> AuditRecord:
    return AuditRecord(
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


def list_version_moves(
    engine: Engine, model_name: str, version: int, limit: int
) -> list[AuditRecord]:
    """Moves of any alias of the model to or from ``version``, oldest first."""
    query = (
        sa.select(alias_audit)
        .where(
            alias_audit.c.model_name == model_name,
            sa.or_(alias_audit.c.to_version == version, alias_audit.c.from_version == version),
        )
        .order_by(alias_audit.c.moved_at.asc(), alias_audit.c.id.asc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [_audit_record(row) for row in rows]


@dataclass(frozen=True)
class ServedRecord:
    instance: str
    model_name: str
    alias: str
    served_version: int | None
    reported_by: str
    last_seen: datetime


def record_served(
    engine: Engine,
    *,
    instance: str,
    model_name: str,
    alias: str,
    served_version: int | None,
    reported_by: str,
    seen_at: datetime,
) -> None:
    """Insert or refresh one instance's report for one alias."""
    values = {
        "instance": instance,
        "model_name": model_name,
        "alias": alias,
        "served_version": served_version,
        "reported_by": reported_by,
        "last_seen": seen_at,
    }
    changes = {k: values[k] for k in ("served_version", "reported_by", "last_seen")}
    keys = [served_versions.c.instance, served_versions.c.model_name, served_versions.c.alias]
    with engine.begin() as conn:
        dialect = conn.dialect.name
        if dialect == "postgresql":
            pg = postgresql.insert(served_versions).values(**values)
            conn.execute(pg.on_conflict_do_update(index_elements=keys, set_=changes))
        elif dialect == "sqlite":
            lite = sqlite.insert(served_versions).values(**values)
            conn.execute(lite.on_conflict_do_update(index_elements=keys, set_=changes))
        else:
            updated = conn.execute(
                served_versions.update()
                .where(*(column == values[column.name] for column in keys))
                .values(**changes)
            )
            if updated.rowcount == 0:
                conn.execute(served_versions.insert().values(**values))


def list_served(
    engine: Engine, model_name: str, version: int, since: datetime
) -> list[ServedRecord]:
    """Instances that reported serving ``version`` of the model at ``since`` or later."""
    query = (
        sa.select(served_versions)
        .where(
            served_versions.c.model_name == model_name,
            served_versions.c.served_version == version,
            served_versions.c.last_seen >= since,
        )
        .order_by(served_versions.c.instance, served_versions.c.alias)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        ServedRecord(
            instance=row["instance"],
            model_name=row["model_name"],
            alias=row["alias"],
            served_version=row["served_version"],
            reported_by=row["reported_by"],
            last_seen=as_utc(row["last_seen"]),
        )
        for row in rows
    ]


def prune_served(engine: Engine, before: datetime) -> int:
    """Delete reports last seen before ``before``; returns how many."""
    with engine.begin() as conn:
        result = conn.execute(served_versions.delete().where(served_versions.c.last_seen < before))
    return int(result.rowcount or 0)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def as_utc(value: datetime) -> datetime:
    # SQLite drops the offset on the way back; every value was written in UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# ---- rollouts -----------------------------------------------------------------------------------
# The model's current rollout, if any: one row per model.
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("model_name", sa.String(256), primary_key=True),
    sa.Column("spec", sa.JSON(), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("on_behalf_of", sa.String(256), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
)

# Every change of a rollout: started, changed, ended, promoted, aborted.
rollout_audit = sa.Table(
    "rollout_audit",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("spec", sa.JSON(), nullable=True),
    sa.Column("actor", sa.String(256), nullable=False),
    sa.Column("on_behalf_of", sa.String(256), nullable=True),
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("figures", sa.JSON(), nullable=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_rollout_audit_model_at", "model_name", "at"),
)


@dataclass(frozen=True)
class RolloutRecord:
    model_name: str
    spec: dict[str, Any]
    revision: int
    started_at: datetime
    updated_at: datetime
    actor: str
    on_behalf_of: str | None
    reason: str | None


@dataclass(frozen=True)
class RolloutChange:
    """Who changes a rollout, when and why."""

    actor: str
    on_behalf_of: str | None
    reason: str | None
    at: datetime


def _rollout(row: Any) -> RolloutRecord:
    return RolloutRecord(
        model_name=row["model_name"],
        spec=row["spec"],
        revision=row["revision"],
        started_at=as_utc(row["started_at"]),
        updated_at=as_utc(row["updated_at"]),
        actor=row["actor"],
        on_behalf_of=row["on_behalf_of"],
        reason=row["reason"],
    )


def get_rollout(engine: Engine, model_name: str) -> RolloutRecord | None:
    with engine.connect() as conn:
        row = (
            conn.execute(sa.select(rollouts).where(rollouts.c.model_name == model_name))
            .mappings()
            .first()
        )
    return None if row is None else _rollout(row)


def _last_revision(conn: Connection, model_name: str) -> int:
    """The highest revision the model's rollouts have had (kept after one ends)."""
    found = conn.execute(
        sa.select(sa.func.max(rollout_audit.c.revision)).where(
            rollout_audit.c.model_name == model_name
        )
    ).scalar()
    return int(found or 0)


def save_rollout(
    engine: Engine, model_name: str, spec: dict[str, Any], change: RolloutChange
) -> RolloutRecord:
    """Start or change the model's rollout and audit it, in one transaction."""
    with engine.begin() as conn:
        current = (
            conn.execute(
                sa.select(rollouts).where(rollouts.c.model_name == model_name).with_for_update()
            )
            .mappings()
            .first()
        )
        revision = _last_revision(conn, model_name) + 1
        values = {
            "spec": spec,
            "revision": revision,
            "updated_at": change.at,
            "actor": change.actor,
            "on_behalf_of": change.on_behalf_of,
            "reason": change.reason,
        }
        if current is None:
            conn.execute(
                rollouts.insert().values(model_name=model_name, started_at=change.at, **values)
            )
        else:
            conn.execute(
                rollouts.update().where(rollouts.c.model_name == model_name).values(**values)
            )
        _audit(
            conn, model_name, "started" if current is None else "changed", revision, spec, change
        )
        row = (
            conn.execute(sa.select(rollouts).where(rollouts.c.model_name == model_name))
            .mappings()
            .one()
        )
    return _rollout(row)


def end_rollout(
    engine: Engine,
    model_name: str,
    action: str,
    change: RolloutChange,
    figures: dict[str, float] | None = None,
) -> int | None:
    """End the model's rollout (``action``: ended, promoted, aborted) and audit it; the new
    revision, or None when there was none to end."""
    with engine.begin() as conn:
        deleted = conn.execute(rollouts.delete().where(rollouts.c.model_name == model_name))
        if deleted.rowcount == 0:
            return None
        revision = _last_revision(conn, model_name) + 1
        _audit(conn, model_name, action, revision, None, change, figures)
    return revision


def _audit(
    conn: Connection,
    model_name: str,
    action: str,
    revision: int,
    spec: dict[str, Any] | None,
    change: RolloutChange,
    figures: dict[str, float] | None = None,
) -> None:
    conn.execute(
        rollout_audit.insert().values(
            model_name=model_name,
            action=action,
            revision=revision,
            spec=spec,
            actor=change.actor,
            on_behalf_of=change.on_behalf_of,
            reason=change.reason,
            figures=figures,
            at=change.at,
        )
    )


def list_rollout_audit(engine: Engine, model_name: str, limit: int) -> list[dict[str, Any]]:
    """The model's rollout changes, newest first."""
    query = (
        sa.select(rollout_audit)
        .where(rollout_audit.c.model_name == model_name)
        .order_by(rollout_audit.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [{**row, "at": as_utc(row["at"])} for row in rows]
