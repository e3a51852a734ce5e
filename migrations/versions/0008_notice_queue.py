"""The operators' notices, queued in the transaction of the change they tell (issue 19).

Approvals started from this revision's code on no longer send their notices from the workflow
(two activity tasks and two workflow tasks each): the store queues the notice with the change,
and the worker's dispatcher sends it. A row is kept once done, with its outcome (sent, or
abandoned after the approval's window), as the record of what the operators were told.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.engine import UtcDateTime

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The dispatchers mark notices sent, failed or abandoned: the application role (which
# deploy/postgres/roles.sql grants only SELECT and INSERT by default) may update this table,
# never delete from it. Granted only where that role exists, as in 0004.
GRANT_APP_UPDATE = """
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hitl_app') THEN
        GRANT UPDATE ON hitl_notices TO hitl_app;
    END IF;
END $$
"""

# Written out rather than imported from store.tables, as in 0001.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PENDING = sa.text("done_at IS NULL")


def upgrade() -> None:
    """Create the queue, with a partial index of the notices not yet done."""
    op.create_table(
        "hitl_notices",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("trade_id", sa.Uuid(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
        sa.Column("mac_key_id", sa.String(64), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("give_up_at", UtcDateTime(), nullable=False),
        sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("claimed_until", UtcDateTime(), nullable=True),
        sa.Column("done_at", UtcDateTime(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hitl_notices")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_hitl_notices_idempotency_key")),
    )
    op.create_index("idx_notices_trade", "hitl_notices", ["trade_id"])
    op.create_index(
        "idx_notices_pending",
        "hitl_notices",
        ["id"],
        sqlite_where=PENDING,
        postgresql_where=PENDING,
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(GRANT_APP_UPDATE)


def downgrade() -> None:
    """Drop the queue (notices not yet sent are lost with it)."""
    op.drop_index("idx_notices_pending", table_name="hitl_notices")
    op.drop_index("idx_notices_trade", table_name="hitl_notices")
    op.drop_table("hitl_notices")
