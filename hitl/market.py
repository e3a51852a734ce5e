"""Market quotes as the gateway sees them: pure values, fetched by the market-data activities."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hitl.models import Price, Side, UtcDatetime


class MarketQuote(BaseModel):
    """Top of book for one instrument, with how long the market-data call took."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    instrument: str
    bid: Price
    ask: Price
    as_of: UtcDatetime
    response_latency_ms: Annotated[Decimal, Field(ge=0)]

    @model_validator(mode="after")
    def _book_not_crossed(self) -> Self:
        if self.bid > self.ask:
            raise ValueError("crossed book: bid above ask")
        return self

    def execution_price(self, side: Side) -> Decimal:
        """The price the trade would get now: the ask for a buy, the bid for a sell."""
        return self.ask if side is Side.BUY else self.bid
