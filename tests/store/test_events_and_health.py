"""The outbox as a stream, the health reads and deep links, straight from store/ (PostgreSQL and
SQLite)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from store.deep_links import consume_deep_link, issue_deep_link
from store.engine import session_factory
from store.events import events_after, latest_event_id
from store.health import pending_count, ping
from tests.store.helpers import stored_approval


async def test_events_stream_in_order_from_a_cursor(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    assert await latest_event_id(sessions) == 0
    first = await stored_approval(sessions)
    cursor = await latest_event_id(sessions)
    second = await stored_approval(sessions)
    everything = await events_after(sessions, 0)
    assert [(e.type, e.trade_id) for e in everything] == [
        ("hitl.created", first.trade_id),
        ("hitl.created", second.trade_id),
    ]
    assert [e.trade_id for e in await events_after(sessions, cursor)] == [second.trade_id]
    assert len(await events_after(sessions, 0, limit=1)) == 1
    assert everything[1].approval["correlation_id"] == second.correlation_id
    assert await latest_event_id(sessions) == everything[-1].id


async def test_ping_and_the_pending_count(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    await ping(engine)
    async with sessions() as session:
        assert await pending_count(session) == 0
    for _ in range(2):
        await stored_approval(sessions)
    async with sessions() as session:
        assert await pending_count(session) == 2


async def test_a_deep_link_opens_once_and_a_newer_one_replaces_it(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    approval = await stored_approval(sessions)
    until = datetime.now(UTC) + timedelta(minutes=5)
    old = await issue_deep_link(
        sessions, trade_id=approval.trade_id, expires_at=until, correlation_id="corr-a"
    )
    new = await issue_deep_link(
        sessions, trade_id=approval.trade_id, expires_at=until, correlation_id="corr-b"
    )
    assert await consume_deep_link(sessions, old) is None  # revoked by the newer link
    grant = await consume_deep_link(sessions, new)
    assert grant is not None and grant.trade_id == approval.trade_id
    assert grant.correlation_id == "corr-b"
    assert await consume_deep_link(sessions, new) is None  # used up
    assert await consume_deep_link(sessions, "x" * 200) is None
    assert await consume_deep_link(sessions, str(uuid.uuid4())) is None
