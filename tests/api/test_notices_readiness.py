"""/readyz shows the operators' notices still to go (issue 19): a request's notice is queued with
it and sent by the worker's dispatcher; one that keeps failing shows as pending and failing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from store import notice_queue
from store.tables import NoticeRow
from tests.api.conftest import Api
from tests.api.test_approvals_api import create
from tests.temporal_fixtures import wait_until


async def _notices(api: Api) -> dict[str, object]:
    body = (await api.http.get("/readyz")).json()
    notices: dict[str, object] = body["notices"]
    return notices


async def test_readyz_shows_the_notices_still_to_go(api: Api) -> None:
    created = await create(api)
    trade_id = uuid.UUID(created["trade_id"])
    # Sent by the worker's dispatcher, after the API answered.
    await wait_until(lambda: any(a.trade_id == trade_id for a in api.gw.notifier.requested))
    await wait_until(lambda: _pending_is(api, 0))

    # A notice whose notifier keeps failing: retried later, shown meanwhile.
    async with api.gw.sessions() as session:
        queued = await session.scalar(select(NoticeRow).where(NoticeRow.trade_id == trade_id))
    assert queued is not None and queued.outcome == notice_queue.NoticeOutcome.SENT
    second = await create(api)
    second_id = uuid.UUID(second["trade_id"])
    await wait_until(lambda: any(a.trade_id == second_id for a in api.gw.notifier.requested))
    now = datetime.now(UTC)
    async with api.gw.sessions.begin() as session:
        row = await session.scalar(select(NoticeRow).where(NoticeRow.trade_id == second_id))
        assert row is not None
        # As if the notifier had failed it once and its retry were an hour away.
        row.done_at, row.outcome, row.attempts = None, None, 1
        row.next_attempt_at = now + timedelta(hours=1)
        row.last_error = "HTTPException: 503 Service Unavailable"
    notices = await _notices(api)
    assert notices["pending"] == 1
    assert notices["failing"] == 1
    assert isinstance(notices["oldest_queued_at"], str)
    assert datetime.fromisoformat(notices["oldest_queued_at"]) <= now


async def _pending_is(api: Api, count: int) -> bool:
    return (await _notices(api))["pending"] == count
