"""The Guardian's row: a lock rejects what is pending once, an unlock lets approvals through again,
and a request recorded while locked is rejected at once. On PostgreSQL and SQLite."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.messages import GuardianCommand
from hitl.models import DecisionReason, TradeStatus
from store.engine import session_factory
from store.guardian import lock_guardian, read_guardian, unlock_guardian
from tests.store.helpers import stored_approval


def command(reason: str) -> GuardianCommand:
    return GuardianCommand(by="admin", reason=reason, correlation_id="corr-guardian")


async def test_lock_rejects_the_pending_once_and_unlock_reopens(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    pending = [await stored_approval(sessions) for _ in range(3)]
    locked = await lock_guardian(sessions, command("drawdown"))
    assert locked.engaged
    assert locked.result.status.locked and locked.result.status.version == 1
    assert locked.result.rejected == [a.trade_id for a in pending]
    # Again while locked: nothing new is written, the same rejections are handed back.
    again = await lock_guardian(sessions, command("drawdown"))
    assert not again.engaged
    assert again.result.rejected == locked.result.rejected
    assert again.result.status.version == 1

    late = await stored_approval(sessions)
    assert late.status is TradeStatus.REJECTED
    assert late.decision_reason is DecisionReason.GUARDIAN_LOCK

    status = await unlock_guardian(sessions, command("recovered"))
    assert not status.locked and status.version == 2
    assert (await unlock_guardian(sessions, command("recovered"))).version == 2
    async with sessions() as session:
        assert await read_guardian(session) == status
    assert (await stored_approval(sessions)).status is TradeStatus.AWAITING_APPROVAL
