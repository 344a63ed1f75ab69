"""training jobs

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "training_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("idempotency_key", sa.String(200), unique=True),
        sa.Column("model_name", sa.String(128), nullable=False, index=True),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker", sa.String(255)),
        sa.Column("run_id", sa.String(64)),
        sa.Column("model_version", sa.Integer),
        sa.Column("task", sa.String(32)),
        sa.Column("algorithm", sa.String(64)),
        sa.Column("metrics", sa.JSON),
        sa.Column("promoted", sa.Boolean),
        sa.Column("promotion", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
    )


def downgrade() -> None:
    op.drop_table("training_jobs")
