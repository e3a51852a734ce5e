"""Slippage and post-trade snapshot arithmetic, in Decimal with ROUND_HALF_EVEN to 8 places."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, localcontext

from hitl.decimals import quantize8


def deviation_pct(current: Decimal, reference: Decimal) -> Decimal:
    """``|current - reference| / reference * 100``, rounded half-even to 8 places."""
    if reference <= 0:
        raise ValueError("reference price must be positive")
    # Enough digits that the quantize is the only rounding: at the default 28 the division
    # can land exactly on a half-way point and round the wrong way.
    with localcontext() as ctx:
        ctx.prec = 60
        return quantize8(abs(current - reference) * 100 / reference)


class SlippageGuard:
    """Refuses a decision when the market moved more than ``max_slippage_pct`` since the request."""

    def __init__(self, max_slippage_pct: Decimal) -> None:
        if max_slippage_pct < 0:
            raise ValueError("max_slippage_pct must not be negative")
        self.max_slippage_pct = max_slippage_pct

    def validate(self, request_price: Decimal, current_price: Decimal) -> tuple[bool, Decimal]:
        """``(is_valid, deviation_pct)``; a deviation equal to the maximum passes."""
        deviation = deviation_pct(current_price, request_price)
        return deviation <= self.max_slippage_pct, deviation


@dataclass(frozen=True, slots=True)
class SnapshotFigures:
    """The derived figures of a post-trade snapshot."""

    spread: Decimal
    mid_price: Decimal
    price_deviation_pct: Decimal


def snapshot_figures(*, bid: Decimal, ask: Decimal, request_price: Decimal) -> SnapshotFigures:
    """Spread = ask - bid, mid = (bid + ask) / 2, deviation of mid against the request price."""
    mid = quantize8((bid + ask) / 2)
    return SnapshotFigures(
        spread=quantize8(ask - bid),
        mid_price=mid,
        price_deviation_pct=deviation_pct(mid, request_price),
    )
