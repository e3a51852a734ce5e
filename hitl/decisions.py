"""What answer a decision gets when the approval has already been decided."""

from __future__ import annotations

from hitl.errors import ErrorCode
from hitl.models import ApprovalRequest, Decision, DecisionReason, TradeStatus

_AFTER_ACCEPTANCE = (
    TradeStatus.ACCEPTED,
    TradeStatus.FILLED,
    TradeStatus.CLOSED,
    TradeStatus.SETTLED,
)


def refusal_for_decided(
    approval: ApprovalRequest, *, operator_id: str, decision: Decision
) -> ErrorCode | None:
    """The error a new decision on an already-decided approval gets, or None when it is the same
    operator repeating the decision that stands (a double click gets the standing result)."""
    if approval.decision_reason is DecisionReason.HITL_TIMEOUT:
        return ErrorCode.EXPIRED
    if approval.decision_reason is DecisionReason.GUARDIAN_LOCK:
        return ErrorCode.GUARDIAN_LOCKED
    if approval.decided_by == operator_id:
        if decision is Decision.APPROVE and approval.status in _AFTER_ACCEPTANCE:
            return None
        if (
            decision is Decision.REJECT
            and approval.decision_reason is DecisionReason.OPERATOR_REJECTED
        ):
            return None
        if (
            decision is Decision.APPROVE
            and approval.decision_reason is DecisionReason.SLIPPAGE_EXCEEDED
        ):
            return ErrorCode.SLIPPAGE_EXCEEDED
    return ErrorCode.ALREADY_DECIDED
