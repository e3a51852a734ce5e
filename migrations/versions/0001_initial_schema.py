"""Initial schema: approvals, snapshots, audit log, deep links, events outbox; SEC-080 triggers.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.engine import Decimal8, UtcDateTime

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported from store.tables: a migration must keep creating the schema
# of its own day after the models move on. The tests compare the result with store.tables.

# SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT identities.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

STATUSES = "'PENDING', 'AWAITING_APPROVAL', 'ACCEPTED', 'REJECTED', 'FILLED', 'CLOSED', 'SETTLED'"
SIDES = "'BUY', 'SELL'"
CHANNELS = "'API', 'DISCORD', 'WEB', 'SYSTEM'"

# SEC-080: approvals and audit entries are evidence, so the database itself refuses to delete
# them and refuses to rewrite audit entries, whatever code or console connects. The PostgreSQL
# error uses SQLSTATE 23001 (restrict_violation) so that it surfaces as an IntegrityError, as
# SQLite's RAISE(ABORT) does.
PG_REFUSE_FUNCTION = """
CREATE FUNCTION hitl_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'SEC-080: rows of % are never changed', TG_TABLE_NAME
            USING ERRCODE = 'restrict_violation';
    END IF;
    RAISE EXCEPTION 'SEC-080: rows of % are never deleted', TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END;
$$
"""

# TRUNCATE skips row triggers on PostgreSQL, so it is refused by statement triggers of its own.
PG_TRIGGERS: tuple[tuple[str, str, str, str], ...] = (
    # (trigger, table, event, level)
    ("trg_hitl_approvals_no_delete", "hitl_approvals", "DELETE", "ROW"),
    ("trg_hitl_approvals_no_truncate", "hitl_approvals", "TRUNCATE", "STATEMENT"),
    ("trg_audit_log_no_delete", "audit_log", "DELETE", "ROW"),
    ("trg_audit_log_no_update", "audit_log", "UPDATE", "ROW"),
    ("trg_audit_log_no_truncate", "audit_log", "TRUNCATE", "STATEMENT"),
)

# SQLite has neither TRUNCATE nor stored functions: each trigger raises its own message.
SQLITE_TRIGGERS: tuple[tuple[str, str, str], ...] = (
    # (trigger, table, event)
    ("trg_hitl_approvals_no_delete", "hitl_approvals", "DELETE"),
    ("trg_audit_log_no_delete", "audit_log", "DELETE"),
    ("trg_audit_log_no_update", "audit_log", "UPDATE"),
)


def upgrade() -> None:
    """Create every table, index and constraint of ``store.tables``, then the SEC-080 guards."""
    op.create_table(
        "hitl_approvals",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("trade_id", sa.Uuid(), nullable=False),
        sa.Column("instrument", sa.String(64), nullable=False),
        sa.Column("side", sa.String(4), nullable=False),
        sa.Column("risk_pct", Decimal8(), nullable=False),
        sa.Column("confidence", Decimal8(), nullable=False),
        sa.Column("request_price", Decimal8(), nullable=False),
        sa.Column("reasoning_summary", sa.Text(), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("decided_at", UtcDateTime(), nullable=True),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decision_channel", sa.String(16), nullable=True),
        sa.Column("decision_reason", sa.String(64), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hitl_approvals")),
        sa.UniqueConstraint("trade_id", name=op.f("uq_hitl_approvals_trade_id")),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_hitl_approvals_status")),
        sa.CheckConstraint(f"side IN ({SIDES})", name=op.f("ck_hitl_approvals_side")),
        sa.CheckConstraint(
            f"decision_channel IS NULL OR decision_channel IN ({CHANNELS})",
            name=op.f("ck_hitl_approvals_decision_channel"),
        ),
    )
    op.create_index(
        "idx_hitl_pending",
        "hitl_approvals",
        ["expires_at"],
        postgresql_where=sa.text("status = 'AWAITING_APPROVAL'"),
        sqlite_where=sa.text("status = 'AWAITING_APPROVAL'"),
    )
    op.create_index("idx_hitl_correlation", "hitl_approvals", ["correlation_id"])
    op.create_index("idx_hitl_trade", "hitl_approvals", ["trade_id"])

    op.create_table(
        "post_trade_snapshots",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("approval_id", BigId, nullable=False),
        sa.Column("bid", Decimal8(), nullable=False),
        sa.Column("ask", Decimal8(), nullable=False),
        sa.Column("spread", Decimal8(), nullable=False),
        sa.Column("mid_price", Decimal8(), nullable=False),
        sa.Column("response_latency_ms", Decimal8(), nullable=False),
        sa.Column("price_deviation_pct", Decimal8(), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_post_trade_snapshots")),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["hitl_approvals.id"],
            name=op.f("fk_post_trade_snapshots_approval_id_hitl_approvals"),
        ),
    )
    op.create_index("idx_snapshot_approval", "post_trade_snapshots", ["approval_id"], unique=True)
    op.create_index("idx_snapshot_correlation", "post_trade_snapshots", ["correlation_id"])

    op.create_table(
        "audit_log",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("actor_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(32), nullable=False),
        sa.Column("target_id", sa.String(128), nullable=False),
        sa.Column("previous_state", sa.String(32), nullable=True),
        sa.Column("new_state", sa.String(32), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("error_code", sa.String(16), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_audit_log_idempotency_key")),
    )
    op.create_index("idx_audit_correlation", "audit_log", ["correlation_id"])
    op.create_index("idx_audit_target", "audit_log", ["target_type", "target_id"])
    op.create_index("idx_audit_action", "audit_log", ["action"])

    op.create_table(
        "deep_link_tokens",
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("trade_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("used_at", UtcDateTime(), nullable=True),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_deep_link_tokens")),
    )
    op.create_index(
        "idx_deep_link_unused",
        "deep_link_tokens",
        ["trade_id"],
        postgresql_where=sa.text("used_at IS NULL"),
        sqlite_where=sa.text("used_at IS NULL"),
    )

    op.create_table(
        "hitl_events",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("trade_id", sa.Uuid(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("correlation_id", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hitl_events")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_hitl_events_idempotency_key")),
    )
    op.create_index("idx_events_trade", "hitl_events", ["trade_id"])

    _create_guards()


def downgrade() -> None:
    """Drop everything ``upgrade`` created, in reverse order."""
    _drop_guards()

    op.drop_index("idx_events_trade", table_name="hitl_events")
    op.drop_table("hitl_events")

    op.drop_index("idx_deep_link_unused", table_name="deep_link_tokens")
    op.drop_table("deep_link_tokens")

    op.drop_index("idx_audit_action", table_name="audit_log")
    op.drop_index("idx_audit_target", table_name="audit_log")
    op.drop_index("idx_audit_correlation", table_name="audit_log")
    op.drop_table("audit_log")

    op.drop_index("idx_snapshot_correlation", table_name="post_trade_snapshots")
    op.drop_index("idx_snapshot_approval", table_name="post_trade_snapshots")
    op.drop_table("post_trade_snapshots")

    op.drop_index("idx_hitl_trade", table_name="hitl_approvals")
    op.drop_index("idx_hitl_correlation", table_name="hitl_approvals")
    op.drop_index("idx_hitl_pending", table_name="hitl_approvals")
    op.drop_table("hitl_approvals")


def _dialect() -> str:
    return op.get_context().dialect.name


def _create_guards() -> None:
    dialect = _dialect()
    if dialect == "postgresql":
        op.execute(PG_REFUSE_FUNCTION)
        for name, table, event, level in PG_TRIGGERS:
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} "
                f"FOR EACH {level} EXECUTE FUNCTION hitl_refuse_delete()"
            )
    elif dialect == "sqlite":
        for name, table, event in SQLITE_TRIGGERS:
            verb = "changed" if event == "UPDATE" else "deleted"
            message = f"SEC-080: rows of {table} are never {verb}"
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {event} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
    else:
        # Refuse to build a schema that would silently lack the SEC-080 guards.
        raise NotImplementedError(f"SEC-080 guards are not written for {dialect}")


def _drop_guards() -> None:
    if _dialect() == "postgresql":
        for name, table, _event, _level in reversed(PG_TRIGGERS):
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        op.execute("DROP FUNCTION IF EXISTS hitl_refuse_delete()")
    else:
        for name, _table, _event in reversed(SQLITE_TRIGGERS):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
