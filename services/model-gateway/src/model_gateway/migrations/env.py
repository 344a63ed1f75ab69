"""Alembic environment: URL and version table are passed in by ``mlops_common.db.migrate``."""

from mlops_common.db import run_migrations_online
from model_gateway.db import metadata

run_migrations_online(metadata)
