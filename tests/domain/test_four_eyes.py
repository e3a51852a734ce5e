"""Four eyes as a property (issue 17 item 2): whatever operators do, in whatever order, an
approval ACCEPTED above the threshold names two distinct approvers, neither the requester.

The sequence of decisions is applied exactly as ``ApprovalWorkflow`` applies them, one at a time
under its lock: the Update validator's :func:`refusal_of_decision`, then in the handler
:func:`refusal_of_standing` again and :func:`approval_step`; the slippage check is drawn (it
can only turn an acceptance into a rejection). tests/workflows/test_four_eyes.py runs the same
rules through the real workflow.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import hypothesis.strategies as st
from hypothesis import given

from hitl.decisions import (
    approval_step,
    approvals_required,
    four_eyes_held,
    refusal_of_decision,
    refusal_of_standing,
)
from hitl.errors import ErrorCode
from hitl.messages import DecisionCommand
from hitl.models import (
    ApprovalRequest,
    Decision,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeStatus,
)
from tests.strategies import approval_requests

OPERATORS = ("alice", "bob", "carol", "bot-1")
"""Who may decide in this property; ``bot-1`` is also a possible requester."""

thresholds = st.none() | st.decimals(min_value=0, max_value=5, places=2)
steps = st.lists(
    st.tuples(st.sampled_from(OPERATORS), st.sampled_from(Decision), st.booleans()),
    max_size=8,
)


def apply(
    approval: ApprovalRequest,
    operator: str,
    decision: Decision,
    *,
    within_slippage: bool,
    requested_by: str,
    threshold: Decimal | None,
    step: int,
) -> tuple[ApprovalRequest, ErrorCode | None]:
    """One decision, as the workflow's validator and handler take it."""
    now = approval.requested_at + timedelta(microseconds=step)
    command = DecisionCommand(
        operator_id=operator, channel=DecisionChannel.API, correlation_id=f"c-{step}"
    )
    refusal = refusal_of_decision(
        command,
        decision,
        allowed_operators=OPERATORS,
        guardian=None,
        approval=approval,
        now=now,
        requested_by=requested_by,
    )
    if refusal is None:
        refusal = refusal_of_standing(approval, operator_id=operator, decision=decision, at=now)
    if refusal is not None:
        return approval, refusal.error
    if approval.is_decided:
        return approval, None
    decided = {
        "decided_at": now,
        "decided_by": operator,
        "decision_channel": DecisionChannel.API,
    }
    if decision is Decision.REJECT:
        return approval.model_copy(
            update={
                **decided,
                "status": TradeStatus.REJECTED,
                "decision_reason": DecisionReason.OPERATOR_REJECTED,
            }
        ), None
    moved = approval_step(
        approval, operator, required=approvals_required(approval.risk_pct, threshold)
    )
    if not moved.accepts:
        return approval.model_copy(update={"approvers": moved.approvers}), None
    status, reason = (
        (TradeStatus.ACCEPTED, DecisionReason.OPERATOR_APPROVED)
        if within_slippage
        else (TradeStatus.REJECTED, DecisionReason.SLIPPAGE_EXCEEDED)
    )
    return approval.model_copy(
        update={
            **decided,
            "status": status,
            "decision_reason": reason,
            "approvers": moved.approvers,
        }
    ), None


@given(
    approval=approval_requests(statuses=(TradeStatus.AWAITING_APPROVAL,), decided=False),
    threshold=thresholds,
    requested_by=st.sampled_from(("bot-1", "alice")),
    decisions=steps,
)
def test_accepted_above_the_threshold_has_two_distinct_approvers_not_the_requester(
    approval: ApprovalRequest,
    threshold: Decimal | None,
    requested_by: str,
    decisions: list[tuple[str, Decision, bool]],
) -> None:
    # Long enough a window that the deadline never intervenes: the property is about who.
    approval = approval.model_copy(
        update={"expires_at": approval.requested_at + timedelta(days=1), "approvers": ()}
    )
    required = approvals_required(approval.risk_pct, threshold)
    for step, (operator, decision, within) in enumerate(decisions):
        before = approval
        approval, refused = apply(
            approval,
            operator,
            decision,
            within_slippage=within,
            requested_by=requested_by,
            threshold=threshold,
            step=step,
        )
        assert four_eyes_held(approval, requested_by=requested_by, threshold=threshold)
        if operator == requested_by:
            assert approval == before, "the requester changed the approval"
        if refused is ErrorCode.SAME_APPROVER:
            assert required == 2 and operator in before.approvers and not before.is_decided
        if approval.status is TradeStatus.ACCEPTED:
            assert len(set(approval.approvers)) == len(approval.approvers)
            if required == 2:
                assert len(approval.approvers) == 2
                assert requested_by not in approval.approvers
                assert approval.decided_by == approval.approvers[-1]
            else:
                assert approval.approvers == ()
        if required == 1:
            assert approval.approvers == ()
        elif not approval.is_decided:
            assert len(approval.approvers) <= 1


def accepted_record(*, risk: Decimal, approvers: tuple[str, ...]) -> ApprovalRequest:
    requested = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    return ApprovalRequest(
        trade_id=uuid.UUID("6f1c1d2e-8a4b-4c3d-9e5f-0a1b2c3d4e5f"),
        instrument="EUR/USD",
        side=Side.BUY,
        risk_pct=risk,
        confidence=Decimal("0.8"),
        request_price=Decimal("1.1612"),
        reasoning_summary="Breakout retest.",
        correlation_id="corr-four-eyes",
        status=TradeStatus.ACCEPTED,
        requested_at=requested,
        expires_at=requested + timedelta(minutes=5),
        decided_at=requested + timedelta(minutes=1),
        decided_by=approvers[-1] if approvers else "alice",
        decision_channel=DecisionChannel.API,
        decision_reason=DecisionReason.OPERATOR_APPROVED,
        approvers=approvers,
    )


def test_the_invariant_catches_an_acceptance_by_one_operator() -> None:
    """The check can fail: one approver, or the requester among them, above the threshold."""
    record = accepted_record(risk=Decimal("2.5"), approvers=("alice",))
    assert not four_eyes_held(record, requested_by="bot-1", threshold=Decimal("2.0"))
    record = accepted_record(risk=Decimal("2.5"), approvers=("bot-1", "alice"))
    assert not four_eyes_held(record, requested_by="bot-1", threshold=Decimal("2.0"))
    record = accepted_record(risk=Decimal("2.5"), approvers=("bob", "alice"))
    assert four_eyes_held(record, requested_by="bot-1", threshold=Decimal("2.0"))
    assert four_eyes_held(
        accepted_record(risk=Decimal("2.0"), approvers=()),
        requested_by="bot-1",
        threshold=Decimal("2.0"),
    )
    assert four_eyes_held(
        accepted_record(risk=Decimal("9"), approvers=()), requested_by="bot-1", threshold=None
    )
