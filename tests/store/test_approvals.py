"""The approvals' writes say whether they wrote (so retries count nothing twice); the API's reads
flag a tampered row instead of passing it on. On PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.errors import ErrorCode, HITLError
from hitl.messages import RecordDecisionInput, RecordRequestInput, RecordTransitionInput
from hitl.models import DecisionChannel, DecisionReason, TradeStatus
from store import approvals
from store.engine import session_factory
from store.tables import ApprovalRow
from tests.store.helpers import NOW, new_approval, stored_approval


async def test_a_retried_request_returns_the_stored_record_unwritten(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    data = RecordRequestInput(approval=new_approval(), requested_by="bot-1")
    first = await approvals.record_request(sessions, data)
    again = await approvals.record_request(sessions, data)
    assert first.written and not again.written
    assert again.value == first.value
    assert first.value.row_hash


async def test_decision_then_transition_each_write_once(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    approval = await stored_approval(sessions)
    accepted = approval.model_copy(
        update={
            "status": TradeStatus.ACCEPTED,
            "decided_at": NOW + timedelta(seconds=5),
            "decided_by": "alice",
            "decision_channel": DecisionChannel.API,
            "decision_reason": DecisionReason.OPERATOR_APPROVED,
        }
    )
    data = RecordDecisionInput(expected=approval, decided=accepted, event_type="hitl.decided")
    first = await approvals.record_decision(sessions, data)
    again = await approvals.record_decision(sessions, data)
    assert first.written and not again.written
    assert first.value.approval.status is TradeStatus.ACCEPTED
    assert again.value == first.value
    move = RecordTransitionInput(
        expected=first.value.approval,
        target=TradeStatus.FILLED,
        actor="bot-1",
        correlation_id="corr-fill",
    )
    moved = await approvals.record_transition(sessions, move)
    assert moved.written and moved.value.status is TradeStatus.FILLED
    assert not (await approvals.record_transition(sessions, move)).written
    backwards = move.model_copy(update={"expected": moved.value, "target": TradeStatus.ACCEPTED})
    with pytest.raises(HITLError) as refused:
        await approvals.record_transition(sessions, backwards)
    assert refused.value.error is ErrorCode.INVALID_TRANSITION


async def test_an_unknown_trade_is_not_found(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    ghost = new_approval()
    data = RecordDecisionInput(expected=ghost, decided=ghost, event_type="hitl.decided")
    with pytest.raises(HITLError) as missing:
        await approvals.record_decision(sessions, data)
    assert missing.value.error is ErrorCode.NOT_FOUND
    assert str(missing.value) == f"SEC-010: no stored approval for trade {ghost.trade_id}"


async def test_reads_list_pending_soonest_first_and_flag_a_tampered_row(
    engine: AsyncEngine,
) -> None:
    sessions = session_factory(engine, writer=True)
    later = await stored_approval(sessions, expires_in=timedelta(minutes=9))
    sooner = await stored_approval(sessions, expires_in=timedelta(minutes=2))
    async with sessions.begin() as session:
        await session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.trade_id == later.trade_id)
            .values(instrument="GBP/USD")
        )
    async with sessions() as session:
        pending = await approvals.pending_approvals(session)
        record = await approvals.approval_record(session, later.trade_id)
        assert await approvals.approval_record(session, uuid.uuid4()) is None
    assert [(p.trade_id, p.integrity_ok) for p in pending] == [
        (sooner.trade_id, True),
        (later.trade_id, False),
    ]
    assert pending[1].instrument == "GBP/USD"  # shown as stored, flagged
    assert record is not None and not record.integrity_ok and record.snapshot is None
