"""Create alias_audit.

Revision ID: 0001_alias_audit
Revises:
Create Date: 2026-11-27
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_alias_audit"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alias_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("alias", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_alias_audit_model_alias_moved_at", "alias_audit", ["model_name", "alias", "moved_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_alias_audit_model_alias_moved_at", table_name="alias_audit")
    op.drop_table("alias_audit")
