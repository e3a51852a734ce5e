"""Four eyes (issue 17 item 2) on the dev server, through ApprovalClient, the worker and a real
SQLite database: above the worker's ``four_eyes_risk_pct`` an approval needs two different
operators; the first approval is recorded while the approval keeps waiting."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from hitl.decisions import four_eyes_held
from hitl.errors import ErrorCode, HITLError
from hitl.messages import DecisionCommand, GuardianCommand
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from store.audit_record import verify_record
from store.integrity import record_keys
from store.tables import ApprovalRow, AuditRow, EventRow, approval_from_row
from tests.temporal_fixtures import Gateway, make_proposal, start_gateway, wait_until
from workflows.client import GuardianClient

THRESHOLD = Decimal("2.0")
HIGH_RISK = Decimal("2.5")


def command(operator: str, comment: str | None = None) -> DecisionCommand:
    return DecisionCommand(
        operator_id=operator,
        channel=DecisionChannel.API,
        comment=comment,
        correlation_id=f"corr-{operator}-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture(params=[100, 0], ids=["cached", "no-cache"])
async def four_eyes(
    request: pytest.FixtureRequest,
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Gateway]:
    """A gateway whose worker asks two operators above 2 % risk (alice and bob may decide);
    with the workflow cache on, and off (every task replays the history so far, so the
    four-eyes path is replayed with its patch marker as a restarted worker would)."""
    gw = await start_gateway(
        dev_env,
        sqlite_sessions,
        max_cached_workflows=request.param,
        four_eyes_risk_pct=THRESHOLD,
    )
    async with gw.worker:
        yield gw


async def request(gw: Gateway, risk: Decimal = HIGH_RISK, requested_by: str = "bot-1") -> uuid.UUID:
    proposal = make_proposal(gw.market).model_copy(update={"risk_pct": risk})
    handle = await gw.client.request_approval(proposal, requested_by=requested_by)
    await wait_until(lambda: handle.current())
    return proposal.trade_id


async def stored(gw: Gateway, trade_id: uuid.UUID) -> ApprovalRequest:
    async with gw.sessions() as session:
        row = (
            await session.execute(select(ApprovalRow).where(ApprovalRow.trade_id == trade_id))
        ).scalar_one()
        return approval_from_row(row)


async def audit_actions(gw: Gateway, trade_id: uuid.UUID) -> list[tuple[str, str]]:
    async with gw.sessions() as session:
        rows = await session.execute(
            select(AuditRow.action, AuditRow.actor_id)
            .where(AuditRow.target_id == str(trade_id), AuditRow.target_type == "approval")
            .order_by(AuditRow.id)
        )
        return [(action, actor) for action, actor in rows.all()]


async def event_types(gw: Gateway, trade_id: uuid.UUID) -> list[str]:
    async with gw.sessions() as session:
        rows = await session.execute(
            select(EventRow.event_type).where(EventRow.trade_id == trade_id).order_by(EventRow.id)
        )
        return list(rows.scalars())


async def record_intact(gw: Gateway) -> bool:
    """The audit chain, every approval row against its MAC and its last entry's record MAC."""
    engine = gw.sessions.kw["bind"]
    report = await verify_record(engine, record_keys())
    return report.intact


async def test_two_different_operators_accept_and_both_are_recorded(four_eyes: Gateway) -> None:
    trade_id = await request(four_eyes)
    handle = four_eyes.client.approval(trade_id)

    first = await handle.approve(command("alice", "looks right"))
    assert first.status is TradeStatus.AWAITING_APPROVAL
    assert first.approvers == ("alice",)
    assert first.decided_at is None
    row = await stored(four_eyes, trade_id)
    assert (row.status, row.approvers) == (TradeStatus.AWAITING_APPROVAL, ("alice",))
    assert ("approval.approved_once", "alice") in await audit_actions(four_eyes, trade_id)
    assert await event_types(four_eyes, trade_id) == ["hitl.created", "hitl.approved_once"]
    assert await record_intact(four_eyes)
    # The first approval is shown to the operators (Discord edits its message with it).
    await wait_until(
        lambda: any(
            a.trade_id == trade_id and a.approvers == ("alice",) and not a.is_decided
            for a in four_eyes.notifier.decided
        )
    )

    second = await handle.approve(command("bob"))
    assert second.status is TradeStatus.ACCEPTED
    assert second.decision_reason is DecisionReason.OPERATOR_APPROVED
    assert (second.decided_by, second.approvers) == ("bob", ("alice", "bob"))
    row = await stored(four_eyes, trade_id)
    assert row.approvers == ("alice", "bob")
    assert four_eyes_held(row, requested_by="bot-1", threshold=THRESHOLD)
    assert [a for a, _ in await audit_actions(four_eyes, trade_id)][-2:] == [
        "approval.approved_once",
        "approval.decided",
    ]
    assert await record_intact(four_eyes)
    # The first approver approving again gets the standing result, not a second acceptance.
    again = await handle.approve(command("alice"))
    assert again.status is TradeStatus.ACCEPTED


async def test_the_same_operator_twice_is_refused_409_and_writes_nothing(
    four_eyes: Gateway,
) -> None:
    trade_id = await request(four_eyes)
    handle = four_eyes.client.approval(trade_id)
    await handle.approve(command("alice"))
    before = await audit_actions(four_eyes, trade_id)

    with pytest.raises(HITLError) as refused:
        await handle.approve(command("alice"))
    assert refused.value.error is ErrorCode.SAME_APPROVER
    assert refused.value.error.http_status == 409
    assert await audit_actions(four_eyes, trade_id) == before
    row = await stored(four_eyes, trade_id)
    assert (row.status, row.approvers) == (TradeStatus.AWAITING_APPROVAL, ("alice",))


async def test_a_rejection_after_one_approval_ends_it(four_eyes: Gateway) -> None:
    trade_id = await request(four_eyes)
    handle = four_eyes.client.approval(trade_id)
    await handle.approve(command("alice"))

    rejected = await handle.reject(command("bob", "too much risk today"))
    assert rejected.status is TradeStatus.REJECTED
    assert rejected.decision_reason is DecisionReason.OPERATOR_REJECTED
    assert (rejected.decided_by, rejected.approvers) == ("bob", ("alice",))
    with pytest.raises(HITLError) as late:
        await handle.approve(command("bob"))
    assert late.value.error is ErrorCode.ALREADY_DECIDED
    assert (await stored(four_eyes, trade_id)).status is TradeStatus.REJECTED


async def test_the_first_approver_may_still_reject(four_eyes: Gateway) -> None:
    trade_id = await request(four_eyes)
    handle = four_eyes.client.approval(trade_id)
    await handle.approve(command("alice"))
    rejected = await handle.reject(command("alice", "changed my mind"))
    assert (rejected.status, rejected.decided_by) == (TradeStatus.REJECTED, "alice")


async def test_the_deadline_applies_after_one_approval(
    dev_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    gw = await start_gateway(
        dev_env, sqlite_sessions, four_eyes_risk_pct=THRESHOLD, timeout_seconds=8
    )
    async with gw.worker:
        trade_id = await request(gw)
        handle = gw.client.approval(trade_id)
        first = await handle.approve(command("alice"))
        assert first.status is TradeStatus.AWAITING_APPROVAL

        final = await handle.outcome()
        assert final.status is TradeStatus.REJECTED
        assert final.decision_reason is DecisionReason.HITL_TIMEOUT
        assert final.approvers == ("alice",)
        assert (await stored(gw, trade_id)).decision_reason is DecisionReason.HITL_TIMEOUT
        with pytest.raises(HITLError) as late:
            await handle.approve(command("bob"))
        assert late.value.error is ErrorCode.EXPIRED
        assert await record_intact(gw)


async def test_two_operators_approving_at_once_accept_exactly_once(four_eyes: Gateway) -> None:
    trade_id = await request(four_eyes)
    handle = four_eyes.client.approval(trade_id)

    results = await asyncio.gather(handle.approve(command("alice")), handle.approve(command("bob")))
    statuses = sorted(result.status.value for result in results)
    assert statuses == ["ACCEPTED", "AWAITING_APPROVAL"]
    row = await stored(four_eyes, trade_id)
    assert row.status is TradeStatus.ACCEPTED
    assert set(row.approvers) == {"alice", "bob"} and len(row.approvers) == 2
    assert row.decided_by == row.approvers[-1]
    actions = [action for action, _ in await audit_actions(four_eyes, trade_id)]
    assert actions.count("approval.approved_once") == 1
    assert actions.count("approval.decided") == 1


async def test_the_same_operator_approving_twice_at_once_counts_once(
    four_eyes: Gateway,
) -> None:
    trade_id = await request(four_eyes)
    handle = four_eyes.client.approval(trade_id)

    results = await asyncio.gather(
        handle.approve(command("alice")),
        handle.approve(command("alice")),
        return_exceptions=True,
    )
    answers = [r for r in results if isinstance(r, ApprovalRequest)]
    refusals = [r for r in results if isinstance(r, HITLError)]
    assert len(answers) == 1 and len(refusals) == 1, results
    assert answers[0].status is TradeStatus.AWAITING_APPROVAL
    assert refusals[0].error is ErrorCode.SAME_APPROVER
    row = await stored(four_eyes, trade_id)
    assert (row.status, row.approvers) == (TradeStatus.AWAITING_APPROVAL, ("alice",))


async def test_at_or_below_the_threshold_one_approval_accepts(four_eyes: Gateway) -> None:
    for risk in (Decimal("1.5"), THRESHOLD):
        trade_id = await request(four_eyes, risk=risk)
        accepted = await four_eyes.client.approval(trade_id).approve(command("alice"))
        assert (accepted.status, accepted.decided_by) == (TradeStatus.ACCEPTED, "alice")
        assert accepted.approvers == ()


async def test_unset_threshold_means_one_approval_at_any_risk(gateway: Gateway) -> None:
    assert gateway.policy.four_eyes_risk_pct is None
    trade_id = await request(gateway, risk=Decimal("9.5"))
    accepted = await gateway.client.approval(trade_id).approve(command("alice"))
    assert (accepted.status, accepted.approvers) == (TradeStatus.ACCEPTED, ())


async def test_the_requester_may_not_approve_its_own_trade(four_eyes: Gateway) -> None:
    # An operator principal that requested the trade (the API refuses this at its door too).
    trade_id = await request(four_eyes, requested_by="alice")
    handle = four_eyes.client.approval(trade_id)
    with pytest.raises(HITLError) as refused:
        await handle.approve(command("alice"))
    assert refused.value.error is ErrorCode.UNAUTHORISED_OPERATOR
    assert (await stored(four_eyes, trade_id)).approvers == ()


async def test_a_guardian_lock_after_one_approval_rejects_it_keeping_the_approver(
    four_eyes: Gateway,
) -> None:
    trade_id = await request(four_eyes)
    handle = four_eyes.client.approval(trade_id)
    await handle.approve(command("alice"))
    guardian = GuardianClient(four_eyes.env.client, task_queue=four_eyes.task_queue)
    await guardian.lock(GuardianCommand(reason="drawdown", by="admin", correlation_id="c-lock"))
    try:
        final = await handle.outcome()
        assert (final.status, final.decision_reason) == (
            TradeStatus.REJECTED,
            DecisionReason.GUARDIAN_LOCK,
        )
        assert final.approvers == ("alice",)
        assert (await stored(four_eyes, trade_id)).approvers == ("alice",)
        with pytest.raises(HITLError) as refused:
            await handle.approve(command("bob"))
        assert refused.value.error is ErrorCode.GUARDIAN_LOCKED
        assert await record_intact(four_eyes)
    finally:
        await guardian.unlock(GuardianCommand(by="admin", correlation_id="c-unlock"))


def test_four_eyes_histories_are_committed_for_the_replay_test() -> None:
    # tests/workflows/test_replay.py replays every committed history; these hold the four-eyes
    # path (its patch marker, a first approval, then acceptance, rejection or expiry).
    folder = Path(__file__).parent / "histories"
    for path in ("accept", "reject", "expire"):
        history = json.loads((folder / f"four-eyes-{path}-v6.json").read_text())
        patches = [
            json.loads(base64.b64decode(payload["data"]))["id"]
            for event in history["events"]
            if event["eventType"] == "EVENT_TYPE_MARKER_RECORDED"
            for payload in event["markerRecordedEventAttributes"]
            .get("details", {})
            .get("patch-data", {})
            .get("payloads", [])
        ]
        assert "four-eyes" in patches, path
