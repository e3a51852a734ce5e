"""The seed's approval metrics, counted from the database when the API is scraped.

Counting rows rather than events makes every API replica report the same totals, exact however
many workers wrote them, retried or restarted: each approval is one row, decided once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, and_, case, cast, func, select

from hitl.metrics import LATENCY_BUCKETS, DecisionTotals
from hitl.models import DecisionChannel, TradeStatus
from store.engine import AsyncSession
from store.tables import ApprovalRow

_ACCEPTED = (
    TradeStatus.ACCEPTED.value,
    TradeStatus.FILLED.value,
    TradeStatus.CLOSED.value,
    TradeStatus.SETTLED.value,
)
"""An approval that ended ACCEPTED stays accepted as its trade fills, closes and settles."""


def _latency_seconds(dialect: str) -> Any:
    """Seconds from request to decision, as an SQL expression of this dialect."""
    if dialect == "sqlite":
        # Stored as ISO text; julianday() counts days (to about 50 microseconds near today).
        days = func.julianday(ApprovalRow.decided_at) - func.julianday(ApprovalRow.requested_at)
        return cast(days * 86_400.0, Float)
    return cast(func.extract("epoch", ApprovalRow.decided_at - ApprovalRow.requested_at), Float)


async def decision_totals(session: AsyncSession) -> DecisionTotals:
    """Requests, acceptances, rejections by reason and human response latencies, as stored."""
    by_outcome = await session.execute(
        select(ApprovalRow.status, ApprovalRow.decision_reason, func.count()).group_by(
            ApprovalRow.status, ApprovalRow.decision_reason
        )
    )
    requests = approvals = 0
    rejections: dict[str, int] = {}
    for status, reason, count in by_outcome.all():
        requests += count
        if status in _ACCEPTED:
            approvals += count
        elif status == TradeStatus.REJECTED.value and reason is not None:
            rejections[reason] = rejections.get(reason, 0) + count

    # As the worker observes it: decisions a human made (not the gateway), never below zero.
    latency = _latency_seconds(session.get_bind().dialect.name)
    clamped = case((latency < 0, 0.0), else_=latency)
    human = and_(
        ApprovalRow.decided_at.is_not(None),
        ApprovalRow.decision_channel.is_not(None),
        ApprovalRow.decision_channel != DecisionChannel.SYSTEM.value,
    )
    figures = (
        await session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(clamped), 0.0),
                *(
                    func.coalesce(func.sum(case((latency <= bound, 1), else_=0)), 0)
                    for bound in LATENCY_BUCKETS
                ),
            ).where(human)
        )
    ).one()
    return DecisionTotals(
        requests=requests,
        approvals=approvals,
        rejections=rejections,
        latency_count=int(figures[0]),
        latency_sum=float(figures[1]),
        latency_buckets=tuple(int(value) for value in figures[2:]),
    )
