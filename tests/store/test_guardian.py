"""The Guardian's row: a lock writes only itself and what is pending is rejected after it, in
batches; an unlock lets approvals through again (and stops the batches); a request recorded while
locked is rejected at once. On PostgreSQL and SQLite."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.messages import GuardianCommand
from hitl.models import DecisionReason, TradeStatus
from store.engine import session_factory
from store.guardian import (
    lock_guardian,
    pending_remaining,
    read_guardian,
    reject_pending_batch,
    rejected_by_lock,
    unlock_guardian,
)
from tests.store.helpers import stored_approval


def command(reason: str) -> GuardianCommand:
    return GuardianCommand(by="admin", reason=reason, correlation_id="corr-guardian")


async def test_lock_rejects_the_pending_once_and_unlock_reopens(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    pending = [await stored_approval(sessions) for _ in range(3)]
    locked = await lock_guardian(sessions, command("drawdown"))
    assert locked.engaged
    assert locked.result.status.locked and locked.result.status.version == 1
    # The lock writes only itself; the pending are rejected afterwards, in batches.
    assert locked.result.rejected == []
    async with sessions() as session:
        assert await pending_remaining(session) == 3
    first = await reject_pending_batch(sessions, limit=2)
    assert first.rejected == [a.trade_id for a in pending[:2]]
    async with sessions() as session:
        assert await pending_remaining(session) == 1
    # The workflows are told from what the lock rejected, read back a page at a time.
    since = locked.result.status.since
    assert since is not None
    told = await rejected_by_lock(sessions, locked_at=since, limit=1)
    assert [a.trade_id for _, a in told] == first.rejected[:1]
    rest_told = await rejected_by_lock(sessions, locked_at=since, after_id=told[0][0])
    assert [a.trade_id for _, a in rest_told] == first.rejected[1:]
    assert all(a.decision_reason is DecisionReason.GUARDIAN_LOCK for _, a in rest_told)
    rest = await reject_pending_batch(sessions, after_id=first.last_id, limit=2)
    assert rest.rejected == [pending[2].trade_id]
    assert (await reject_pending_batch(sessions, after_id=rest.last_id)).rejected == []
    async with sessions() as session:
        assert await pending_remaining(session) == 0
    everything = await rejected_by_lock(sessions, locked_at=since)
    assert [a.trade_id for _, a in everything] == [a.trade_id for a in pending]
    # Again while locked: nothing new is written.
    again = await lock_guardian(sessions, command("drawdown"))
    assert not again.engaged
    assert again.result.status.version == 1

    late = await stored_approval(sessions)
    assert late.status is TradeStatus.REJECTED
    assert late.decision_reason is DecisionReason.GUARDIAN_LOCK

    status = await unlock_guardian(sessions, command("recovered"))
    assert not status.locked and status.version == 2
    # Telling goes on after an unlock: those approvals stay rejected.
    assert len(await rejected_by_lock(sessions, locked_at=since)) == 3
    assert (await unlock_guardian(sessions, command("recovered"))).version == 2
    async with sessions() as session:
        assert await read_guardian(session) == status
    assert (await stored_approval(sessions)).status is TradeStatus.AWAITING_APPROVAL


async def test_an_unlock_stops_the_batches(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    pending = await stored_approval(sessions)
    await lock_guardian(sessions, command("drawdown"))
    await unlock_guardian(sessions, command("false alarm"))
    batch = await reject_pending_batch(sessions)
    assert (batch.rejected, batch.last_id) == ([], 0)
    assert (await stored_approval(sessions)).status is TradeStatus.AWAITING_APPROVAL
    async with sessions() as session:
        assert await pending_remaining(session) == 0
    assert pending.status is TradeStatus.AWAITING_APPROVAL
