"""Properties the migrated schema guarantees on PostgreSQL and SQLite alike."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, inspect, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.expression import Executable

from hitl.decimals import PLACES
from hitl.models import DecisionChannel, Side, TradeStatus
from store.engine import Decimal8, session_factory
from store.tables import ApprovalRow, AuditRow, Base, EventRow, PostTradeSnapshotRow

SMALLEST = Decimal("0.00000001")
LARGEST = Decimal("9999999999.99999999")  # 10 integer digits, 8 places: NUMERIC(18,8)'s limit
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _decimal8_columns(row_type: type[Base]) -> tuple[str, ...]:
    """Every Decimal8 attribute of a row class, so a new price column is covered unasked."""
    return tuple(c.key for c in inspect(row_type).columns if isinstance(c.type, Decimal8))


APPROVAL_DECIMALS = _decimal8_columns(ApprovalRow)
SNAPSHOT_DECIMALS = _decimal8_columns(PostTradeSnapshotRow)


def _with_places(places: int) -> st.SearchStrategy[Decimal]:
    return st.decimals(
        min_value=SMALLEST,
        max_value=LARGEST,
        places=places,
        allow_nan=False,
        allow_infinity=False,
    )


# Inputs with 0..8 places: "1.5" must come back as 1.50000000, not merely as something equal.
positive_decimal18_8 = st.integers(min_value=0, max_value=PLACES).flatmap(_with_places)


def _approval(**overrides: Any) -> ApprovalRow:
    fields: dict[str, Any] = {
        "trade_id": uuid.uuid4(),
        "instrument": "EUR/USD",
        "side": "BUY",
        "risk_pct": Decimal("1.5"),
        "confidence": Decimal("0.75"),
        "request_price": Decimal("1.08421"),
        "reasoning_summary": "breakout above resistance",
        "correlation_id": "corr-1",
        "status": "AWAITING_APPROVAL",
        "requested_at": NOW,
        "expires_at": NOW + timedelta(minutes=5),
        "row_hash": "0" * 64,
    }
    fields.update(overrides)
    return ApprovalRow(**fields)


def _snapshot(approval_id: int, **overrides: Any) -> PostTradeSnapshotRow:
    fields: dict[str, Any] = dict.fromkeys(SNAPSHOT_DECIMALS, Decimal("1.1"))
    fields.update(approval_id=approval_id, correlation_id="corr-1", created_at=NOW)
    fields.update(overrides)
    return PostTradeSnapshotRow(**fields)


def _audit(**overrides: Any) -> AuditRow:
    fields: dict[str, Any] = {
        "actor_id": "alice",
        "action": "APPROVAL_DECIDED",
        "target_type": "approval",
        "target_id": "1",
        "previous_state": "AWAITING_APPROVAL",
        "new_state": "ACCEPTED",
        "payload": {"comment": "ok"},
        "correlation_id": "corr-1",
        "created_at": NOW,
        "idempotency_key": f"audit-{uuid.uuid4()}",
    }
    fields.update(overrides)
    return AuditRow(**fields)


def _event(**overrides: Any) -> EventRow:
    fields: dict[str, Any] = {
        "event_type": "APPROVAL_REQUESTED",
        "trade_id": uuid.uuid4(),
        "payload": {},
        "correlation_id": "corr-1",
        "created_at": NOW,
        "idempotency_key": f"event-{uuid.uuid4()}",
    }
    fields.update(overrides)
    return EventRow(**fields)


def _assert_kept_exactly(stored: Decimal, written: Decimal) -> None:
    assert stored == written
    assert stored.as_tuple().exponent == -PLACES, f"{stored} does not have {PLACES} places"


@settings(
    max_examples=30,
    deadline=None,
    # Safe to share the function-scoped engine: each example writes a new approval (new
    # trade_id) and its own snapshot, and reads back only those rows.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    approval_prices=st.fixed_dictionaries(dict.fromkeys(APPROVAL_DECIMALS, positive_decimal18_8)),
    snapshot_prices=st.fixed_dictionaries(dict.fromkeys(SNAPSHOT_DECIMALS, positive_decimal18_8)),
)
@example(
    approval_prices=dict.fromkeys(APPROVAL_DECIMALS, LARGEST),
    snapshot_prices=dict.fromkeys(SNAPSHOT_DECIMALS, SMALLEST),
)
@example(
    approval_prices=dict.fromkeys(APPROVAL_DECIMALS, Decimal("1")),
    snapshot_prices=dict.fromkeys(SNAPSHOT_DECIMALS, Decimal("0.1")),
)
async def test_property_8_price_fields_keep_decimal_18_8_precision(
    engine: AsyncEngine,
    approval_prices: dict[str, Decimal],
    snapshot_prices: dict[str, Decimal],
) -> None:
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        approval = _approval(**approval_prices)
        session.add(approval)
        await session.flush()
        snapshot = _snapshot(approval.id, **snapshot_prices)
        session.add(snapshot)

    # A new session has an empty identity map, so the values below come from the database.
    async with sessions() as session:
        stored_approval = await session.get(ApprovalRow, approval.id)
        stored_snapshot = await session.get(PostTradeSnapshotRow, snapshot.id)
    assert stored_approval is not None
    assert stored_snapshot is not None
    for name, written in approval_prices.items():
        _assert_kept_exactly(getattr(stored_approval, name), written)
    for name, written in snapshot_prices.items():
        _assert_kept_exactly(getattr(stored_snapshot, name), written)


async def test_property_11_approval_records_are_never_hard_deleted(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        approval = _approval()
        audit = _audit()
        session.add_all([approval, audit])

    refused: dict[str, Executable] = {
        "DELETE hitl_approvals": delete(ApprovalRow).where(ApprovalRow.id == approval.id),
        "DELETE audit_log": delete(AuditRow).where(AuditRow.id == audit.id),
        "UPDATE audit_log": update(AuditRow)
        .where(AuditRow.id == audit.id)
        .values(action="TAMPERED"),
    }
    if engine.dialect.name == "postgresql":
        # TRUNCATE bypasses row triggers; SQLite has no TRUNCATE at all.
        refused["TRUNCATE hitl_approvals"] = text("TRUNCATE hitl_approvals CASCADE")
        refused["TRUNCATE audit_log"] = text("TRUNCATE audit_log")
    for label, statement in refused.items():
        try:
            async with engine.begin() as conn:
                await conn.execute(statement)
        except IntegrityError as exc:
            if "SEC-080" not in str(exc.orig):
                pytest.fail(f"{label}: refused for another reason: {exc.orig}")
        else:
            pytest.fail(f"{label}: allowed by {engine.dialect.name}")

    # The ORM's own delete path meets the same wall.
    with pytest.raises(IntegrityError, match="SEC-080"):
        async with sessions.begin() as session:
            await session.delete(await session.get_one(ApprovalRow, approval.id))

    async with sessions() as session:
        stored_approval = await session.get(ApprovalRow, approval.id)
        stored_audit = await session.get(AuditRow, audit.id)
    assert stored_approval is not None
    assert stored_audit is not None
    assert stored_audit.action == "APPROVAL_DECIDED"

    # The guard must not freeze the lifecycle: approvals still change state.
    async with engine.begin() as conn:
        await conn.execute(
            update(ApprovalRow).where(ApprovalRow.id == approval.id).values(status="ACCEPTED")
        )
    async with sessions() as session:
        assert (await session.get_one(ApprovalRow, approval.id)).status == "ACCEPTED"


async def test_constraints_are_enforced(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        approval = _approval()
        audit = _audit()
        event = _event()
        session.add_all([approval, audit, event])
        await session.flush()
        session.add(_snapshot(approval.id))

    # Each case differs from a row accepted above in one field only.
    violations: dict[str, Callable[[], Base]] = {
        "unknown status": lambda: _approval(status="BOGUS"),
        "unknown side": lambda: _approval(side="HOLD"),
        "unknown decision channel": lambda: _approval(decision_channel="SMS"),
        "duplicate trade_id": lambda: _approval(trade_id=approval.trade_id),
        "missing row hash": lambda: _approval(row_hash=None),
        "second snapshot of an approval": lambda: _snapshot(approval.id),
        "snapshot of no approval": lambda: _snapshot(approval.id + 1000),
        "duplicate audit idempotency key": lambda: _audit(idempotency_key=audit.idempotency_key),
        "duplicate event idempotency key": lambda: _event(idempotency_key=event.idempotency_key),
    }
    for label, make_row in violations.items():
        try:
            async with sessions.begin() as session:
                session.add(make_row())
        except IntegrityError:
            continue
        pytest.fail(f"{label}: accepted by {engine.dialect.name}")

    # The checks do not outrun the domain: every status, side and channel it knows is accepted.
    async with sessions.begin() as session:
        session.add_all(
            [_approval(decision_channel=str(channel)) for channel in DecisionChannel]
            + [_approval(status=str(status)) for status in TradeStatus]
            + [_approval(side=str(side)) for side in Side]
        )
