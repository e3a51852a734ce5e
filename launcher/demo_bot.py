"""The simulated bot of ``make demo``: proposes a trade every few seconds for a human to decide.

It proposes realistic prices (EUR/USD near 1.16), which anchor the embedded paper market on the
first proposal, and then follows the market the way a real bot follows its feed: each accepted
trade's post-trade snapshot tells it the gateway's current mid. So its requests pass the
slippage check when approved soon enough. It talks to the API over HTTP exactly as a real bot
would.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys
import uuid
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import TextIO

import httpx

from hitl.decimals import quantize8
from hitl.models import Side

DEMO_INSTRUMENTS = ("EUR/USD", "GBP/USD", "USD/JPY")
"""The instruments the demo bot takes turns on."""

DEMO_PRICES: Mapping[str, Decimal] = {
    "EUR/USD": Decimal("1.1612"),
    "GBP/USD": Decimal("1.3405"),
    "USD/JPY": Decimal("147.85"),
}
"""Realistic prices the demo bot starts from (the paper market anchors on the first one)."""

REQUESTS_PATH = "/api/hitl/requests"

# A bot's own price differs from the gateway's by a hair: at most 0.01 %, far inside 0.5 %.
_NOISE = Decimal("0.0001")


class DemoPrices:
    """What the demo bot believes each instrument trades at: ``DEMO_PRICES`` at first, then
    the mid of the gateway's post-trade snapshot of its latest accepted trade.

    Args:
        seed: Seed of the bot's small price noise (simulation, not security).
    """

    def __init__(self, seed: int | None = None) -> None:
        self._prices = dict(DEMO_PRICES)
        self._random = random.Random(seed)  # noqa: S311

    def price(self, instrument: str) -> Decimal:
        """The price to propose now: the believed mid, moved by at most 0.01 %."""
        noise = Decimal(self._random.randint(-1000, 1000)) / 1000 * _NOISE
        return quantize8(self._prices[instrument] * (1 + noise))

    def learn(self, instrument: str, record: object) -> bool:
        """Follow the market from an approval record (``GET /api/hitl/{id}``); True when its
        snapshot named a mid."""
        snapshot = record.get("snapshot") if isinstance(record, dict) else None
        mid = snapshot.get("mid_price") if isinstance(snapshot, dict) else None
        try:
            value = Decimal(str(mid)) if mid is not None else None
        except InvalidOperation:
            return False
        if value is None or not value.is_finite() or value <= 0:
            return False
        self._prices[instrument] = value
        return True


def demo_proposal(*, instrument: str, side: Side, prices: DemoPrices) -> dict[str, str]:
    """The JSON body of one demo request, priced where the bot believes the market is."""
    return {
        "trade_id": str(uuid.uuid4()),
        "instrument": instrument,
        "side": side.value,
        "risk_pct": "1.5",
        "confidence": "0.8",
        "request_price": str(prices.price(instrument)),
        "reasoning_summary": f"Demo bot: simulated {side.value.lower()} signal on {instrument}.",
    }


async def follow_market(
    client: httpx.AsyncClient, *, bot_token: str, trade_id: str, instrument: str, prices: DemoPrices
) -> None:
    """Learn the market's mid from an earlier trade's record, if it was accepted by now."""
    try:
        answer = await client.get(
            f"/api/hitl/{trade_id}", headers={"Authorization": f"Bearer {bot_token}"}
        )
    except httpx.HTTPError:
        return  # the next proposal keeps the price the bot believed
    if answer.is_success:
        prices.learn(instrument, answer.json())


async def propose(
    client: httpx.AsyncClient,
    *,
    bot_token: str,
    body: dict[str, str],
    out: TextIO,
) -> bool:
    """POST one proposal and tell the human what happened; True when the API accepted it."""
    try:
        answer = await client.post(
            REQUESTS_PATH, json=body, headers={"Authorization": f"Bearer {bot_token}"}
        )
    except httpx.HTTPError as exc:
        print(f"demo bot: could not reach the API: {exc!r}", file=out, flush=True)
        return False
    if answer.is_success:
        print(
            f"demo bot: {body['side']} {body['instrument']} at {body['request_price']} awaits"
            f" approval (trade_id {body['trade_id']})",
            file=out,
            flush=True,
        )
        return True
    print(
        f"demo bot: the API refused a request ({answer.status_code}): {answer.text[:300]}",
        file=out,
        flush=True,
    )
    return False


async def run_demo_bot(
    *,
    api_url: str,
    bot_token: str,
    interval_seconds: float = 20.0,
    out: TextIO = sys.stdout,
) -> None:
    """Propose a trade at once, then every ``interval_seconds``, until cancelled.

    Args:
        api_url: The API's root URL, e.g. ``http://127.0.0.1:8000``.
        bot_token: A bearer token of a principal with the ``bot`` role.
        interval_seconds: Pause between two proposals.
        out: Where the human-readable progress lines go.
    """
    prices = DemoPrices()
    turns = zip(itertools.cycle(DEMO_INSTRUMENTS), itertools.cycle(Side), strict=False)
    # The latest proposal per instrument, whose snapshot tells where the market went.
    latest: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=api_url, timeout=15.0) as client:
        for instrument, side in turns:
            if instrument in latest:
                await follow_market(
                    client,
                    bot_token=bot_token,
                    trade_id=latest[instrument],
                    instrument=instrument,
                    prices=prices,
                )
            body = demo_proposal(instrument=instrument, side=side, prices=prices)
            if await propose(client, bot_token=bot_token, body=body, out=out):
                latest[instrument] = body["trade_id"]
            await asyncio.sleep(interval_seconds)
