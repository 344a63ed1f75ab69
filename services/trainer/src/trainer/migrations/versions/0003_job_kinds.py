"""jobs have a kind (train, monitor) and monitoring jobs a result

Monitoring jobs (``POST /v1/monitor``) go through the same table, outbox and workers as training;
``result`` holds their report (drift, live quality, decision).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every job recorded before the upgrade was a training job.
    op.add_column(
        "training_jobs",
        sa.Column("kind", sa.String(16), nullable=False, server_default="train"),
    )
    op.add_column("training_jobs", sa.Column("result", sa.JSON()))


def downgrade() -> None:
    op.drop_column("training_jobs", "result")
    op.drop_column("training_jobs", "kind")
