"""The slippage preview in the Discord approval message (issue 18 item 6): the market at
posting, marked when approving would already be refused. Against the local fake of Discord's REST
API, with the real notifier and a market moved by hand."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.discord_notifier import DiscordNotifier
from activities.discord_render import approval_embed
from activities.market_preview import PreviewQuotes
from activities.market_providers import HttpMarketData, SimulatedMarketData
from hitl.market import MarketQuote
from hitl.models import ApprovalRequest, Side, TradeProposal
from hitl.preview import slippage_preview
from tests.discord.fake_discord import FakeDiscord

HUB_URL = "http://hub.example"


def approval(request_price: str, instrument: str = "EUR/USD") -> ApprovalRequest:
    now = datetime.now(UTC)
    return ApprovalRequest.from_proposal(
        TradeProposal(
            trade_id=uuid.uuid4(),
            instrument=instrument,
            side=Side.BUY,
            risk_pct=Decimal("1.5"),
            confidence=Decimal("0.8"),
            request_price=Decimal(request_price),
            reasoning_summary="Breakout.",
            correlation_id=f"corr-{uuid.uuid4().hex[:8]}",
        ),
        requested_at=now,
        expires_at=now + timedelta(minutes=5),
    )


def fields(message: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["value"] for f in message["embeds"][0]["fields"]}


def test_the_embed_shows_the_market_at_posting_and_marks_a_deviation_beyond_the_limit() -> None:
    book = MarketQuote(
        instrument="EUR/USD",
        bid=Decimal("1.1617"),
        ask=Decimal("1.1619"),
        as_of=datetime.now(UTC),
        response_latency_ms=Decimal(0),
    )
    fresh, stale = approval("1.1612"), approval("1.1385")
    for record, expected in (
        (fresh, "at posting: now 1.1619, +0.06 %"),
        (stale, "⚠️ at posting: now 1.1619, +2.06 % — exceeds the 0.5 % limit"),
    ):
        preview = slippage_preview(
            trade_id=record.trade_id,
            side=record.side,
            request_price=record.request_price,
            quote=book,
            max_slippage_pct=Decimal("0.5"),
        )
        embed = approval_embed(record, link=f"{HUB_URL}/x", preview=preview)
        [market] = [field.value for field in embed.fields if field.name == "Market"]
        assert market == expected
    # No preview (no quote in time): no such field, and the message still goes out.
    bare = approval_embed(fresh, link=f"{HUB_URL}/x")
    assert "Market" not in [field.name for field in bare.fields]


async def _post(
    fake: FakeDiscord, sessions: async_sessionmaker[AsyncSession], previews: PreviewQuotes | None
) -> list[dict[str, Any]]:
    notifier = DiscordNotifier(
        token=fake.bot_token,
        channel_id=fake.channel_id,
        hub_url=HUB_URL,
        sessions=sessions,
        api_base_url=fake.api_url,
        previews=previews,
    )
    try:
        await notifier.approval_requested(approval("1.1612"))
        await notifier.approval_requested(approval("1.1385"))
    finally:
        await notifier.aclose()
    return fake.channel_messages()


async def test_the_notifier_posts_each_approval_with_the_market_at_posting(
    fake: FakeDiscord, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    market = SimulatedMarketData(
        prices={"EUR/USD": Decimal("1.1618")}, spread_bps=Decimal(2), jitter_percent=Decimal(0)
    )
    previews = PreviewQuotes(market, max_slippage_pct=Decimal("0.5"))
    fresh, stale = await _post(fake, sqlite_sessions, previews)
    # Mid 1.1618, 2 bps wide: a buy pays the ask, 1.16191618.
    assert fields(fresh)["Market"] == "at posting: now 1.16191618, +0.06 %"
    assert fields(stale)["Market"] == (
        "⚠️ at posting: now 1.16191618, +2.06 % — exceeds the 0.5 % limit"
    )


async def test_without_a_quote_the_approval_is_posted_all_the_same(
    fake: FakeDiscord, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    # A real market-data client on a port nobody listens on: the quote fails at once.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    market = HttpMarketData(f"http://127.0.0.1:{port}", timeout_seconds=1)
    previews = PreviewQuotes(market, max_slippage_pct=Decimal("0.5"))
    posted = await _post(fake, sqlite_sessions, previews)
    assert len(posted) == 2
    assert all("Market" not in fields(message) for message in posted)
