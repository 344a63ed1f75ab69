"""Rollouts: each model's current traffic split between aliases, and every change of it.

Revision ID: 0004_rollouts
Revises: 0003_served_versions
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_rollouts"
down_revision: str | None = "0003_served_versions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rollouts",
        sa.Column("model_name", sa.String(256), primary_key=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("on_behalf_of", sa.String(256), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
    )
    op.create_table(
        "rollout_audit",
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
    )
    op.create_index("ix_rollout_audit_model_at", "rollout_audit", ["model_name", "at"])


def downgrade() -> None:
    op.drop_index("ix_rollout_audit_model_at", table_name="rollout_audit")
    op.drop_table("rollout_audit")
    op.drop_table("rollouts")
