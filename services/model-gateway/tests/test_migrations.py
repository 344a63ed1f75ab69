from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from mlops_common.auth import TokenStore, api_tokens
from mlops_common.db import migrate
from model_gateway.db import (
    MIGRATIONS_DIR,
    VERSION_TABLE,
    alias_audit,
    rollout_audit,
    rollouts,
    served_versions,
)


def test_alembic_upgrade_creates_alias_audit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"

    migrate(url, MIGRATIONS_DIR, VERSION_TABLE)
    migrate(url, MIGRATIONS_DIR, VERSION_TABLE)  # a second start finds the schema at head

    engine = sa.create_engine(url)
    # The gateway's tables: its own and the token table it migrates for the platform.
    schema = sa.MetaData()
    for table in (alias_audit, api_tokens, served_versions, rollouts, rollout_audit):
        table.to_metadata(schema)
    try:
        inspector = sa.inspect(engine)
        columns = {c["name"]: c for c in inspector.get_columns("alias_audit")}
        assert set(columns) == {
            "id",
            "model_name",
            "alias",
            "from_version",
            "to_version",
            "actor",
            "on_behalf_of",
            "reason",
            "moved_at",
        }
        assert columns["from_version"]["nullable"] is True
        assert columns["reason"]["nullable"] is True
        assert columns["to_version"]["nullable"] is False
        assert columns["moved_at"]["nullable"] is False
        served = {c["name"]: c for c in inspector.get_columns("served_versions")}
        assert set(served) == {
            "instance",
            "model_name",
            "alias",
            "served_version",
            "reported_by",
            "last_seen",
        }
        assert inspector.get_pk_constraint("served_versions")["constrained_columns"] == [
            "instance",
            "model_name",
            "alias",
        ]
        assert inspector.get_pk_constraint("rollouts")["constrained_columns"] == ["model_name"]
        assert {"action", "revision", "spec", "figures"} <= {
            c["name"] for c in inspector.get_columns("rollout_audit")
        }
        with engine.connect() as conn:
            version_table = sa.table(VERSION_TABLE, sa.column("version_num"))
            version = conn.execute(sa.select(version_table.c.version_num)).scalar()
            assert version == "0004_rollouts"
            # The migration and the table the code writes to describe the same schema.
            assert (
                compare_metadata(
                    MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
                    schema,
                )
                == []
            )
    finally:
        engine.dispose()


def test_startup_migrates_and_serves_moves(
    auth: dict[str, str], build_app: Any, tmp_path: Path, registry: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    with TestClient(build_app(db_url=url, migrate_on_startup=True), headers=auth) as client:
        token = auth["Authorization"].removeprefix("Bearer ")
        TokenStore(sa.create_engine(url)).ensure("ci-admin", token, ["admin"])
        response = client.put(
            "/v1/models/iris/aliases/champion", json={"version": 1}, headers={"X-Actor": "ci"}
        )
        history = client.get("/v1/models/iris/aliases/champion/history").json()

    assert response.status_code == 200
    assert [(r["from_version"], r["to_version"], r["actor"]) for r in history["records"]] == [
        (2, 1, "ci-admin")
    ]


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert list((MIGRATIONS_DIR / "versions").glob("0001_*.py"))
    assert MIGRATIONS_DIR.parent.name == "model_gateway"


def test_the_served_versions_migration_downgrades_and_upgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    migrate(url, MIGRATIONS_DIR, VERSION_TABLE)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["sqlalchemy_url"] = url
    cfg.attributes["version_table"] = VERSION_TABLE

    command.downgrade(cfg, "0002_api_tokens")
    engine = sa.create_engine(url)
    try:
        assert "served_versions" not in sa.inspect(engine).get_table_names()
        command.upgrade(cfg, "head")
        assert "served_versions" in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
