"""Decision rules (hitl/decisions.py): who may decide, when, and what a decided approval answers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from hitl.decisions import (
    MAY_DECIDE,
    MAY_DRIVE_GUARDIAN,
    MAY_READ,
    MAY_READ_GUARDIAN,
    MAY_REPORT,
    MAY_REQUEST,
    guardian_rejection,
    may_see,
    refusal_at_door,
    refusal_of_decision,
    refusal_of_standing,
)
from hitl.errors import ErrorCode
from hitl.messages import DecisionCommand, GuardianLockNotice
from hitl.models import (
    ApprovalRequest,
    Decision,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeProposal,
    TradeStatus,
)
from hitl.principals import Principal, Role

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ALLOWED = ("alice", "bob")


def pending() -> ApprovalRequest:
    proposal = TradeProposal(
        trade_id=uuid.uuid4(),
        instrument="BTC-USD",
        side=Side.BUY,
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.8"),
        request_price=Decimal("100"),
        reasoning_summary="breakout",
        correlation_id="corr-1",
    )
    return ApprovalRequest.from_proposal(
        proposal, requested_at=NOW, expires_at=NOW + timedelta(minutes=5)
    )


def decided(
    approval: ApprovalRequest, status: TradeStatus, reason: DecisionReason, by: str = "alice"
) -> ApprovalRequest:
    return approval.model_copy(
        update={
            "status": status,
            "decision_reason": reason,
            "decided_by": by,
            "decided_at": NOW + timedelta(seconds=10),
            "decision_channel": DecisionChannel.API,
        }
    )


def command(operator: str = "alice", **changes: object) -> DecisionCommand:
    fields: dict[str, object] = {
        "operator_id": operator,
        "channel": DecisionChannel.API,
        "correlation_id": "corr-2",
        **changes,
    }
    return DecisionCommand.model_validate(fields)


def check(
    cmd: DecisionCommand,
    approval: ApprovalRequest | None,
    *,
    decision: Decision = Decision.APPROVE,
    guardian: GuardianLockNotice | None = None,
    now: datetime = NOW,
) -> ErrorCode | None:
    refusal = refusal_of_decision(
        cmd, decision, allowed_operators=ALLOWED, guardian=guardian, approval=approval, now=now
    )
    return None if refusal is None else refusal.error


def test_roles_are_admitted_only_to_their_own_actions() -> None:
    assert MAY_DECIDE == (Role.OPERATOR,)
    assert MAY_REQUEST == (Role.BOT,)
    assert set(MAY_DRIVE_GUARDIAN) == {Role.ADMIN, Role.GUARDIAN}
    # The guardian role reads the Guardian's state only (issue 17); bots read their own.
    assert set(MAY_READ) == {Role.OPERATOR, Role.ADMIN, Role.BOT}
    assert set(MAY_READ_GUARDIAN) == set(Role)
    assert set(MAY_REPORT) == {Role.BOT, Role.ADMIN}


def test_a_bot_sees_only_its_own_approvals_and_others_see_all() -> None:
    bot = Principal("bot-1", Role.BOT)
    assert may_see(bot, requested_by="bot-1")
    assert not may_see(bot, requested_by="bot-2")
    assert not may_see(bot, requested_by=None)
    for role in (Role.OPERATOR, Role.ADMIN):
        assert may_see(Principal("x", role), requested_by="bot-2")
    assert not may_see(Principal("risk", Role.GUARDIAN), requested_by="bot-1")


def test_who_requested_a_trade_never_decides_it() -> None:
    alice = Principal("alice", Role.OPERATOR)
    own = refusal_at_door(alice, claimed_by=None, allowed_operators=ALLOWED, requested_by="alice")
    assert own is not None and own.error is ErrorCode.UNAUTHORISED_OPERATOR
    assert (
        refusal_at_door(alice, claimed_by=None, allowed_operators=ALLOWED, requested_by="bot-1")
        is None
    )


def test_the_door_refuses_a_body_naming_someone_else_and_unlisted_operators() -> None:
    alice = Principal("alice", Role.OPERATOR)
    assert refusal_at_door(alice, claimed_by=None, allowed_operators=ALLOWED) is None
    assert refusal_at_door(alice, claimed_by="alice", allowed_operators=ALLOWED) is None
    impostor = refusal_at_door(alice, claimed_by="bob", allowed_operators=ALLOWED)
    assert impostor is not None and impostor.error is ErrorCode.UNAUTHORISED_OPERATOR
    assert "bob" in impostor.message
    unlisted = refusal_at_door(
        Principal("dana", Role.OPERATOR), claimed_by=None, allowed_operators=ALLOWED
    )
    assert unlisted is not None and unlisted.error is ErrorCode.UNAUTHORISED_OPERATOR


def test_who_and_through_which_channel() -> None:
    approval = pending()
    assert check(command(), approval) is None
    assert check(command("mallory"), approval) is ErrorCode.UNAUTHORISED_OPERATOR
    system = command(channel=DecisionChannel.SYSTEM)
    assert check(system, approval) is ErrorCode.UNAUTHORISED_OPERATOR


def test_a_locked_guardian_refuses_all_but_decided_approvals() -> None:
    notice = GuardianLockNotice(
        version=1, reason="drawdown", locked_by="admin", locked_at=NOW, correlation_id="corr-3"
    )
    approval = pending()
    assert check(command(), approval, guardian=notice) is ErrorCode.GUARDIAN_LOCKED
    assert check(command(), None, guardian=notice) is ErrorCode.GUARDIAN_LOCKED
    standing = decided(approval, TradeStatus.ACCEPTED, DecisionReason.OPERATOR_APPROVED)
    # A decided approval answers as decided (here: the same operator repeating it).
    assert check(command(), standing, guardian=notice) is None


def test_a_caller_that_gave_up_and_a_deadline_that_passed() -> None:
    approval = pending()
    late = command(not_after=NOW - timedelta(seconds=1))
    assert check(late, approval) is ErrorCode.SERVICE_UNAVAILABLE
    assert check(command(not_after=NOW), approval) is None
    assert check(command(), None) is None  # not recorded yet: the handler waits
    assert check(command(), approval, now=approval.expires_at) is ErrorCode.EXPIRED
    assert check(command(), approval, now=approval.expires_at - timedelta(microseconds=1)) is None


@pytest.mark.parametrize(
    ("status", "reason", "by", "decision", "expected"),
    [
        (TradeStatus.ACCEPTED, DecisionReason.OPERATOR_APPROVED, "alice", Decision.APPROVE, None),
        (TradeStatus.FILLED, DecisionReason.OPERATOR_APPROVED, "alice", Decision.APPROVE, None),
        (TradeStatus.REJECTED, DecisionReason.OPERATOR_REJECTED, "alice", Decision.REJECT, None),
        (
            TradeStatus.ACCEPTED,
            DecisionReason.OPERATOR_APPROVED,
            "bob",
            Decision.APPROVE,
            ErrorCode.ALREADY_DECIDED,
        ),
        (
            TradeStatus.ACCEPTED,
            DecisionReason.OPERATOR_APPROVED,
            "alice",
            Decision.REJECT,
            ErrorCode.ALREADY_DECIDED,
        ),
        (
            TradeStatus.REJECTED,
            DecisionReason.SLIPPAGE_EXCEEDED,
            "alice",
            Decision.APPROVE,
            ErrorCode.SLIPPAGE_EXCEEDED,
        ),
        (
            TradeStatus.REJECTED,
            DecisionReason.HITL_TIMEOUT,
            "system",
            Decision.APPROVE,
            ErrorCode.EXPIRED,
        ),
        (
            TradeStatus.REJECTED,
            DecisionReason.GUARDIAN_LOCK,
            "system",
            Decision.REJECT,
            ErrorCode.GUARDIAN_LOCKED,
        ),
    ],
)
def test_a_standing_decision_answers_all_but_its_decider_repeating_it(
    status: TradeStatus,
    reason: DecisionReason,
    by: str,
    decision: Decision,
    expected: ErrorCode | None,
) -> None:
    standing = decided(pending(), status, reason, by)
    # Long after the deadline: a decided approval never answers "expired" for that.
    late = standing.expires_at + timedelta(hours=1)
    refusal = refusal_of_standing(standing, operator_id="alice", decision=decision, at=late)
    assert (None if refusal is None else refusal.error) is expected
    if refusal is not None:
        assert refusal.approval == standing  # the caller gets the standing decision back


def test_guardian_rejection_names_who_locked_and_why() -> None:
    approval = pending()
    at = NOW + timedelta(seconds=3)
    rejected = guardian_rejection(approval, at=at, locked_by="admin", reason=None)
    assert rejected.status is TradeStatus.REJECTED
    assert rejected.decision_reason is DecisionReason.GUARDIAN_LOCK
    assert rejected.decision_channel is DecisionChannel.SYSTEM
    assert rejected.decided_at == at
    assert rejected.comment == "Guardian locked by admin: no reason given"
    assert rejected.trade_id == approval.trade_id
