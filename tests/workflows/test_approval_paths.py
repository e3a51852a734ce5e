"""The approval workflow on the dev server, end to end through ApprovalClient, activities and a
real SQLite database."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from temporalio.api.enums.v1 import EventType

from hitl.errors import ErrorCode, HITLError
from hitl.hashing import RowHasher
from hitl.messages import DecisionCommand, LifecycleCommand
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from store.tables import ApprovalRow, AuditRow, EventRow, PostTradeSnapshotRow, approval_from_row
from tests.temporal_fixtures import Gateway, make_proposal, wait_until
from workflows.approval import ApprovalWorkflow


def command(
    operator: str = "alice",
    channel: DecisionChannel = DecisionChannel.API,
    comment: str | None = None,
) -> DecisionCommand:
    return DecisionCommand(
        operator_id=operator, channel=channel, comment=comment, correlation_id="corr-decision"
    )


async def stored(gw: Gateway, trade_id: uuid.UUID) -> ApprovalRequest | None:
    async with gw.sessions() as session:
        row = (
            await session.execute(select(ApprovalRow).where(ApprovalRow.trade_id == trade_id))
        ).scalar_one_or_none()
        return approval_from_row(row) if row is not None else None


async def events(gw: Gateway, trade_id: uuid.UUID) -> list[str]:
    async with gw.sessions() as session:
        rows = await session.execute(
            select(EventRow.event_type).where(EventRow.trade_id == trade_id).order_by(EventRow.id)
        )
        return list(rows.scalars())


async def audits(gw: Gateway, trade_id: uuid.UUID) -> list[AuditRow]:
    async with gw.sessions() as session:
        rows = await session.execute(
            select(AuditRow).where(AuditRow.target_id == str(trade_id)).order_by(AuditRow.id)
        )
        return list(rows.scalars())


async def requested(gw: Gateway) -> tuple[uuid.UUID, ApprovalRequest]:
    proposal = make_proposal(gw.market)
    handle = await gw.client.request_approval(proposal, requested_by="bot-1")
    await wait_until(lambda: handle.current())
    approval = await handle.current()
    assert approval is not None
    return proposal.trade_id, approval


async def test_request_is_recorded_awaiting_approval_with_hash_audit_event_and_notice(
    gateway: Gateway,
) -> None:
    trade_id, approval = await requested(gateway)
    row = await stored(gateway, trade_id)
    assert row is not None
    assert row.status is TradeStatus.AWAITING_APPROVAL
    assert row.expires_at - row.requested_at == (approval.expires_at - approval.requested_at)
    assert (row.expires_at - row.requested_at).total_seconds() == 300
    assert RowHasher.verify(row)
    assert await events(gateway, trade_id) == ["hitl.created"]
    [entry] = await audits(gateway, trade_id)
    assert (entry.actor_id, entry.previous_state, entry.new_state) == (
        "bot-1",
        "PENDING",
        "AWAITING_APPROVAL",
    )
    await wait_until(lambda: any(a.trade_id == trade_id for a in gateway.notifier.requested))


async def test_approve_ends_accepted_with_snapshot_and_lifecycle_to_settled(
    gateway: Gateway,
) -> None:
    trade_id, _ = await requested(gateway)
    handle = gateway.client.approval(trade_id)
    final = await handle.approve(command(comment="looks right"))
    assert final.status is TradeStatus.ACCEPTED
    assert final.decision_reason is DecisionReason.OPERATOR_APPROVED
    assert (final.decided_by, final.decision_channel, final.comment) == (
        "alice",
        DecisionChannel.API,
        "looks right",
    )
    assert await handle.outcome() == final
    row = await stored(gateway, trade_id)
    assert row == final and RowHasher.verify(row)

    async def snapshot_count() -> int:
        async with gateway.sessions() as session:
            return int(
                (
                    await session.execute(select(func.count()).select_from(PostTradeSnapshotRow))
                ).scalar_one()
            )

    await wait_until(lambda: snapshot_count())
    for target in (TradeStatus.FILLED, TradeStatus.CLOSED, TradeStatus.SETTLED):
        moved = await handle.advance(
            LifecycleCommand(
                target=target,
                reported_by="bot-1",
                correlation_id="c",
                details={"fill_price": "1.1"},
            )
        )
        assert moved.status is target
    settled = await gateway.env.client.get_workflow_handle(
        handle.workflow_id, result_type=ApprovalRequest
    ).result()
    assert settled.status is TradeStatus.SETTLED
    assert await events(gateway, trade_id) == [
        "hitl.created",
        "hitl.decided",
        "hitl.lifecycle",
        "hitl.lifecycle",
        "hitl.lifecycle",
    ]
    assert [(a.previous_state, a.new_state) for a in await audits(gateway, trade_id)] == [
        ("PENDING", "AWAITING_APPROVAL"),
        ("AWAITING_APPROVAL", "ACCEPTED"),
        (None, None),  # snapshot.recorded: the post-trade snapshot's own entry
        ("ACCEPTED", "FILLED"),
        ("FILLED", "CLOSED"),
        ("CLOSED", "SETTLED"),
    ]


async def test_reject_ends_rejected_with_operator_reason(gateway: Gateway) -> None:
    trade_id, _ = await requested(gateway)
    final = await gateway.client.approval(trade_id).reject(
        command("bob", DecisionChannel.WEB, "too risky")
    )
    assert final.status is TradeStatus.REJECTED
    assert final.decision_reason is DecisionReason.OPERATOR_REJECTED
    assert final.comment == "too risky"
    assert await events(gateway, trade_id) == ["hitl.created", "hitl.decided"]


async def test_slippage_over_the_limit_rejects_with_sec_050(gateway: Gateway) -> None:
    trade_id, approval = await requested(gateway)
    gateway.market.set_price(approval.instrument, approval.request_price * Decimal("1.01"))
    with pytest.raises(HITLError) as raised:
        await gateway.client.approval(trade_id).approve(command())
    assert raised.value.error is ErrorCode.SLIPPAGE_EXCEEDED
    row = await stored(gateway, trade_id)
    assert row is not None and row.status is TradeStatus.REJECTED
    assert row.decision_reason is DecisionReason.SLIPPAGE_EXCEEDED
    assert raised.value.details["approval"] == row
    # The same operator clicking again gets the same answer, not a second decision.
    with pytest.raises(HITLError) as again:
        await gateway.client.approval(trade_id).approve(command())
    assert again.value.error is ErrorCode.SLIPPAGE_EXCEEDED


async def test_unlisted_operator_is_refused_without_writing_history(gateway: Gateway) -> None:
    trade_id, _ = await requested(gateway)
    handle = gateway.client.approval(trade_id)
    with pytest.raises(HITLError) as raised:
        await handle.approve(command("mallory"))
    assert raised.value.error is ErrorCode.UNAUTHORISED_OPERATOR
    history = await gateway.env.client.get_workflow_handle(handle.workflow_id).fetch_history()
    update_events = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
    }
    assert not [e for e in history.events if e.event_type in update_events]
    row = await stored(gateway, trade_id)
    assert row is not None and row.status is TradeStatus.AWAITING_APPROVAL


async def test_two_decisions_at_once_exactly_one_wins(gateway: Gateway) -> None:
    trade_id, _ = await requested(gateway)
    handle = gateway.client.approval(trade_id)
    results = await asyncio.gather(
        handle.approve(command("alice", DecisionChannel.API)),
        handle.reject(command("bob", DecisionChannel.DISCORD, "no")),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, ApprovalRequest)]
    losers = [r for r in results if isinstance(r, HITLError)]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].error is ErrorCode.ALREADY_DECIDED
    assert losers[0].details["approval"].decided_by == winners[0].decided_by
    assert (await events(gateway, trade_id)).count("hitl.decided") == 1


async def test_same_operator_repeating_gets_the_standing_result(gateway: Gateway) -> None:
    trade_id, _ = await requested(gateway)
    handle = gateway.client.approval(trade_id)
    first = await handle.reject(command("bob"))
    assert await handle.reject(command("bob")) == first
    with pytest.raises(HITLError) as raised:
        await handle.approve(command("alice"))
    assert raised.value.error is ErrorCode.ALREADY_DECIDED
    assert len([a for a in await audits(gateway, trade_id) if a.action == "approval.decided"]) == 1


async def test_second_request_for_the_same_trade_is_refused(gateway: Gateway) -> None:
    proposal = make_proposal(gateway.market)
    await gateway.client.request_approval(proposal, requested_by="bot-1")
    with pytest.raises(HITLError) as raised:
        await gateway.client.request_approval(proposal, requested_by="bot-1")
    assert raised.value.error is ErrorCode.DUPLICATE_REQUEST


async def test_operators_are_told_of_a_decision_made_outside_discord(gateway: Gateway) -> None:
    api_trade, _ = await requested(gateway)
    discord_trade, _ = await requested(gateway)
    race_trade, _ = await requested(gateway)
    await gateway.client.approval(api_trade).approve(command("alice", DecisionChannel.WEB))
    await gateway.client.approval(discord_trade).reject(command("bob", DecisionChannel.DISCORD))
    handle = gateway.client.approval(race_trade)
    await asyncio.gather(
        handle.approve(command("alice")), handle.reject(command("bob")), return_exceptions=True
    )
    # The Discord bot shows its own decisions; the others are sent once each, race or not.
    await wait_until(lambda: len(gateway.notifier.decided) >= 2)
    await asyncio.sleep(0.3)
    assert sorted(str(a.trade_id) for a in gateway.notifier.decided) == sorted(
        [str(api_trade), str(race_trade)]
    )


async def test_an_approval_asks_one_patch_three_local_activities_and_one_timer(
    gateway: Gateway,
) -> None:
    """What an approval writes to history is what the dev server stores and the worker reads back
    (issue 19): a new run asks one patch (``APPROVAL_V8``, then ``APPROVAL_V9``: one marker, one
    upsert of ``TemporalChangeVersion``, where it asked five), runs three local activities from
    request to acceptance (admission with the request's write, the decision's quote, the
    acceptance's write with its snapshot; six before ``APPROVAL_V9``), and waits on one timer at
    a time — the reminder's, before a decision — where it kept the deadline's beside it."""
    gateway.policy = gateway.policy.model_copy(
        update={"remind_at_percent": Decimal(50), "escalate_at_percent": Decimal(80)}
    )
    trade_id, _ = await requested(gateway)
    handle = gateway.client.approval(trade_id)
    await handle.approve(command())
    history = await gateway.env.client.get_workflow_handle(handle.workflow_id).fetch_history()
    markers = [
        e.marker_recorded_event_attributes.marker_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
    ]
    assert markers.count("core_patch") == 1
    assert markers.count("core_local_activity") == 3
    raw = gateway.env.client.get_workflow_handle(handle.workflow_id)
    snapshot = await raw.query(ApprovalWorkflow.snapshot)
    assert snapshot is not None and snapshot.trade_id == trade_id
    started = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_STARTED]
    cancelled = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_TIMER_CANCELED]
    assert (len(started), len(cancelled)) == (1, 1)
    (summary,) = await gateway.env.client.data_converter.decode([started[0].user_metadata.summary])
    assert summary == "reminder at 50 % of the window"
