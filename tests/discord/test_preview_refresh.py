"""The market preview in pending approvals' Discord messages, kept fresh by the bot (issue 18
item 6): against the local fakes of Discord's REST API and gateway, the Temporal dev server with
the real activities and a real database, and a market moved by hand (served over HTTP to the bot
as ``MARKET_DATA_URL``, so the worker and the bot quote the same prices).

The fake Discord here also answers ``GET`` of one message (the refresher reads the message it
edits) and can hold one embed-only edit, to put a decision between the refresher's last look at
the approval and its edit.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.testing import WorkflowEnvironment

from activities.discord_preview_refresh import PreviewRefresher
from activities.discord_render import preview_field
from activities.market_preview import PreviewQuotes
from activities.market_providers import HttpMarketData
from hitl.messages import DecisionCommand
from hitl.models import ApprovalRequest, DecisionChannel
from hitl.preview import slippage_preview
from tests.discord.fake_discord import API_PREFIX, FakeDiscord
from tests.discord.fake_gateway import FakeGateway
from tests.discord.test_discord import MESSAGES, Rig, custom_ids, fields, running_rig
from tests.discord.test_gateway import real_bot
from tests.temporal_fixtures import wait_until

EURUSD = "EUR/USD"
ANCHOR = Decimal("1.1612")


@dataclass
class Hold:
    """The next embed-only edit of one message waits for ``release`` once it has ``arrived``."""

    message_id: int
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class ReadableFakeDiscord(FakeDiscord):
    """The fake, plus ``GET /channels/{id}/messages/{id}`` and a held edit."""

    hold: Hold | None = None

    def _app(self) -> Starlette:
        app = super()._app()
        path = f"{API_PREFIX}/channels/{{channel_id:int}}/messages/{{message_id:int}}"
        app.router.routes.append(Route(path, self._read, methods=["GET"]))
        return app

    async def _read(self, request: Request) -> Response:
        async def work(request: Request, _: Any) -> Response:
            message = self.messages.get(int(request.path_params["message_id"]))
            if message is None:
                return JSONResponse({"message": "Unknown Message", "code": 10008}, 404)
            return JSONResponse(message)

        return await self._serve(request, work)

    async def _edit(self, request: Request) -> Response:
        body = await request.json()
        hold = self.hold
        if (
            hold is not None
            and int(request.path_params["message_id"]) == hold.message_id
            and "components" not in body
        ):
            self.hold = None
            hold.arrived.set()
            await hold.release.wait()
        return await super()._edit(request)


@pytest.fixture
async def fake() -> AsyncIterator[ReadableFakeDiscord]:
    server = ReadableFakeDiscord()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def rig(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    fake: ReadableFakeDiscord,
) -> AsyncIterator[Rig]:
    async with running_rig(dev_env, sqlite_sessions, fake) as running:
        running.market.set_price(EURUSD, ANCHOR)
        yield running


@dataclass
class QuoteServer:
    """The rig's market over HTTP (``GET /quotes/{instrument}`` → bid and ask), counting quotes."""

    url: str
    quotes: list[str]
    down: list[bool]
    """``[True]``: every quote answers 503."""


@pytest.fixture
async def market_url(rig: Rig) -> AsyncIterator[QuoteServer]:
    quotes: list[str] = []
    down = [False]

    async def quote(request: Request) -> Response:
        instrument = request.path_params["instrument"]
        quotes.append(instrument)
        if down[0]:
            return JSONResponse({"error": "maintenance"}, status_code=503)
        book = await rig.market.quote(instrument)
        return JSONResponse({"bid": str(book.bid), "ask": str(book.ask)})

    app = Starlette(routes=[Route("/quotes/{instrument:path}", quote, methods=["GET"])])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started)
    yield QuoteServer(url=f"http://127.0.0.1:{port}", quotes=quotes, down=down)
    server.should_exit = True
    await task


def rejection() -> DecisionCommand:
    """Bob rejects, over the API (outside Discord)."""
    return DecisionCommand(
        operator_id="bob", channel=DecisionChannel.API, correlation_id="corr-api"
    )


def shown(rig: Rig, message: dict[str, Any]) -> dict[str, Any]:
    """The message as it stands now."""
    return rig.fake.messages[int(message["id"])]


def market(rig: Rig, message: dict[str, Any]) -> str | None:
    return fields(shown(rig, message)).get("Market")


def without_fields(message: dict[str, Any]) -> dict[str, Any]:
    """The message's embed apart from its fields (title, link, colour, footer, timestamp…)."""
    return {k: v for k, v in message["embeds"][0].items() if k != "fields"}


def moved_by(factor: str) -> Decimal:
    return ANCHOR * Decimal(factor)


async def test_the_bot_refreshes_a_pending_message_and_leaves_a_decided_one_alone(
    rig: Rig,
    gateway: FakeGateway,
    market_url: QuoteServer,
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
) -> None:
    pending, pending_message = await rig.request(EURUSD)
    decided, decided_message = await rig.request(EURUSD)
    posted = copy.deepcopy(pending_message)  # the fake's own dict changes with each edit
    await rig.approvals.approval(decided.trade_id).reject(rejection())
    decided_path = f"{MESSAGES}/{decided_message['id']}"
    # The decision's notice has removed its buttons.
    await wait_until(lambda: shown(rig, decided_message)["components"] == [])
    notice_edits = len(rig.fake.requests("PATCH", decided_path))
    outcome = copy.deepcopy(shown(rig, decided_message))

    monkeypatch.delenv("HITL_MARKET", raising=False)
    async with real_bot(
        rig,
        monkeypatch,
        sqlite_url,
        HITL_DISCORD_PREVIEW_SECONDS="1",
        MARKET_DATA_URL=market_url.url,
    ):
        await gateway.wait_identified()
        # Within the limit: the price now, unmarked (the rig posts with no preview at all).
        await wait_until(
            lambda: (market(rig, pending_message) or "").startswith("now "), timeout=30
        )
        assert "⚠️" not in (market(rig, pending_message) or "")

        # The market moves 1 % (limit 0.5 %): the message says so, marked.
        rig.market.set_price(EURUSD, moved_by("1.01"))
        await wait_until(
            lambda: "exceeds the 0.5 % limit" in (market(rig, pending_message) or ""), timeout=30
        )
        text = market(rig, pending_message)
        assert text is not None and text.startswith("⚠️ now 1.17")
        assert "+1.0" in text

    now = shown(rig, pending_message)
    # Only the Market field changed: same text above, same link, same fields, same buttons.
    assert now["content"] == posted["content"]
    assert now["embeds"][0]["url"] == posted["embeds"][0]["url"]
    assert without_fields(now) == without_fields(posted)
    assert {k: v for k, v in fields(now).items() if k != "Market"} == fields(posted)
    assert list(fields(now)).index("Market") == list(fields(now)).index("Expires") - 1
    assert custom_ids(now) == custom_ids(posted)
    # No edit carried buttons, text or flags: the refresher sends the embed alone.
    pending_path = f"{MESSAGES}/{pending_message['id']}"
    for call in rig.fake.requests("PATCH", pending_path):
        assert call.body is not None and set(call.body) <= {"embeds", "allowed_mentions", "tts"}
    # The decided message was never touched again, and still shows its outcome without buttons.
    assert len(rig.fake.requests("PATCH", decided_path)) == notice_edits
    assert shown(rig, decided_message) == outcome
    assert not (await rig.stored(pending)).decided_at


async def test_a_decision_racing_the_refresh_keeps_its_outcome_and_no_buttons(rig: Rig) -> None:
    """The decision lands between the refresher's last read of the approval and its edit, and its
    notice removes the buttons before the refresher's (older) embed arrives: the message ends
    showing the outcome, without buttons."""
    assert isinstance(rig.fake, ReadableFakeDiscord)
    approval, message = await rig.request(EURUSD)
    refresher = PreviewRefresher(
        rig.bot, rig.sessions, PreviewQuotes(rig.market, max_slippage_pct=Decimal("0.5"))
    )
    hold = Hold(int(message["id"]))
    rig.fake.hold = hold
    rig.market.set_price(EURUSD, moved_by("1.02"))

    refreshing = asyncio.create_task(refresher.refresh_once())
    await wait_until(hold.arrived.is_set)
    # The refresher has checked the approval is pending and sent its edit; now bob rejects it.
    await rig.approvals.approval(approval.trade_id).reject(rejection())
    await wait_until(lambda: shown(rig, message)["components"] == [])
    hold.release.set()  # the refresher's stale embed arrives after the notice's outcome
    assert await refreshing == 1

    final = shown(rig, message)
    assert final["components"] == []
    assert final["embeds"][0]["title"] == "REJECTED: BUY EUR/USD"
    assert fields(final)["Decided by"] == "bob via API"
    assert "Market" not in fields(final)
    # And the next cycle leaves it alone.
    edits = len(rig.fake.requests("PATCH", f"{MESSAGES}/{message['id']}"))
    assert await refresher.refresh_once() == 0
    assert len(rig.fake.requests("PATCH", f"{MESSAGES}/{message['id']}")) == edits


async def test_an_unchanged_preview_is_not_sent_again(rig: Rig) -> None:
    approval, message = await rig.request(EURUSD)
    refresher = PreviewRefresher(
        rig.bot,
        rig.sessions,
        PreviewQuotes(rig.market, max_slippage_pct=Decimal("0.5")),
        spacing_seconds=0,
    )
    assert await refresher.refresh_once() == 1
    path = f"{MESSAGES}/{message['id']}"
    reads, edits = rig.fake.requests("GET", path), rig.fake.requests("PATCH", path)
    # The market (no jitter) stands still: nothing read, nothing edited.
    assert await refresher.refresh_once() == 0
    assert rig.fake.requests("GET", path) == reads
    assert rig.fake.requests("PATCH", path) == edits
    # It moves: one more edit.
    rig.market.set_price(EURUSD, moved_by("1.003"))
    assert await refresher.refresh_once() == 1
    expected = slippage_preview(
        trade_id=approval.trade_id,
        side=approval.side,
        request_price=approval.request_price,
        quote=await rig.market.quote(EURUSD),  # no jitter: the quote the refresher had
        max_slippage_pct=Decimal("0.5"),
    )
    assert market(rig, message) == preview_field(expected, at_posting=False)
    assert market(rig, message) == f"now {expected.current_price}, +0.31 %"


async def test_a_refresh_budget_takes_the_soonest_deadlines_first(rig: Rig) -> None:
    approvals: list[tuple[ApprovalRequest, dict[str, Any]]] = [
        await rig.request(EURUSD) for _ in range(3)
    ]
    refresher = PreviewRefresher(
        rig.bot,
        rig.sessions,
        PreviewQuotes(rig.market, max_slippage_pct=Decimal("0.5")),
        edits_per_cycle=2,
        spacing_seconds=0,
    )
    assert await refresher.refresh_once() == 2
    # Requested one after another with one timeout: the first two expire first.
    assert [market(rig, message) is not None for _, message in approvals] == [True, True, False]
    assert await refresher.refresh_once() == 1
    assert all(market(rig, message) is not None for _, message in approvals)


async def test_zero_turns_the_refresh_off(
    rig: Rig,
    gateway: FakeGateway,
    market_url: QuoteServer,
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
) -> None:
    _, message = await rig.request(EURUSD)
    posted = copy.deepcopy(message)
    rig.market.set_price(EURUSD, moved_by("1.01"))
    monkeypatch.delenv("HITL_MARKET", raising=False)
    async with real_bot(
        rig,
        monkeypatch,
        sqlite_url,
        HITL_DISCORD_PREVIEW_SECONDS="0",
        MARKET_DATA_URL=market_url.url,
    ):
        await gateway.wait_identified()
        # Three times the shortest interval the other tests refresh at.
        await asyncio.sleep(3)
    assert market_url.quotes == []
    assert rig.fake.requests("GET", f"{MESSAGES}/{message['id']}") == []
    assert shown(rig, message) == posted


async def test_the_market_or_discord_failing_only_delays_the_refresh(
    rig: Rig, market_url: QuoteServer
) -> None:
    _, message = await rig.request(EURUSD)
    path = f"{MESSAGES}/{message['id']}"
    market_url.down[0] = True
    # Discord refuses the first edit too (any error but "gone"): that cycle fails, logged.
    rig.fake.fail(403, method="PATCH", path=path)
    previews = PreviewQuotes(
        HttpMarketData(market_url.url, timeout_seconds=2), max_slippage_pct=Decimal("0.5")
    )
    refresher = PreviewRefresher(rig.bot, rig.sessions, previews, spacing_seconds=0)
    running = asyncio.create_task(refresher.run(1))
    try:
        # Two cycles find no market: nothing read or edited, and the refresher goes on.
        await wait_until(lambda: len(market_url.quotes) >= 2, timeout=30)
        assert rig.fake.requests("GET", path) == []
        market_url.down[0] = False
        await wait_until(lambda: market(rig, message) is not None, timeout=30)
        assert [call.status for call in rig.fake.requests("PATCH", path)][:1] == [403]
        assert not running.done()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await previews.aclose()
