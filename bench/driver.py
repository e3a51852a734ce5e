"""The load: a bot creating approvals and an operator deciding them over the REST API, timed.

Every loop here is bounded in count and in time, and talks only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from activities.market_providers import SimulatedMarketData
from bench.stack import TOKENS

T = TypeVar("T")
R = TypeVar("R")

INSTRUMENT = "EUR/USD"
REQUEST_PRICE = str(SimulatedMarketData().mid_price(INSTRUMENT))
HTTP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Timed:
    """One HTTP call: when it started and ended (``time.perf_counter``) and its answer."""

    started: float
    ended: float
    status: int
    body: dict[str, Any]

    @property
    def seconds(self) -> float:
        """How long the call took."""
        return self.ended - self.started


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (linear interpolation between the closest ranks)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    """The median of ``values``."""
    return float(statistics.median(values))


async def bounded_map(
    function: Callable[[T], Awaitable[R]], items: Sequence[T], *, concurrency: int
) -> list[R]:
    """``function`` over ``items``, at most ``concurrency`` at a time, results in order."""
    results: list[R | None] = [None] * len(items)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(items):
            index = next_index
            next_index += 1
            results[index] = await function(items[index])

    async with asyncio.TaskGroup() as group:
        for _ in range(min(concurrency, len(items))):
            group.create_task(worker())
    return [result for result in results if result is not None]


KEEPALIVE_SECONDS = 2.0
"""How long the driver keeps an idle connection: under uvicorn's ``timeout_keep_alive`` (5 s)."""


class Gateway:
    """The gateway's REST API as the benchmark's bot, operator and admin use it."""

    def __init__(self, base_url: str, *, connections: int = 128) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=HTTP_TIMEOUT,
            # An idle connection is dropped before uvicorn's 5 s keep-alive ends it: with both
            # at 5 s, a request sent on a connection the API was closing failed with ReadError.
            limits=httpx.Limits(
                max_connections=connections,
                max_keepalive_connections=connections,
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self.http.aclose()

    @staticmethod
    def _auth(principal: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKENS[principal]}"}

    async def _post(self, path: str, principal: str, body: dict[str, Any]) -> Timed:
        started = time.perf_counter()
        answer = await self.http.post(path, headers=self._auth(principal), json=body)
        ended = time.perf_counter()
        try:
            payload = answer.json()
        except ValueError:
            payload = {"text": answer.text}
        return Timed(started=started, ended=ended, status=answer.status_code, body=payload)

    async def create(self, trade_id: uuid.UUID | None = None) -> tuple[uuid.UUID, Timed]:
        """The bot proposes a trade; 201 when it awaits a decision."""
        trade_id = trade_id or uuid.uuid4()
        timed = await self._post(
            "/api/hitl/requests",
            "bot-1",
            {
                "trade_id": str(trade_id),
                "instrument": INSTRUMENT,
                "side": "BUY",
                "risk_pct": "1.5",
                "confidence": "0.8",
                "request_price": REQUEST_PRICE,
                "reasoning_summary": "benchmark",
            },
        )
        return trade_id, timed

    async def approve(self, trade_id: uuid.UUID) -> Timed:
        """The operator approves; 200 with status ACCEPTED when recorded."""
        return await self._post(f"/api/hitl/{trade_id}/approve", "alice", {"comment": "bench"})

    async def lock(self, reason: str) -> Timed:
        """The admin locks the Guardian."""
        return await self._post("/api/guardian/lock", "admin", {"reason": reason})

    async def unlock(self) -> Timed:
        """The admin unlocks the Guardian."""
        return await self._post("/api/guardian/unlock", "admin", {"reason": "benchmark"})

    async def create_pending(
        self, count: int, *, concurrency: int
    ) -> tuple[list[uuid.UUID], list[Timed]]:
        """Try to create ``count`` approvals awaiting a decision: the ids answered 201, and the
        answers that were not 201 (counted by the caller, never fatal: a slow answer under load
        is a result, not a reason to stop)."""

        async def one(_: int) -> tuple[uuid.UUID, Timed]:
            return await self.create()

        answers = await bounded_map(one, range(count), concurrency=concurrency)
        created = [trade_id for trade_id, timed in answers if timed.status == httpx.codes.CREATED]
        refused = [timed for _, timed in answers if timed.status != httpx.codes.CREATED]
        return created, refused


async def paced(
    call: Callable[[T], Coroutine[Any, Any, Timed]], items: Sequence[T], *, per_second: float
) -> list[Timed]:
    """``call`` over ``items`` started at a steady rate, whatever earlier calls take (an open
    loop, so a slow answer does not slow the offered load and hide its own latency)."""
    loop_start = time.perf_counter()
    tasks: list[asyncio.Task[Timed]] = []
    for index, item in enumerate(items):
        delay = loop_start + index / per_second - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(call(item)))
    return list(await asyncio.gather(*tasks))
