"""Tamper-evident record: keyed MACs, the audit chain and its head, the genesis of older entries.

Adds ``mac`` and ``mac_key_id`` to approvals, snapshots and the Guardian row; ``seq``, ``mac``,
``mac_key_id``, ``chain`` and ``record_mac`` to the audit log; the single-row chain head (with
the genesis record) and the single-row outcome of the worker's last verification (docs/audit.md).

The genesis is computed here, not at first start: it needs no key. Entries that exist now keep
``seq`` NULL; their count and SHA-256 digest (``hitl.audit_chain.LegacyDigest``, in ``id``
order) are stored in the head row, whose chain value starts as ``chain_0`` of that genesis.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from hitl.audit_chain import LEGACY_CONTENT_FIELDS, LegacyDigest
from store.engine import UtcDateTime

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
MAC = sa.String(64)

SEALED_TABLES = ("hitl_approvals", "post_trade_snapshots", "guardian_state")
AUDIT_COLUMNS = ("mac_key_id", "mac", "chain", "record_mac")

# The head row is the chain's memory: never deleted (its UPDATEs are the appends).
PG_TRIGGERS: tuple[tuple[str, str, str], ...] = (
    ("trg_audit_chain_head_no_delete", "DELETE", "ROW"),
    ("trg_audit_chain_head_no_truncate", "TRUNCATE", "STATEMENT"),
)
SQLITE_TRIGGER = "trg_audit_chain_head_no_delete"

# What the application role updates (deploy/postgres/roles.sql grants it only SELECT and INSERT
# by default); granted only where that role exists.
GRANT_APP_UPDATES = """
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'hitl_app') THEN
        GRANT UPDATE ON hitl_approvals, guardian_state, deep_link_tokens, api_tokens,
            audit_chain_head, audit_verification TO hitl_app;
    END IF;
END $$
"""

_legacy_entries = sa.table(
    "audit_log",
    sa.column("id", BigId),
    sa.column("seq", sa.BigInteger()),
    *(sa.column(name, sa.String()) for name in LEGACY_CONTENT_FIELDS if name != "created_at"),
    sa.column("created_at", UtcDateTime()),
)
# payload is JSON: re-declared with its type so that it is read back as a dict.
_legacy_entries.c.payload.type = sa.JSON()


def _genesis() -> tuple[LegacyDigest, int]:
    """The digest of every existing entry (in id order) and the last id it covers."""
    legacy = LegacyDigest()
    last_id = 0
    columns = [_legacy_entries.c[name] for name in LEGACY_CONTENT_FIELDS]
    result = op.get_bind().execute(
        sa.select(_legacy_entries.c.id, *columns).order_by(_legacy_entries.c.id)
    )
    for row in result:
        legacy.update(dict(zip(LEGACY_CONTENT_FIELDS, row[1:], strict=True)))
        last_id = row[0]
    return legacy, last_id


def upgrade() -> None:
    """Add the integrity columns and tables, record the genesis, guard the head row."""
    for table in SEALED_TABLES:
        op.add_column(table, sa.Column("mac", MAC, nullable=True))
        op.add_column(table, sa.Column("mac_key_id", sa.String(64), nullable=True))
    op.add_column("audit_log", sa.Column("seq", sa.BigInteger(), nullable=True))
    for name in AUDIT_COLUMNS:
        op.add_column("audit_log", sa.Column(name, sa.String(64), nullable=True))
    op.create_index("idx_audit_seq", "audit_log", ["seq"], unique=True)
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("chain", MAC, nullable=False),
        sa.Column("genesis_count", sa.BigInteger(), nullable=False),
        sa.Column("genesis_digest", MAC, nullable=False),
        sa.Column("genesis_last_id", sa.BigInteger(), nullable=False),
        sa.Column("legacy_approval_last_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_chain_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    op.create_table(
        "audit_verification",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("checked_at", UtcDateTime(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("chain", MAC, nullable=False),
        sa.Column("intact", sa.Boolean(), nullable=False),
        sa.Column("problem", sa.Text(), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_audit_verification_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_verification")),
    )
    legacy, last_id = _genesis()
    last_approval = op.get_bind().execute(sa.text("SELECT max(id) FROM hitl_approvals")).scalar()
    genesis = legacy.head()
    op.bulk_insert(
        head,
        [
            {
                "id": 1,
                "seq": genesis.seq,
                "chain": genesis.chain,
                "genesis_count": legacy.count,
                "genesis_digest": legacy.hexdigest(),
                "genesis_last_id": last_id,
                "legacy_approval_last_id": last_approval or 0,
            }
        ],
    )
    dialect = op.get_context().dialect.name
    if dialect == "postgresql":
        for name, event, level in PG_TRIGGERS:
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {event} ON audit_chain_head "
                f"FOR EACH {level} EXECUTE FUNCTION hitl_refuse_delete()"
            )
        op.execute(GRANT_APP_UPDATES)
    else:
        op.execute(
            f"CREATE TRIGGER {SQLITE_TRIGGER} BEFORE DELETE ON audit_chain_head "
            "BEGIN SELECT RAISE(ABORT, 'SEC-080: rows of audit_chain_head are never deleted'); END"
        )


def _drop_column(table: str, column: str) -> None:
    if op.get_context().dialect.name == "sqlite":
        # Not batch mode: rebuilding the table would drop its SEC-080 triggers.
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    else:
        op.drop_column(table, column)


def downgrade() -> None:
    """Drop what upgrade added (the MACs and the chain are lost; the entries are kept)."""
    if op.get_context().dialect.name == "postgresql":
        for name, _event, _level in reversed(PG_TRIGGERS):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON audit_chain_head")
    else:
        op.execute(f"DROP TRIGGER IF EXISTS {SQLITE_TRIGGER}")
    op.drop_table("audit_verification")
    op.drop_table("audit_chain_head")
    op.drop_index("idx_audit_seq", table_name="audit_log")
    for name in reversed(AUDIT_COLUMNS):
        _drop_column("audit_log", name)
    _drop_column("audit_log", "seq")
    for table in reversed(SEALED_TABLES):
        _drop_column(table, "mac_key_id")
        _drop_column(table, "mac")
