"""Waiting for one approval's news from the outbox (``?wait=`` behind the API), on PostgreSQL
(woken by NOTIFY) and SQLite (polling)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.models import ApprovalRequest
from store.engine import Sessions, session_factory
from store.events import ApprovalWatch, EventWaker, add_event
from tests.store.helpers import stored_approval


@pytest.fixture
async def watch(engine: AsyncEngine, database_url: str) -> AsyncIterator[ApprovalWatch]:
    waker = EventWaker(database_url)
    await waker.start()
    watch = ApprovalWatch(session_factory(engine, writer=True), waker)
    yield watch
    await watch.close()
    await waker.stop()


async def news_of(sessions: Sessions, approval: ApprovalRequest) -> None:
    """An outbox event of ``approval``, committed as a decision's would be."""
    async with sessions.begin() as session:
        await add_event(
            session, event_type="hitl.decided", approval=approval, key=f"test-{uuid.uuid4()}"
        )


async def test_a_waiter_hears_its_own_approval_only(
    engine: AsyncEngine, watch: ApprovalWatch
) -> None:
    sessions = session_factory(engine, writer=True)
    mine, other = await stored_approval(sessions), await stored_approval(sessions)
    async with watch.watch(mine.trade_id) as news:
        assert watch.waiting == 1
        await news_of(sessions, other)
        assert await news.changed(1.5) is False, "another approval's event is not news"
        await news_of(sessions, mine)
        assert await news.changed(10) is True
        assert await news.changed(0.2) is False, "heard once, then quiet again"
    assert watch.waiting == 0


async def test_news_between_the_read_and_the_wait_is_not_lost(
    engine: AsyncEngine, watch: ApprovalWatch
) -> None:
    sessions = session_factory(engine, writer=True)
    approval = await stored_approval(sessions)
    async with watch.watch(approval.trade_id) as news:
        # The waiter has registered and would now read the approval; the decision lands
        # before it starts waiting.
        await news_of(sessions, approval)
        await asyncio.sleep(0.6)
        assert await news.changed(10) is True


async def test_many_waiters_each_hear_their_own_and_the_reader_stops_after_them(
    engine: AsyncEngine, watch: ApprovalWatch
) -> None:
    sessions = session_factory(engine, writer=True)
    approvals = [await stored_approval(sessions) for _ in range(5)]

    async def wait_for(approval: ApprovalRequest, ready: asyncio.Event) -> bool:
        async with watch.watch(approval.trade_id) as news:
            ready.set()
            return await news.changed(15)

    readies = [asyncio.Event() for _ in range(10)]
    waiters = [asyncio.create_task(wait_for(approvals[i % 5], readies[i])) for i in range(10)]
    for ready in readies:
        await ready.wait()
    assert watch.waiting == 10
    for approval in approvals:
        await news_of(sessions, approval)
    assert await asyncio.gather(*waiters) == [True] * 10
    assert watch.waiting == 0
    # A later waiter starts the reader afresh.
    async with watch.watch(approvals[0].trade_id) as news:
        await news_of(sessions, approvals[0])
        assert await news.changed(10) is True
