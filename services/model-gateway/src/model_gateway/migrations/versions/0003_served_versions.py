"""What each inference instance reports serving, for a version's lineage (served_by).

Revision ID: 0003_served_versions
Revises: 0002_api_tokens
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_served_versions"
down_revision: str | None = "0002_api_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "served_versions",
        sa.Column("instance", sa.String(255), primary_key=True),
        sa.Column("model_name", sa.String(256), primary_key=True),
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("served_version", sa.Integer(), nullable=True),
        sa.Column("reported_by", sa.String(64), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_served_versions_model_version", "served_versions", ["model_name", "served_version"]
    )
    op.create_index("ix_served_versions_last_seen", "served_versions", ["last_seen"])


def downgrade() -> None:
    op.drop_index("ix_served_versions_last_seen", table_name="served_versions")
    op.drop_index("ix_served_versions_model_version", table_name="served_versions")
    op.drop_table("served_versions")
