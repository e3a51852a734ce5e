"""Guardian state: the kill-switch's single row, unlocked to begin with.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.engine import UtcDateTime

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create guardian_state with its one row."""
    table = op.create_table(
        "guardian_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("since", UtcDateTime(), nullable=True),
        sa.Column("changed_by", sa.String(length=128), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_guardian_state_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guardian_state")),
    )
    op.bulk_insert(table, [{"id": 1, "locked": False, "version": 0}])


def downgrade() -> None:
    """Drop guardian_state."""
    op.drop_table("guardian_state")
