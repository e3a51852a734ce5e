"""The console notifier (no Discord token): what it logs for a decision and for a first of two
approvals (four eyes, issue 17 item 2), so an operator reading the log is not misled."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from structlog.testing import capture_logs

from activities.market_providers import SimulatedMarketData
from activities.notifications import ConsoleNotifier
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from tests.temporal_fixtures import make_proposal, utcnow


def _waiting() -> ApprovalRequest:
    now = utcnow()
    proposal = make_proposal(SimulatedMarketData(jitter_percent=Decimal(0)))
    return ApprovalRequest.from_proposal(
        proposal, requested_at=now, expires_at=now + timedelta(minutes=5)
    )


async def test_a_first_of_two_approvals_is_not_logged_as_a_decision() -> None:
    waiting = _waiting().model_copy(update={"approvers": ("alice",)})
    with capture_logs() as logs:
        await ConsoleNotifier().approval_decided(waiting)
    [entry] = logs
    assert entry["event"] == "first of two approvals recorded"
    assert entry["result"] == TradeStatus.AWAITING_APPROVAL.value


async def test_a_decision_is_logged_as_one() -> None:
    accepted = _waiting().model_copy(
        update={
            "status": TradeStatus.ACCEPTED,
            "decided_by": "bob",
            "decided_at": utcnow(),
            "decision_reason": DecisionReason.OPERATOR_APPROVED,
            "decision_channel": DecisionChannel.API,
        }
    )
    with capture_logs() as logs:
        await ConsoleNotifier().approval_decided(accepted)
    [entry] = logs
    assert (entry["event"], entry["actor"], entry["result"]) == (
        "approval decided",
        "bob",
        "ACCEPTED",
    )
