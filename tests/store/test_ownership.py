"""The requester of an approval is read back from what ``record_request`` wrote (PostgreSQL and
SQLite)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.messages import RecordRequestInput
from store import approvals
from store.engine import session_factory
from store.ownership import requester_of, requesters_of
from tests.store.helpers import new_approval


async def test_each_approval_names_the_bot_that_requested_it(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    first, second = new_approval(), new_approval()
    await approvals.record_request(
        sessions, RecordRequestInput(approval=first, requested_by="bot-1")
    )
    await approvals.record_request(
        sessions, RecordRequestInput(approval=second, requested_by="bot-2")
    )
    missing = uuid.uuid4()
    async with sessions() as session:
        assert await requester_of(session, first.trade_id) == "bot-1"
        assert await requester_of(session, second.trade_id) == "bot-2"
        assert await requester_of(session, missing) is None
        assert await requesters_of(session, [first.trade_id, second.trade_id, missing]) == {
            first.trade_id: "bot-1",
            second.trade_id: "bot-2",
        }
        assert await requesters_of(session, []) == {}
