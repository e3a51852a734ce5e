"""Who may decide what, and when: the rules the workflow's validator and the Guardian apply.

Pure functions of their arguments (the workflow passes ``workflow.now()``), so the workflow, the
store and the tests apply exactly the same rules.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from hitl.errors import ErrorCode
from hitl.messages import SYSTEM_ACTOR, DecisionCommand, GuardianLockNotice
from hitl.models import ApprovalRequest, Decision, DecisionChannel, DecisionReason, TradeStatus
from hitl.principals import Principal, Role

# --- who may do what (the API admits each role only to its own routes) -------------------------

MAY_REQUEST = (Role.BOT,)
"""Roles that create approval requests."""
MAY_REPORT = (Role.BOT, Role.ADMIN)
"""Roles that report a trade's lifecycle (fill, close, settle): a bot for its own trades only."""
MAY_DECIDE = (Role.OPERATOR,)
"""Roles that approve or reject (and, among them, only the allowed operators)."""
MAY_READ = (Role.OPERATOR, Role.ADMIN, Role.BOT)
"""Roles that read approvals and follow their events: a bot only those it requested."""
MAY_READ_GUARDIAN = (Role.OPERATOR, Role.ADMIN, Role.BOT, Role.GUARDIAN)
"""Roles that read the Guardian's state (the ``guardian`` role reads nothing else)."""
MAY_DRIVE_GUARDIAN = (Role.ADMIN, Role.GUARDIAN)
"""Roles that lock and unlock the Guardian."""
SEES_ALL_APPROVALS = (Role.OPERATOR, Role.ADMIN)
"""Roles that see every approval; the others (bots) see only their own."""


def may_see(principal: Principal, *, requested_by: str | None) -> bool:
    """Whether ``principal`` may see an approval requested by ``requested_by`` (None: there is
    no such approval). To anyone else it does not exist: 404, never 403."""
    if principal.role in SEES_ALL_APPROVALS:
        return True
    return requested_by is not None and requested_by == principal.id


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a decision is refused: its code, a message for the caller, and the approval whose
    standing decision the caller gets back, when there is one."""

    error: ErrorCode
    message: str
    approval: ApprovalRequest | None = None


def refusal_at_door(
    principal: Principal,
    *,
    claimed_by: str | None,
    allowed_operators: Collection[str],
    requested_by: str | None = None,
) -> Refusal | None:
    """Whether the API refuses a decision before it reaches the workflow (SEC-090): the body
    may not name anyone but the token's principal, only allowed operators decide, and the
    principal that requested a trade never decides it (separation of duties)."""
    if claimed_by is not None and claimed_by != principal.id:
        return Refusal(
            ErrorCode.UNAUTHORISED_OPERATOR,
            f"the body names {claimed_by}, but the token is {principal.id}'s",
        )
    if principal.id not in allowed_operators:
        return Refusal(
            ErrorCode.UNAUTHORISED_OPERATOR, f"{principal.id} is not an allowed operator"
        )
    if requested_by is not None and requested_by == principal.id:
        return Refusal(
            ErrorCode.UNAUTHORISED_OPERATOR,
            f"{principal.id} requested this trade and may not decide it",
        )
    return None


def refusal_of_decision(
    command: DecisionCommand,
    decision: Decision,
    *,
    allowed_operators: Collection[str],
    guardian: GuardianLockNotice | None,
    approval: ApprovalRequest | None,
    now: datetime,
    requested_by: str | None = None,
) -> Refusal | None:
    """The workflow's check of a decision before it is admitted (its Update validator): who is
    deciding (never the principal that requested the trade), through which channel, whether the
    Guardian stands in the way, whether the caller still waits, and then
    :func:`refusal_of_standing`. ``approval`` None: not recorded yet, the handler waits for
    it."""
    if command.operator_id not in allowed_operators:
        return Refusal(
            ErrorCode.UNAUTHORISED_OPERATOR, f"{command.operator_id} may not decide approvals"
        )
    if requested_by is not None and command.operator_id == requested_by:
        return Refusal(
            ErrorCode.UNAUTHORISED_OPERATOR,
            f"{command.operator_id} requested this trade and may not decide it",
        )
    if command.channel is DecisionChannel.SYSTEM:
        return Refusal(ErrorCode.UNAUTHORISED_OPERATOR, "operators cannot decide as SYSTEM")
    if guardian is not None and not (approval is not None and approval.is_decided):
        return Refusal(ErrorCode.GUARDIAN_LOCKED, f"the Guardian is locked: {guardian.reason}")
    if command.not_after is not None and now > command.not_after:
        return Refusal(
            ErrorCode.SERVICE_UNAVAILABLE, "the decision arrived after its caller gave up"
        )
    if approval is None:
        return None
    return refusal_of_standing(approval, operator_id=command.operator_id, decision=decision, at=now)


def refusal_of_standing(
    approval: ApprovalRequest, *, operator_id: str, decision: Decision, at: datetime
) -> Refusal | None:
    """What the approval as it stands says to a decision received ``at``: a decided one refuses
    all but its own decider repeating it (:func:`refusal_for_decided`), an undecided one refuses
    once its deadline has come (SEC-013), and an operator who already gave one of the two
    approvals it needs (four eyes) may not give the second (SEC-014); rejecting stays open to
    everyone."""
    if approval.is_decided:
        refusal = refusal_for_decided(approval, operator_id=operator_id, decision=decision)
        if refusal is None:
            return None
        return Refusal(
            refusal,
            f"already {approval.status.value} by {approval.decided_by} "
            f"({approval.decision_reason})",
            approval,
        )
    if at >= approval.expires_at:
        return Refusal(ErrorCode.EXPIRED, f"approval of {approval.trade_id} has expired")
    if decision is Decision.APPROVE and operator_id in approval.approvers:
        return Refusal(
            ErrorCode.SAME_APPROVER,
            f"{operator_id} already approved {approval.trade_id}; its risk needs a second "
            "approval from a different operator (four eyes)",
            approval,
        )
    return None


# --- four eyes (separation of duties above a risk level) --------------------------------------

FOUR_EYES = 2
"""Approvals an approval needs above ``HITL_FOUR_EYES_RISK_PCT``: two different operators."""


def approvals_required(risk_pct: Decimal, threshold: Decimal | None) -> int:
    """How many different operators must approve a trade of ``risk_pct``: two strictly above
    ``threshold`` (the worker's ``HITL_FOUR_EYES_RISK_PCT``), one otherwise or when it is None
    (four eyes off)."""
    if threshold is not None and risk_pct > threshold:
        return FOUR_EYES
    return 1


@dataclass(frozen=True, slots=True)
class ApprovalStep:
    """What one more approval does: the approvers it leaves recorded, and whether it accepts
    (slippage permitting) or only records an approval while the approval keeps waiting."""

    approvers: tuple[str, ...]
    accepts: bool


def approval_step(approval: ApprovalRequest, operator_id: str, *, required: int) -> ApprovalStep:
    """``operator_id``'s approval of ``approval`` (already admitted by
    :func:`refusal_of_standing`, so not one of its approvers). With one approval required the
    record keeps no approvers (``decided_by`` is the decider) and the approval accepts; with
    more, the operator joins the approvers and the approval accepts once there are enough."""
    if required <= 1:
        return ApprovalStep(approvers=approval.approvers, accepts=True)
    approvers = (*approval.approvers, operator_id)
    return ApprovalStep(approvers=approvers, accepts=len(set(approvers)) >= required)


def four_eyes_held(
    approval: ApprovalRequest, *, requested_by: str, threshold: Decimal | None
) -> bool:
    """The separation-of-duties invariant of a stored approval: one accepted by operators
    (status ACCEPTED or later, reason OPERATOR_APPROVED) above ``threshold`` names two distinct
    approvers, neither of them the requester, the last its decider."""
    accepted = (
        approval.status in _AFTER_ACCEPTANCE
        and approval.decision_reason is DecisionReason.OPERATOR_APPROVED
    )
    if not accepted or approvals_required(approval.risk_pct, threshold) < FOUR_EYES:
        return True
    approvers = approval.approvers
    return (
        len(set(approvers)) >= FOUR_EYES
        and len(set(approvers)) == len(approvers)
        and requested_by not in approvers
        and approval.decided_by == approvers[-1]
    )


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
    if (
        decision is Decision.APPROVE
        and operator_id in approval.approvers
        and approval.status in _AFTER_ACCEPTANCE
    ):
        return None  # one of the two approvers of an accepted approval, approving again
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


def guardian_rejection(
    approval: ApprovalRequest, *, at: datetime, locked_by: str, reason: str | None
) -> ApprovalRequest:
    """``approval`` rejected because the Guardian is locked (not yet hashed)."""
    return approval.model_copy(
        update={
            "status": TradeStatus.REJECTED,
            "decided_at": at,
            "decided_by": SYSTEM_ACTOR,
            "decision_channel": DecisionChannel.SYSTEM,
            "decision_reason": DecisionReason.GUARDIAN_LOCK,
            "comment": guardian_lock_comment(locked_by=locked_by, reason=reason),
        }
    )


def guardian_lock_comment(*, locked_by: str, reason: str | None) -> str:
    """The comment of an approval the Guardian's lock rejected."""
    return f"Guardian locked by {locked_by}: {reason or 'no reason given'}"
