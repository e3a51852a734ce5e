"""The bots' HTTP client waits with ``?wait=`` (issue 18 item 4): a few held requests instead of a
tight poll, the decision heard at once. Against a real uvicorn API, Temporal dev server, worker
and database; requests are counted by a real transport that passes them on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from hitl.models import DecisionReason, TradeStatus
from hitl_client import BotClient
from tests.api.conftest import TOKENS, Served, auth, serve_api
from tests.temporal_fixtures import make_proposal, start_gateway, wait_until


class CountingTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport, noting each request's query before sending it."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.queries.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        return await super().handle_async_request(request)


async def _served(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    **policy: Any,
) -> AsyncIterator[Served]:
    gw = await start_gateway(dev_env, sqlite_sessions, **policy)
    async with gw.worker:
        async for served in serve_api(gw, sqlite_url):
            yield served


@pytest.fixture
async def served(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Served]:
    async for served in _served(dev_env, sqlite_url, sqlite_sessions):
        yield served


async def _decide(served: Served, trade_id: object, action: str, *, after: float) -> None:
    await asyncio.sleep(after)
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        response = await http.post(f"/api/hitl/{trade_id}/{action}", json={}, headers=auth("alice"))
    assert response.status_code == 200, response.text


async def test_outcome_is_a_long_poll_that_hears_the_decision_at_once(served: Served) -> None:
    transport = CountingTransport()
    proposal = make_proposal(served.gw.market)
    async with BotClient(served.base_url, TOKENS["bot-1"][1], transport=transport) as gateway:
        await gateway.request(proposal)
        deciding = asyncio.create_task(_decide(served, proposal.trade_id, "approve", after=2))
        started = time.monotonic()
        final = await gateway.outcome(proposal.trade_id, poll_interval=0.05)
        elapsed = time.monotonic() - started
        await deciding
    assert final.status is TradeStatus.ACCEPTED
    assert final.decision_reason is DecisionReason.OPERATOR_APPROVED
    assert 2 <= elapsed < 15, elapsed
    reads = [q for q in transport.queries if q.startswith(f"GET /api/hitl/{proposal.trade_id}")]
    # A tight poll every 0.05 s would have asked some 40 times; held requests ask a few.
    assert 1 <= len(reads) <= 3, reads
    assert any("wait=" in q for q in reads), reads


async def test_outcome_gives_up_at_max_wait_after_waiting_that_long(served: Served) -> None:
    transport = CountingTransport()
    proposal = make_proposal(served.gw.market)
    async with BotClient(served.base_url, TOKENS["bot-1"][1], transport=transport) as gateway:
        await gateway.request(proposal)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await gateway.outcome(proposal.trade_id, max_wait=1.5, poll_interval=0.05)
        assert time.monotonic() - started >= 1.5
    reads = [q for q in transport.queries if q.startswith("GET ")]
    assert len(reads) <= 2, reads


async def test_a_request_can_wait_for_its_decision(served: Served) -> None:
    proposal = make_proposal(served.gw.market)
    async with BotClient(served.base_url, TOKENS["bot-1"][1]) as gateway:

        async def approve_once_recorded() -> None:
            async with httpx.AsyncClient(base_url=served.base_url) as http:

                async def recorded() -> bool:
                    path = f"/api/hitl/{proposal.trade_id}"
                    return (await http.get(path, headers=auth("alice"))).status_code == 200

                await wait_until(recorded, timeout=20)
            await _decide(served, proposal.trade_id, "reject", after=0.2)

        deciding = asyncio.create_task(approve_once_recorded())
        ticket = await gateway.request(proposal, wait=30)
        await deciding
    assert ticket.status is TradeStatus.REJECTED
    assert ticket.decision_reason is DecisionReason.OPERATOR_REJECTED
    assert ticket.decided_by == "alice"


async def test_a_wait_beyond_a_minute_is_refused_before_sending(served: Served) -> None:
    async with BotClient(served.base_url, TOKENS["bot-1"][1]) as gateway:
        with pytest.raises(ValueError, match="wait"):
            await gateway.request(make_proposal(served.gw.market), wait=61)
        with pytest.raises(ValueError, match="wait"):
            await gateway.approval(make_proposal(served.gw.market).trade_id, wait=-1)


async def test_with_hitl_off_the_ticket_already_says_accepted_and_why(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async for served in _served(dev_env, sqlite_url, sqlite_sessions, enabled=False):
        async with BotClient(served.base_url, TOKENS["bot-1"][1]) as gateway:
            ticket = await gateway.request(make_proposal(served.gw.market))
    assert ticket.status is TradeStatus.ACCEPTED
    assert ticket.decision_reason is DecisionReason.HITL_DISABLED
