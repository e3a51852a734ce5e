"""The slippage preview: what the decision's slippage check would say if an operator approved now.

Operators see it before deciding, refreshed live on the page and in the Discord message (the bot
redraws it, ``activities/discord_preview_refresh.py``). It is the decision's own arithmetic: the
execution price for the trade's side (``MarketQuote.execution_price``) against the requested
price, through ``SlippageGuard`` — so
"exceeds" here means an approval now would end REJECTED with SLIPPAGE_EXCEEDED, as long as the
market stays where it is. It is advice, never a decision: the workflow fetches its own quote when
the operator approves.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from hitl.market import MarketQuote
from hitl.models import Price, Side, UtcDatetime
from hitl.slippage import SlippageGuard

_SHOWN_PLACES = Decimal("0.01")


class SlippagePreview(BaseModel):
    """The market now against one approval's requested price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trade_id: UUID
    instrument: str
    side: Side
    request_price: Price
    current_price: Price
    """The price the trade would get now: the ask for a buy, the bid for a sell."""
    deviation_pct: Decimal
    """``(current - request) / request * 100``, 8 places; its magnitude is exactly the deviation
    the slippage check compares, its sign says which way the market moved."""
    max_slippage_pct: Decimal
    exceeds: bool
    """Whether an approval now would be refused for slippage (a deviation equal to the limit
    passes, as in the decision)."""
    as_of: UtcDatetime
    """When the quote was taken."""


def slippage_preview(
    *,
    trade_id: UUID,
    side: Side,
    request_price: Decimal,
    quote: MarketQuote,
    max_slippage_pct: Decimal,
) -> SlippagePreview:
    """The preview of approving now at ``quote``, with the decision's arithmetic."""
    current = quote.execution_price(side)
    within, magnitude = SlippageGuard(max_slippage_pct).validate(request_price, current)
    return SlippagePreview(
        trade_id=trade_id,
        instrument=quote.instrument,
        side=side,
        request_price=request_price,
        current_price=current,
        deviation_pct=magnitude if current >= request_price else -magnitude,
        max_slippage_pct=max_slippage_pct,
        exceeds=not within,
        as_of=quote.as_of,
    )


def _plain(value: Decimal) -> str:
    # Trailing zeros of the 8-place store say nothing to a reader; never scientific notation.
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def preview_text(preview: SlippagePreview) -> str:
    """One line for people: ``now 1.1619, +0.06 %``, with the limit when it is exceeded
    (``now 1.1851, +2.06 % — exceeds the 0.5 % limit``)."""
    shown = preview.deviation_pct.quantize(_SHOWN_PLACES)
    sign = "-" if shown < 0 else "+"
    text = f"now {_plain(preview.current_price)}, {sign}{abs(shown)} %"
    if preview.exceeds:
        text += f" — exceeds the {_plain(preview.max_slippage_pct)} % limit"
    return text
