"""The slippage preview (issue 18 item 6): the decision's own arithmetic, signed for people."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from hitl.market import MarketQuote
from hitl.models import Side
from hitl.preview import SlippagePreview, preview_text, slippage_preview
from hitl.slippage import SlippageGuard
from tests.strategies import bids_and_asks, percents, prices

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def quote(bid: str | Decimal, ask: str | Decimal) -> MarketQuote:
    return MarketQuote(
        instrument="EUR/USD",
        bid=Decimal(bid),
        ask=Decimal(ask),
        as_of=NOW,
        response_latency_ms=Decimal(0),
    )


def preview(side: Side, request: str, book: MarketQuote, limit: str = "0.5") -> SlippagePreview:
    return slippage_preview(
        trade_id=uuid.uuid4(),
        side=side,
        request_price=Decimal(request),
        quote=book,
        max_slippage_pct=Decimal(limit),
    )


@given(
    side=st.sampled_from(list(Side)),
    request=prices(),
    book=bids_and_asks(),
    limit=percents(),
)
def test_the_preview_says_what_the_decision_would(
    side: Side, request: Decimal, book: tuple[Decimal, Decimal], limit: Decimal
) -> None:
    market = quote(*book)
    shown = slippage_preview(
        trade_id=uuid.uuid4(),
        side=side,
        request_price=request,
        quote=market,
        max_slippage_pct=limit,
    )
    # The workflow's check: the execution price for the side through SlippageGuard.
    current = market.execution_price(side)
    within, deviation = SlippageGuard(limit).validate(request, current)
    assert shown.current_price == current
    assert abs(shown.deviation_pct) == deviation
    assert shown.exceeds is (not within)
    assert (shown.deviation_pct < 0) == (current < request)
    assert shown.max_slippage_pct == limit


def test_a_buy_is_priced_at_the_ask_and_a_sell_at_the_bid() -> None:
    book = quote("1.1617", "1.1619")
    assert preview(Side.BUY, "1.1612", book).current_price == Decimal("1.1619")
    assert preview(Side.SELL, "1.1612", book).current_price == Decimal("1.1617")


def test_the_text_is_short_and_signed() -> None:
    book = quote("1.1617", "1.1619")
    assert preview_text(preview(Side.BUY, "1.1612", book)) == "now 1.1619, +0.06 %"
    assert preview_text(preview(Side.BUY, "1.1626", book)) == "now 1.1619, -0.06 %"
    assert preview_text(preview(Side.BUY, "1.1619", book)) == "now 1.1619, +0.00 %"


def test_the_text_marks_a_deviation_beyond_the_limit() -> None:
    book = quote("1.1849", "1.1851")
    shown = preview(Side.BUY, "1.1612", book)
    assert shown.exceeds
    assert preview_text(shown) == "now 1.1851, +2.06 % — exceeds the 0.5 % limit"


def test_a_deviation_equal_to_the_limit_does_not_exceed_it() -> None:
    # 100 -> 100.5 is exactly 0.5 %: the decision lets it pass, so does the preview.
    shown = preview(Side.BUY, "100", quote("100.4", "100.5"))
    assert shown.deviation_pct == Decimal("0.5")
    assert not shown.exceeds
