"""The relational schema, SQLAlchemy 2 style; Alembic migrations in ``migrations/`` create it.

Approval and audit rows are never deleted: nothing here offers a delete path, and the database
refuses one (triggers created by the migrations).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    Uuid,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from hitl.hashing import RowHasher
from hitl.messages import GuardianStatus, PostTradeSnapshot
from hitl.models import ApprovalRequest, DecisionChannel, Side, TradeStatus
from store.engine import Decimal8, UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY, PostgreSQL wants BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention every constraint follows."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ApprovalRow(Base):
    """One approval per trade: the proposal, its decision, its lifecycle state and row hash."""

    __tablename__ = "hitl_approvals"
    __table_args__ = (
        CheckConstraint(_in("status", TradeStatus), name="status"),
        CheckConstraint(_in("side", Side), name="side"),
        CheckConstraint(
            f"decision_channel IS NULL OR {_in('decision_channel', DecisionChannel)}",
            name="decision_channel",
        ),
        Index(
            "idx_hitl_pending",
            "expires_at",
            postgresql_where=text("status = 'AWAITING_APPROVAL'"),
            sqlite_where=text("status = 'AWAITING_APPROVAL'"),
        ),
        Index("idx_hitl_correlation", "correlation_id"),
        Index("idx_hitl_trade", "trade_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    trade_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    instrument: Mapped[str] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(4))
    risk_pct: Mapped[Decimal] = mapped_column(Decimal8)
    confidence: Mapped[Decimal] = mapped_column(Decimal8)
    request_price: Mapped[Decimal] = mapped_column(Decimal8)
    reasoning_summary: Mapped[str] = mapped_column(Text)
    correlation_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decision_channel: Mapped[str | None] = mapped_column(String(16))
    decision_reason: Mapped[str | None] = mapped_column(String(64))
    comment: Mapped[str | None] = mapped_column(Text)
    approvers: Mapped[list[str] | None] = mapped_column(JSON)
    """The operators who approved, in order, when the approval needed two (four eyes,
    migration 0006); NULL otherwise. Covered by the row's MAC like every other field."""
    row_hash: Mapped[str] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64))
    """HMAC-SHA256 of the record under the RECORD key (``hitl.record_mac``); NULL only on rows
    unchanged since before migration 0004."""
    mac_key_id: Mapped[str | None] = mapped_column(String(64))


class PostTradeSnapshotRow(Base):
    """Market context captured right after acceptance; one per approval."""

    __tablename__ = "post_trade_snapshots"
    __table_args__ = (
        Index("idx_snapshot_approval", "approval_id", unique=True),
        Index("idx_snapshot_correlation", "correlation_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    approval_id: Mapped[int] = mapped_column(BigId, ForeignKey("hitl_approvals.id"))
    bid: Mapped[Decimal] = mapped_column(Decimal8)
    ask: Mapped[Decimal] = mapped_column(Decimal8)
    spread: Mapped[Decimal] = mapped_column(Decimal8)
    mid_price: Mapped[Decimal] = mapped_column(Decimal8)
    response_latency_ms: Mapped[Decimal] = mapped_column(Decimal8)
    price_deviation_pct: Mapped[Decimal] = mapped_column(Decimal8)
    correlation_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    mac: Mapped[str | None] = mapped_column(String(64))
    mac_key_id: Mapped[str | None] = mapped_column(String(64))


class AuditRow(Base):
    """Append-only audit trail; ``idempotency_key`` makes a retried activity write one entry."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("idx_audit_correlation", "correlation_id"),
        Index("idx_audit_target", "target_type", "target_id"),
        Index("idx_audit_action", "action"),
        Index("idx_audit_seq", "seq", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    actor_id: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str] = mapped_column(String(128))
    previous_state: Mapped[str | None] = mapped_column(String(32))
    new_state: Mapped[str | None] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    correlation_id: Mapped[str] = mapped_column(String(128))
    error_code: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    seq: Mapped[int | None] = mapped_column(BigInteger)
    """The entry's place in the hash chain: 1, 2, 3, ... gapless; NULL on entries from before
    the chain (covered by the genesis record of ``audit_chain_head``)."""
    mac_key_id: Mapped[str | None] = mapped_column(String(64))
    mac: Mapped[str | None] = mapped_column(String(64))
    chain: Mapped[str | None] = mapped_column(String(64))
    record_mac: Mapped[str | None] = mapped_column(String(64))
    """The MAC of the row this entry changed, as it left it (approvals, the Guardian)."""


class DeepLinkTokenRow(Base):
    """One-time deep links; ``token`` holds the SHA-256 of the token, never the token."""

    __tablename__ = "deep_link_tokens"
    __table_args__ = (
        Index(
            "idx_deep_link_unused",
            "trade_id",
            postgresql_where=text("used_at IS NULL"),
            sqlite_where=text("used_at IS NULL"),
        ),
    )

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    trade_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    correlation_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class EventRow(Base):
    """The events outbox: written in the transaction of the change it describes; ``id`` is the
    stream cursor."""

    __tablename__ = "hitl_events"
    __table_args__ = (Index("idx_events_trade", "trade_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_type: Mapped[str] = mapped_column(String(32))
    trade_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    correlation_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)


class NoticeRow(Base):
    """A notice to the operators, queued in the transaction of the change it tells (migration
    0008): the approval as that change left it, MAC'd; ``done_at`` once sent or abandoned."""

    __tablename__ = "hitl_notices"
    __table_args__ = (
        Index("idx_notices_trade", "trade_id"),
        Index(
            "idx_notices_pending",
            "id",
            sqlite_where=text("done_at IS NULL"),
            postgresql_where=text("done_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    trade_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    mac: Mapped[str] = mapped_column(String(64))
    mac_key_id: Mapped[str] = mapped_column(String(64))
    correlation_id: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    give_up_at: Mapped[datetime] = mapped_column(UtcDateTime)
    """Past it a notice that still fails is abandoned (the approval's window has gone by)."""
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """A dispatcher is sending it until then (another may take it after: a lease)."""
    done_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    outcome: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(String(500))


class ApiTokenRow(Base):
    """An API bearer token, stored only as its SHA-256; revoked tokens are kept for the record."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    principal: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    """When the token stops working (migration 0005); None: it lives until revoked."""


class GuardianStateRow(Base):
    """The Guardian kill-switch: one row, the one source of truth for whether trading is halted.

    Decisions read it in their own transaction, so a lock that has committed is seen by every
    decision that commits after it.
    """

    __tablename__ = "guardian_state"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    locked: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    changed_by: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    """Counts every lock and unlock: the id of a lock's cascade."""
    mac: Mapped[str | None] = mapped_column(String(64))
    """NULL only in the row's first state (unlocked, version 0), before any lock."""
    mac_key_id: Mapped[str | None] = mapped_column(String(64))


GUARDIAN_MAC_FIELDS = ("locked", "reason", "since", "changed_by", "version")
"""The Guardian row's columns its MAC covers."""


class AuditChainHeadRow(Base):
    """The audit chain's head: its last ``seq`` and chain value, moved by every append in the
    append's transaction (its row lock serialises appends), and the genesis record of the
    entries written before the chain (docs/audit.md)."""

    __tablename__ = "audit_chain_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    chain: Mapped[str] = mapped_column(String(64))
    genesis_count: Mapped[int] = mapped_column(BigInteger)
    genesis_digest: Mapped[str] = mapped_column(String(64))
    genesis_last_id: Mapped[int] = mapped_column(BigInteger)
    """Entries with this id or lower and no ``seq`` are the genesis's."""
    legacy_approval_last_id: Mapped[int] = mapped_column(BigInteger)
    """Approvals with this id or lower may still lack a MAC (unchanged since the migration)."""
    legacy_snapshot_last_id: Mapped[int] = mapped_column(BigInteger)
    """Post-trade snapshots with this id or lower have no audit entry of their own (recorded
    before migration 0007); every later one must have its ``snapshot.recorded`` entry."""
    unsealed_snapshot_last_id: Mapped[int] = mapped_column(BigInteger)
    """Snapshots with this id or lower may lack a MAC (recorded before migration 0004)."""


class AuditVerificationRow(Base):
    """The outcome of the worker's last check of the chain, which ``/readyz`` reports."""

    __tablename__ = "audit_verification"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checked_at: Mapped[datetime] = mapped_column(UtcDateTime)
    seq: Mapped[int] = mapped_column(BigInteger)
    chain: Mapped[str] = mapped_column(String(64))
    intact: Mapped[bool] = mapped_column(Boolean)
    problem: Mapped[str | None] = mapped_column(Text)


def approval_from_row(row: ApprovalRow) -> ApprovalRequest:
    """The domain record a stored row holds (raises ``pydantic.ValidationError`` if the row
    holds values no record could have, which callers treat as an integrity failure)."""
    values = {name: getattr(row, name) for name in ApprovalRequest.model_fields}
    values["approvers"] = tuple(values["approvers"] or ())
    return ApprovalRequest.model_validate(values)


def approval_or_none(row: ApprovalRow) -> ApprovalRequest | None:
    """The record a row holds, or None when it holds values no record could have."""
    try:
        return approval_from_row(row)
    except ValidationError:
        return None


def row_dump(found: ApprovalRequest | None, row: ApprovalRow) -> dict[str, Any]:
    """A row's values as found: as a record when they make one, else as text."""
    if found is not None:
        return found.to_dict()
    return {name: str(getattr(row, name)) for name in ApprovalRequest.model_fields}


def sealed(approval: ApprovalRequest) -> ApprovalRequest:
    """``approval`` with the row hash of its content, as it is stored."""
    return approval.model_copy(update={"row_hash": RowHasher.compute(approval)})


def approval_to_row_values(approval: ApprovalRequest) -> dict[str, Any]:
    """Column values for ``approval``; enums as their string values."""
    values: dict[str, Any] = {}
    for name in ApprovalRequest.model_fields:
        value = getattr(approval, name)
        values[name] = value.value if isinstance(value, Enum) else value
    values["approvers"] = list(approval.approvers) or None
    return values


def snapshot_from_row(row: PostTradeSnapshotRow, *, trade_id: uuid.UUID) -> PostTradeSnapshot:
    """The snapshot value a stored row holds."""
    return PostTradeSnapshot(
        trade_id=trade_id,
        bid=row.bid,
        ask=row.ask,
        spread=row.spread,
        mid_price=row.mid_price,
        response_latency_ms=row.response_latency_ms,
        price_deviation_pct=row.price_deviation_pct,
        correlation_id=row.correlation_id,
        created_at=row.created_at,
    )


def guardian_status_from_row(row: GuardianStateRow) -> GuardianStatus:
    """The Guardian status a row holds."""
    return GuardianStatus(
        locked=row.locked,
        reason=row.reason,
        since=row.since,
        changed_by=row.changed_by,
        version=row.version,
    )
