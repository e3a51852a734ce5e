"""store.metrics: the seed's approval figures counted from the rows, alike on PostgreSQL and
SQLite (issue 18 item 8)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hitl.metrics import LATENCY_BUCKETS, DecisionTotals
from hitl.models import DecisionChannel, DecisionReason, Side, TradeStatus
from store.engine import AsyncEngine, Sessions, session_factory
from store.metrics import decision_totals
from store.tables import ApprovalRow

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


async def _row(
    sessions: Sessions,
    status: TradeStatus,
    *,
    reason: DecisionReason | None = None,
    channel: DecisionChannel | None = None,
    latency: float | None = None,
) -> None:
    decided = None if latency is None else T0 + timedelta(seconds=latency)
    async with sessions() as session, session.begin():
        session.add(
            ApprovalRow(
                trade_id=uuid.uuid4(),
                instrument="EUR/USD",
                side=Side.SELL.value,
                risk_pct=Decimal(1),
                confidence=Decimal("0.5"),
                request_price=Decimal("1.1612"),
                reasoning_summary="metrics",
                correlation_id=f"corr-{uuid.uuid4()}",
                status=status.value,
                requested_at=T0,
                expires_at=T0 + timedelta(minutes=5),
                decided_at=decided,
                decided_by=None if decided is None else "alice",
                decision_channel=None if channel is None else channel.value,
                decision_reason=None if reason is None else reason.value,
                row_hash="0" * 64,
            )
        )


async def test_an_empty_database_counts_nothing(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session:
        totals = await decision_totals(session)
    assert totals == DecisionTotals(
        requests=0,
        approvals=0,
        rejections={},
        latency_buckets=(0,) * len(LATENCY_BUCKETS),
        latency_count=0,
        latency_sum=0.0,
    )


async def test_totals_follow_the_rows(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    human = DecisionChannel.API
    await _row(sessions, TradeStatus.AWAITING_APPROVAL)
    await _row(
        sessions,
        TradeStatus.ACCEPTED,
        reason=DecisionReason.OPERATOR_APPROVED,
        channel=human,
        latency=0.5,
    )
    await _row(
        sessions,
        TradeStatus.SETTLED,
        reason=DecisionReason.OPERATOR_APPROVED,
        channel=DecisionChannel.DISCORD,
        latency=42.25,
    )
    await _row(
        sessions,
        TradeStatus.REJECTED,
        reason=DecisionReason.SLIPPAGE_EXCEEDED,
        channel=DecisionChannel.WEB,
        latency=7,
    )
    await _row(
        sessions,
        TradeStatus.REJECTED,
        reason=DecisionReason.HITL_TIMEOUT,
        channel=DecisionChannel.SYSTEM,
        latency=300,
    )
    await _row(
        sessions,
        TradeStatus.REJECTED,
        reason=DecisionReason.GUARDIAN_LOCK,
        channel=DecisionChannel.SYSTEM,
        latency=3,
    )
    await _row(
        sessions,
        TradeStatus.ACCEPTED,
        reason=DecisionReason.HITL_DISABLED,
        channel=DecisionChannel.SYSTEM,
        latency=0,
    )
    async with sessions() as session:
        totals = await decision_totals(session)
    assert totals.requests == 7
    assert totals.approvals == 3
    assert dict(totals.rejections) == {
        "SLIPPAGE_EXCEEDED": 1,
        "HITL_TIMEOUT": 1,
        "GUARDIAN_LOCK": 1,
    }
    assert totals.timeouts == 1
    assert totals.guardian_rejections == 1
    # Human decisions only: 0.5 s, 7 s and 42.25 s.
    assert totals.latency_count == 3
    assert abs(totals.latency_sum - 49.75) < 0.01
    expected = tuple(sum(1 for s in (0.5, 7, 42.25) if s <= b) for b in LATENCY_BUCKETS)
    assert totals.latency_buckets == expected
