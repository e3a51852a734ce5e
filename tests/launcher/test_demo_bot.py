"""The demo bot's prices (issue 18 item 5): realistic at first, within a hair of what it
believes, and following the gateway's post-trade snapshots."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from hitl.models import Side
from launcher.demo_bot import DEMO_PRICES, DemoPrices, demo_proposal


def test_the_first_proposals_are_realistic() -> None:
    prices = DemoPrices(seed=1)
    body = demo_proposal(instrument="EUR/USD", side=Side.BUY, prices=prices)
    assert Decimal("1.15") < Decimal(body["request_price"]) < Decimal("1.17")
    assert Decimal("140") < prices.price("USD/JPY") < Decimal("155")


@given(seed=st.integers(min_value=0, max_value=2**32))
def test_a_proposal_is_within_a_hundredth_of_a_percent_of_the_believed_price(seed: int) -> None:
    prices = DemoPrices(seed=seed)
    for instrument, believed in DEMO_PRICES.items():
        proposed = prices.price(instrument)
        assert abs(proposed / believed - 1) <= Decimal("0.0001") + Decimal("1e-8") / believed
        assert proposed == proposed.quantize(Decimal("1e-8"))


def test_the_bot_follows_the_snapshot_of_an_accepted_trade() -> None:
    prices = DemoPrices(seed=3)
    assert prices.learn("EUR/USD", {"approval": {}, "snapshot": {"mid_price": "1.17020000"}})
    assert abs(prices.price("EUR/USD") / Decimal("1.1702") - 1) <= Decimal("0.0001")


def test_a_record_without_a_usable_snapshot_teaches_nothing() -> None:
    prices = DemoPrices(seed=3)
    records: list[object] = [
        {"approval": {}, "snapshot": None},
        {"snapshot": {"mid_price": "NaN"}},
        {"snapshot": {"mid_price": "-1"}},
        {"snapshot": {"mid_price": "abc"}},
        [],
    ]
    for record in records:
        assert not prices.learn("EUR/USD", record)
    assert abs(prices.price("EUR/USD") / DEMO_PRICES["EUR/USD"] - 1) <= Decimal("0.0001")
