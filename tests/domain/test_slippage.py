"""Slippage and snapshot arithmetic: Properties 6 and 13 of the seed.

The expected figures are computed here independently, with exact fractions rounded once
(half-even) to 8 places, never with the code under test.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hitl.decimals import QUANTUM
from hitl.slippage import SlippageGuard, deviation_pct, snapshot_figures
from tests.strategies import MAX_DECIMAL8, bids_and_asks, decimals8, percents, prices


def _half_even_8(value: Fraction) -> Decimal:
    # round() on a Fraction rounds halves to even.
    return Decimal(round(value * 10**8)).scaleb(-8)


def expected_deviation(current: Decimal, reference: Decimal) -> Decimal:
    """``|current - reference| / reference * 100``, exactly, rounded once half-even."""
    exact = abs(Fraction(current) - Fraction(reference)) / Fraction(reference) * 100
    return _half_even_8(exact)


def _has_8_places(value: Decimal) -> bool:
    return value.as_tuple().exponent == -8


@st.composite
def price_moves(draw: st.DrawFn) -> tuple[Decimal, Decimal]:
    """``(request_price, current_price)``: unrelated prices, or a move of up to ±20%."""
    request = draw(prices())
    if draw(st.booleans()):
        return request, draw(prices())
    move = draw(decimals8(Decimal("-0.2"), Decimal("0.2")))
    current = (request * (1 + move)).quantize(QUANTUM)
    return request, min(max(current, QUANTUM), MAX_DECIMAL8)


@given(move=price_moves(), data=st.data())
def test_property_6_slippage_exceeding_threshold_causes_rejection(
    move: tuple[Decimal, Decimal], data: st.DataObject
) -> None:
    request_price, current_price = move
    deviation = expected_deviation(current_price, request_price)
    near_boundary = [deviation, deviation + QUANTUM] + ([deviation - QUANTUM] if deviation else [])
    max_pct = data.draw(st.one_of(percents(), st.sampled_from(near_boundary)), label="max_pct")

    valid, reported = SlippageGuard(max_pct).validate(request_price, current_price)

    assert reported == deviation
    assert _has_8_places(reported)
    assert valid is (deviation <= max_pct)


@pytest.mark.parametrize(
    ("request_price", "current_price", "max_pct", "valid", "deviation"),
    [
        # Exactly at the limit passes, upwards and downwards.
        ("100", "100.5", "0.5", True, "0.5"),
        ("100", "99.5", "0.5", True, "0.5"),
        ("1", "1.005", "0.5", True, "0.5"),
        # One unit of 1e-8 of deviation above the limit fails.
        ("100", "100.50000001", "0.5", False, "0.50000001"),
        ("100", "99.49999999", "0.5", False, "0.50000001"),
        ("100", "100.50000001", "0.50000001", True, "0.50000001"),
        # No move at all passes even a zero limit.
        ("42.12345678", "42.12345678", "0", True, "0"),
        ("100", "100.00000001", "0", False, "0.00000001"),
    ],
)
def test_slippage_boundary(
    request_price: str, current_price: str, max_pct: str, valid: bool, deviation: str
) -> None:
    result = SlippageGuard(Decimal(max_pct)).validate(
        Decimal(request_price), Decimal(current_price)
    )
    assert result == (valid, Decimal(deviation))


@pytest.mark.parametrize(
    ("current_price", "half_even", "half_up"),
    [
        # request 200: deviation = |move| / 2, so an odd last digit of the move is a half case.
        ("200.00000001", "0.00000000", "0.00000001"),
        ("200.00000003", "0.00000002", "0.00000002"),
        ("200.00000005", "0.00000002", "0.00000003"),
        ("200.00000007", "0.00000004", "0.00000004"),
        ("199.99999995", "0.00000002", "0.00000003"),
    ],
)
def test_deviation_rounds_half_to_even(current_price: str, half_even: str, half_up: str) -> None:
    deviation = deviation_pct(Decimal(current_price), Decimal(200))
    assert deviation == Decimal(half_even)
    assert _has_8_places(deviation)
    if half_even != half_up:
        # The guard decides on the rounded figure: half-even keeps this move within the limit.
        assert SlippageGuard(Decimal(half_even)).validate(Decimal(200), Decimal(current_price))[0]


@pytest.mark.parametrize(
    ("request_price", "current_price"),
    [
        ("4000000000.00000003", "9333333333.40000007"),
        ("4000000000.00000007", "8571428571.40000015"),
        ("1.1E-7", "1237279220.20592962"),
    ],
)
def test_deviation_is_rounded_once(request_price: str, current_price: str) -> None:
    # The exact deviation lies just off a half-way point; a division rounded to 28 digits before
    # the quantize lands on the half-way point and then rounds the wrong way.
    request, current = Decimal(request_price), Decimal(current_price)
    assert deviation_pct(current, request) == expected_deviation(current, request)


@pytest.mark.parametrize("max_pct", ["-0.00000001", "-1", "-100"])
def test_negative_max_is_refused(max_pct: str) -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        SlippageGuard(Decimal(max_pct))


def test_zero_max_is_allowed() -> None:
    assert SlippageGuard(Decimal(0)).max_slippage_pct == 0


@pytest.mark.parametrize("reference", ["0", "-1"])
def test_deviation_needs_a_positive_reference(reference: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        deviation_pct(Decimal(1), Decimal(reference))


@given(book=bids_and_asks(), request_price=prices())
def test_property_13_snapshot_figures(
    book: tuple[Decimal, Decimal], request_price: Decimal
) -> None:
    bid, ask = book
    figures = snapshot_figures(bid=bid, ask=ask, request_price=request_price)

    expected_mid = _half_even_8((Fraction(bid) + Fraction(ask)) / 2)
    assert figures.spread == ask - bid
    assert figures.mid_price == expected_mid
    assert figures.price_deviation_pct == expected_deviation(expected_mid, request_price)
    assert bid <= figures.mid_price <= ask
    assert figures.spread >= 0
    for figure in (figures.spread, figures.mid_price, figures.price_deviation_pct):
        assert _has_8_places(figure)


@pytest.mark.parametrize(
    ("bid", "ask", "mid"),
    [
        ("1.00000000", "1.00000001", "1.00000000"),
        ("1.00000001", "1.00000002", "1.00000002"),
        ("1.00000002", "1.00000003", "1.00000002"),
        ("99.5", "100.5", "100.00000000"),
    ],
)
def test_snapshot_mid_rounds_half_to_even(bid: str, ask: str, mid: str) -> None:
    figures = snapshot_figures(bid=Decimal(bid), ask=Decimal(ask), request_price=Decimal(1))
    assert figures.mid_price == Decimal(mid)
    assert figures.spread == Decimal(ask) - Decimal(bid)


def test_snapshot_figures_example() -> None:
    figures = snapshot_figures(
        bid=Decimal("1.0850"), ask=Decimal("1.0852"), request_price=Decimal("1.0800")
    )
    assert figures.spread == Decimal("0.0002")
    assert figures.mid_price == Decimal("1.0851")
    # |1.0851 - 1.08| / 1.08 * 100 = 0.47222222...
    assert figures.price_deviation_pct == Decimal("0.47222222")
