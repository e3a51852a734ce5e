"""The bots' HTTP client against a real uvicorn API, Temporal dev server, worker and database."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from hitl.errors import ErrorCode, HITLError
from hitl.models import DecisionReason, TradeProposal, TradeStatus
from hitl_client import BotClient, GatewayError
from tests.api.conftest import TOKENS, Served, auth, serve_api
from tests.temporal_fixtures import make_proposal, start_gateway


async def _served(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    **options: str,
) -> AsyncIterator[Served]:
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        async for served in serve_api(gw, sqlite_url, **options):
            yield served


@pytest.fixture
async def served(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Served]:
    """The API under uvicorn with a running worker."""
    async for served in _served(dev_env, sqlite_url, sqlite_sessions):
        yield served


def _bot(served: Served, **options: float) -> BotClient:
    return BotClient(served.base_url, TOKENS["bot-1"][1], **options)  # type: ignore[arg-type]


async def _operator(served: Served, trade_id: uuid.UUID, action: str) -> None:
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        response = await http.post(f"/api/hitl/{trade_id}/{action}", json={}, headers=auth("alice"))
    assert response.status_code == 200, response.text


async def test_a_bot_requests_waits_for_the_decision_and_reports_the_trade_s_life(
    served: Served,
) -> None:
    proposal = make_proposal(served.gw.market)
    async with _bot(served) as gateway:
        ticket = await gateway.request(proposal)
        assert ticket.trade_id == proposal.trade_id
        assert ticket.status is TradeStatus.AWAITING_APPROVAL
        waiting = asyncio.create_task(gateway.outcome(proposal.trade_id, poll_interval=0.05))
        await asyncio.sleep(0.2)
        assert not waiting.done(), "no decision yet: the bot keeps waiting"
        await _operator(served, proposal.trade_id, "approve")
        final = await asyncio.wait_for(waiting, 10)
        assert final.status is TradeStatus.ACCEPTED
        assert final.decided_by == "alice"
        assert final.decision_reason is DecisionReason.OPERATOR_APPROVED
        for step, status in (
            (gateway.fill, TradeStatus.FILLED),
            (gateway.close, TradeStatus.CLOSED),
            (gateway.settle, TradeStatus.SETTLED),
        ):
            outcome = await step(proposal.trade_id, {"price": "1.1"})
            assert outcome.status is status
        # A report the gateway already has is answered as it stands (safe to retry).
        assert (await gateway.settle(proposal.trade_id)).status is TradeStatus.SETTLED


async def test_a_rejection_is_the_outcome_too(served: Served) -> None:
    proposal = make_proposal(served.gw.market)
    async with _bot(served) as gateway:
        await gateway.request(proposal)
        await _operator(served, proposal.trade_id, "reject")
        final = await gateway.outcome(proposal.trade_id, max_wait=10, poll_interval=0.05)
    assert final.status is TradeStatus.REJECTED
    assert final.decision_reason is DecisionReason.OPERATOR_REJECTED


async def test_waiting_gives_up_after_its_timeout(served: Served) -> None:
    proposal = make_proposal(served.gw.market)
    async with _bot(served) as gateway:
        await gateway.request(proposal)
        with pytest.raises(TimeoutError):
            await gateway.outcome(proposal.trade_id, max_wait=0.3, poll_interval=0.05)


async def test_a_request_is_idempotent_by_trade_id(served: Served) -> None:
    proposal = make_proposal(served.gw.market)
    async with _bot(served) as gateway:
        first = await gateway.request(proposal)
        again = await gateway.request(
            proposal.model_copy(update={"correlation_id": "another-attempt"})
        )
        assert again.trade_id == first.trade_id
        assert again.expires_at == first.expires_at, "the request recorded first, not a new one"
        other_terms = proposal.model_copy(
            update={"request_price": proposal.request_price + Decimal(1)}
        )
        with pytest.raises(GatewayError) as caught:
            await gateway.request(other_terms)
    assert caught.value.error is ErrorCode.DUPLICATE_REQUEST
    assert caught.value.http_status == 409


async def test_refusals_are_typed_errors_with_the_api_s_sec_code(served: Served) -> None:
    proposal = make_proposal(served.gw.market)
    async with _bot(served) as gateway:
        await gateway.request(proposal)
        with pytest.raises(GatewayError) as caught:
            await gateway.fill(proposal.trade_id)
        assert caught.value.error is ErrorCode.INVALID_TRANSITION
        assert caught.value.code == "SEC-030"
        assert isinstance(caught.value, HITLError), "bots catch HITLError, as before"
        assert caught.value.correlation_id
        with pytest.raises(GatewayError) as missing:
            await gateway.approval(uuid.uuid4())
        assert missing.value.error is ErrorCode.NOT_FOUND
    async with BotClient(served.base_url, "not-a-token") as stranger:
        with pytest.raises(GatewayError) as refused:
            await stranger.request(make_proposal(served.gw.market))
    assert refused.value.error is ErrorCode.UNAUTHENTICATED
    assert refused.value.http_status == 401


async def test_a_rate_limited_bot_waits_as_told_and_gets_through(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    async for served in _served(dev_env, sqlite_url, sqlite_sessions, rate_limit="2/second"):
        proposal = make_proposal(served.gw.market)
        async with _bot(served) as gateway:
            await gateway.request(proposal)
            for _ in range(4):  # twice the limit: two of these wait for their Retry-After
                approval = await gateway.approval(proposal.trade_id)
                assert approval.trade_id == proposal.trade_id


async def test_an_unreachable_gateway_is_sec_070_after_the_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proposal = TradeProposal(
        trade_id=uuid.uuid4(),
        instrument="EUR/USD",
        side="BUY",
        risk_pct=Decimal(1),
        confidence=Decimal("0.5"),
        request_price=Decimal("1.1"),
        reasoning_summary="r",
        correlation_id="c",
    )
    async with BotClient(f"http://127.0.0.1:{port}", "t", attempts=3, backoff=0.01) as gateway:
        with pytest.raises(GatewayError) as caught:
            await gateway.request(proposal)
    assert caught.value.error is ErrorCode.SERVICE_UNAVAILABLE
