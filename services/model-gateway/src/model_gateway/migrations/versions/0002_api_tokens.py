"""API tokens (hashes only) and the "on behalf of" note of alias moves.

Revision ID: 0002_api_tokens
Revises: 0001_alias_audit
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_api_tokens"
down_revision: str | None = "0001_alias_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("scopes", sa.String(512), nullable=False),
        sa.Column("models", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    # The authenticated token's name is the actor; a client's X-Actor is only a note beside it.
    op.add_column("alias_audit", sa.Column("on_behalf_of", sa.String(256), nullable=True))


def downgrade() -> None:
    op.drop_column("alias_audit", "on_behalf_of")
    op.drop_table("api_tokens")
