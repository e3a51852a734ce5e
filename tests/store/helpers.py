"""Approvals for the store's tests: a fresh trade each, awaiting a decision."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hitl.messages import RecordRequestInput
from hitl.models import ApprovalRequest, Side, TradeProposal
from store import approvals
from store.engine import Sessions

NOW = datetime.now(UTC).replace(microsecond=0)


def new_approval(*, expires_in: timedelta = timedelta(minutes=5)) -> ApprovalRequest:
    """A new approval awaiting a decision, for a trade of its own."""
    proposal = TradeProposal(
        trade_id=uuid.uuid4(),
        instrument="EUR/USD",
        side=Side.BUY,
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.75"),
        request_price=Decimal("1.08421"),
        reasoning_summary="breakout above resistance",
        correlation_id=f"corr-{uuid.uuid4()}",
    )
    return ApprovalRequest.from_proposal(proposal, requested_at=NOW, expires_at=NOW + expires_in)


async def stored_approval(
    sessions: Sessions, *, expires_in: timedelta = timedelta(minutes=5)
) -> ApprovalRequest:
    """A new approval, recorded as the workflow's first activity records it."""
    recorded = await approvals.record_request(
        sessions,
        RecordRequestInput(approval=new_approval(expires_in=expires_in), requested_by="bot-1"),
    )
    return recorded.value
