from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from mlops_common.db import migrate
from model_gateway.db import MIGRATIONS_DIR, VERSION_TABLE, metadata


def test_alembic_upgrade_creates_alias_audit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'migrated.db'}"

    migrate(url, MIGRATIONS_DIR, VERSION_TABLE)
    migrate(url, MIGRATIONS_DIR, VERSION_TABLE)  # a second start finds the schema at head

    engine = sa.create_engine(url)
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
            "reason",
            "moved_at",
        }
        assert columns["from_version"]["nullable"] is True
        assert columns["reason"]["nullable"] is True
        assert columns["to_version"]["nullable"] is False
        assert columns["moved_at"]["nullable"] is False
        with engine.connect() as conn:
            version_table = sa.table(VERSION_TABLE, sa.column("version_num"))
            version = conn.execute(sa.select(version_table.c.version_num)).scalar()
            assert version == "0001_alias_audit"
            # The migration and the table the code writes to describe the same schema.
            assert (
                compare_metadata(
                    MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}),
                    metadata,
                )
                == []
            )
    finally:
        engine.dispose()


def test_startup_migrates_and_serves_moves(build_app: Any, tmp_path: Path, registry: Any) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    with TestClient(build_app(db_url=url, migrate_on_startup=True)) as client:
        response = client.put(
            "/v1/models/iris/aliases/champion", json={"version": 1}, headers={"X-Actor": "ci"}
        )
        history = client.get("/v1/models/iris/aliases/champion/history").json()

    assert response.status_code == 200
    assert [(r["from_version"], r["to_version"], r["actor"]) for r in history["records"]] == [
        (2, 1, "ci")
    ]


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert list((MIGRATIONS_DIR / "versions").glob("0001_*.py"))
    assert MIGRATIONS_DIR.parent.name == "model_gateway"
