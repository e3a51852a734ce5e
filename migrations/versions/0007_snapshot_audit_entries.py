"""Post-trade snapshots get their own audit entry: the bounds of the snapshots from before.

From this revision on, ``store.approvals.record_snapshot`` writes a ``snapshot.recorded`` entry
(target type ``snapshot``, carrying the snapshot's MAC as ``record_mac``) in the snapshot's
transaction, and the verifier requires it. Snapshots that exist now have no such entry, and
the migration cannot write one (the chain is keyed; a migration has no key). So the chain head
row records how far they go:

- ``legacy_snapshot_last_id``: the highest snapshot id now; those up to it are checked against
  their MAC only (as before this revision);
- ``unsealed_snapshot_last_id``: the highest id of a snapshot without a MAC (from before
  migration 0004); only those may lack one.

A plain ADD COLUMN on both databases: SQLite keeps the head row's no-delete trigger.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("legacy_snapshot_last_id", "unsealed_snapshot_last_id")


def upgrade() -> None:
    """Add the two bounds to the head row and set them from the snapshots stored now."""
    for name in COLUMNS:
        op.add_column(
            "audit_chain_head",
            sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"),
        )
    bind = op.get_bind()
    last = bind.execute(sa.text("SELECT max(id) FROM post_trade_snapshots")).scalar()
    unsealed = bind.execute(
        sa.text("SELECT max(id) FROM post_trade_snapshots WHERE mac IS NULL")
    ).scalar()
    bind.execute(
        sa.text(
            "UPDATE audit_chain_head SET legacy_snapshot_last_id = :last,"
            " unsealed_snapshot_last_id = :unsealed"
        ),
        {"last": last or 0, "unsealed": unsealed or 0},
    )


def downgrade() -> None:
    """Drop the bounds (SQLite 3.35+ drops a column in place, keeping the table's triggers)."""
    for name in reversed(COLUMNS):
        if op.get_context().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE audit_chain_head DROP COLUMN {name}")
        else:
            op.drop_column("audit_chain_head", name)
