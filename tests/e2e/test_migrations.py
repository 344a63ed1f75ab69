"""Replicas that start together migrate the shared schema once, on the stack's real PostgreSQL.

Every trainer API, trainer worker and gateway process migrates its schema when it starts; scaled
out (compose --scale, the Helm chart's replicas), several do at the same moment. Without the
advisory lock in ``mlops_common.db.migrate`` some of them died on a duplicate table or version
row. Needs the local stack's PostgreSQL superuser (its secrets.json), to make a scratch database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from alembic.script import ScriptDirectory
from model_gateway import db as gateway_db
from psycopg2 import sql
from trainer import jobs as trainer_jobs

from .conftest import StackUrls

pytestmark = pytest.mark.e2e

REPLICAS = 4
# Each process migrates both services' schemas, as a trainer and a gateway starting on one host.
MIGRATE = """
import sys
from mlops_common.db import migrate
from model_gateway.db import MIGRATIONS_DIR, VERSION_TABLE as GATEWAY
from trainer.jobs import MIGRATIONS, VERSION_TABLE as TRAINER
migrate(sys.argv[1], MIGRATIONS, TRAINER)
migrate(sys.argv[1], MIGRATIONS_DIR, GATEWAY)
"""


@pytest.fixture
def scratch_database(stack: StackUrls) -> Iterator[str]:
    if stack.home is None:
        pytest.skip("needs the local stack's PostgreSQL superuser (MLOPS_HOME)")
    secrets = json.loads((stack.home / "secrets.json").read_text())
    server = f"{secrets['postgres_user']}:{secrets['postgres_password']}@127.0.0.1:5432"
    name = f"e2e_migrate_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(f"postgresql://{server}/postgres", connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg2://{server}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_replicas_starting_together_migrate_the_schema_once(scratch_database: str) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, scratch_database],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(REPLICAS)
    ]
    failures = []
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        if process.returncode != 0:
            failures.append(stderr.strip().splitlines()[-3:])
    assert failures == []

    connection = psycopg2.connect(scratch_database.replace("+psycopg2", ""), connect_timeout=5)
    try:
        for migrations, table in (
            (trainer_jobs.MIGRATIONS, trainer_jobs.VERSION_TABLE),
            (gateway_db.MIGRATIONS_DIR, gateway_db.VERSION_TABLE),
        ):
            head = ScriptDirectory(str(migrations)).get_current_head()
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(table)))
                assert cursor.fetchall() == [(head,)], table
    finally:
        connection.close()
