"""Four eyes: the operators who approved an approval that needed two.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``hitl_approvals.approvers`` (NULL: one operator decided, as every approval before
    this migration). A plain ADD COLUMN on both databases: SQLite keeps the table, and with it
    its no-delete triggers; the row MACs are unchanged (an empty ``approvers`` is not part of the
    MAC'd content)."""
    op.add_column("hitl_approvals", sa.Column("approvers", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop ``hitl_approvals.approvers`` (SQLite 3.35+ drops a column in place)."""
    op.drop_column("hitl_approvals", "approvers")
