"""API tokens; PostgreSQL NOTIFY on every new outbox event so event streams wake at once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.engine import UtcDateTime

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

EVENT_CHANNEL = "hitl_events"

PG_NOTIFY_FUNCTION = f"""
CREATE FUNCTION hitl_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{EVENT_CHANNEL}', NEW.id::text);
    RETURN NEW;
END;
$$
"""


def upgrade() -> None:
    """Create api_tokens; on PostgreSQL, notify listeners of each new event row."""
    op.create_table(
        "api_tokens",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("principal", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("revoked_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_NOTIFY_FUNCTION)
        op.execute(
            "CREATE TRIGGER trg_hitl_events_notify AFTER INSERT ON hitl_events "
            "FOR EACH ROW EXECUTE FUNCTION hitl_notify_event()"
        )


def downgrade() -> None:
    """Drop what upgrade created."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_hitl_events_notify ON hitl_events")
        op.execute("DROP FUNCTION IF EXISTS hitl_notify_event()")
    op.drop_table("api_tokens")
