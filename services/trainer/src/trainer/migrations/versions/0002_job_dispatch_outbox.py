"""jobs are their own outbox: dispatched_at

A queued job whose ``dispatched_at`` is NULL has not been handed to the broker yet; the API's
dispatcher sends it and sets the time. The partial index holds only those rows, so finding them
stays cheap however many jobs the table keeps.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'queued' AND dispatched_at IS NULL")


def upgrade() -> None:
    op.add_column("training_jobs", sa.Column("dispatched_at", sa.DateTime(timezone=True)))
    # Jobs queued before the upgrade were sent by the old code: they keep dispatched_at NULL and
    # are sent once more, which is harmless (only one delivery can claim a job).
    op.create_index(
        "ix_training_jobs_pending_dispatch",
        "training_jobs",
        ["created_at"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )


def downgrade() -> None:
    op.drop_index("ix_training_jobs_pending_dispatch", table_name="training_jobs")
    op.drop_column("training_jobs", "dispatched_at")
