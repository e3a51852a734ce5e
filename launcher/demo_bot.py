"""The simulated bot of ``make demo``: proposes a trade every few seconds for a human to decide.

It quotes the embedded simulated market's mid price, so its requests pass the slippage check
when approved at once; it talks to the API over HTTP exactly as a real bot would.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from typing import TextIO

import httpx

from activities.market_providers import SimulatedMarketData
from hitl.models import Side

DEMO_INSTRUMENTS = ("EUR/USD", "GBP/USD", "USD/JPY")
"""The instruments the demo bot takes turns on."""

REQUESTS_PATH = "/api/hitl/requests"


def demo_proposal(*, instrument: str, side: Side, market: SimulatedMarketData) -> dict[str, str]:
    """The JSON body of one demo request, priced at the simulated market's mid."""
    return {
        "trade_id": str(uuid.uuid4()),
        "instrument": instrument,
        "side": side.value,
        "risk_pct": "1.5",
        "confidence": "0.8",
        "request_price": str(market.mid_price(instrument)),
        "reasoning_summary": f"Demo bot: simulated {side.value.lower()} signal on {instrument}.",
    }


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
    market = SimulatedMarketData()
    turns = zip(itertools.cycle(DEMO_INSTRUMENTS), itertools.cycle(Side), strict=False)
    async with httpx.AsyncClient(base_url=api_url, timeout=15.0) as client:
        for instrument, side in turns:
            body = demo_proposal(instrument=instrument, side=side, market=market)
            await propose(client, bot_token=bot_token, body=body, out=out)
            await asyncio.sleep(interval_seconds)
