"""/readyz reports a record the worker's audit check found broken (issue 15 item 6)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hitl.audit_chain import ChainHead
from store.audit import record_verification
from tests.api.conftest import Api
from tests.temporal_fixtures import wait_until


async def _ready(api: Api) -> bool:
    return (await api.http.get("/readyz")).status_code == 200


async def test_a_broken_record_makes_the_gateway_unready(
    api: Api, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    await wait_until(lambda: _ready(api))
    ready = await api.http.get("/readyz")
    assert ready.json()["checks"]["audit"] == "ok"  # not verified yet: nothing found

    head = ChainHead(3, "ab" * 32)
    problem = "edited at seq 3, id 7: its content does not match its MAC"
    await record_verification(
        sqlite_sessions, checked_at=datetime.now(UTC), head=head, problem=problem
    )
    unready = await api.http.get("/readyz")
    assert unready.status_code == 503
    assert unready.json()["checks"]["audit"] == f"broken: {problem}"

    await record_verification(
        sqlite_sessions, checked_at=datetime.now(UTC), head=head, problem=None
    )
    assert await _ready(api)
