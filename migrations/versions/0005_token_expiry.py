"""API tokens that end: an optional expiry on each issued token.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.engine import UtcDateTime

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``api_tokens.expires_at`` (NULL: the token lives until revoked, as before)."""
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", UtcDateTime(), nullable=True))


def downgrade() -> None:
    """Drop ``api_tokens.expires_at``."""
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("expires_at")
