"""Market-data providers: where the gateway's current prices come from (I/O).

The Temporal activities call ``quote()`` on one provider built by ``market_from_settings``: the
``PaperMarket`` on the embedded default (or with ``HITL_MARKET=simulated``), ``HttpMarketData``
when ``MARKET_DATA_URL`` is set. ``SimulatedMarketData`` is a fixed-price market that tests and
benchmarks move by hand. Every failure is a ``MarketDataError`` (SEC-060); retrying is
Temporal's job, never the provider's.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import quote as url_quote

import httpx
from pydantic import TypeAdapter, ValidationError

from hitl.decimals import PLACES, QUANTUM, quantize8
from hitl.errors import ConfigurationError, ErrorCode, HITLError
from hitl.market import MarketQuote
from hitl.models import Price
from hitl.paper_market import MarketKind, PriceAnchor, market_kind, walk_factor
from hitl.settings import MarketDataSettings, Settings
from store.engine import Sessions
from store.market import first_proposal

_PRICE = TypeAdapter(Price)

_MIN_BASE_PRICE = Decimal(1)
_MAX_BASE_PRICE = Decimal(1000)
# Number of distinct 8-place prices in [1, 1000): the hash is reduced modulo this.
_BASE_PRICE_STEPS = int((_MAX_BASE_PRICE - _MIN_BASE_PRICE).scaleb(PLACES))
# Jitter is drawn as an integer in [-_JITTER_STEPS, _JITTER_STEPS] so no float touches a price.
_JITTER_STEPS = 1_000_000
_MAX_JITTER_PERCENT = Decimal(1)
_MAX_SPREAD_BPS = Decimal(1000)
# The largest NUMERIC(18,8) value: no quote may exceed it.
_MAX_PRICE = Decimal("9999999999.99999999")
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class MarketDataFailure(StrEnum):
    """What kind of market-data failure happened, so callers can decide whether to retry."""

    TIMEOUT = "TIMEOUT"
    UNREACHABLE = "UNREACHABLE"
    HTTP_STATUS = "HTTP_STATUS"
    MALFORMED = "MALFORMED"
    CROSSED_BOOK = "CROSSED_BOOK"
    UNKNOWN_INSTRUMENT = "UNKNOWN_INSTRUMENT"


class MarketDataError(HITLError):
    """No usable quote for an instrument (SEC-060); ``failure`` says why."""

    def __init__(self, instrument: str, failure: MarketDataFailure, problem: str) -> None:
        super().__init__(
            ErrorCode.MARKET_DATA_UNAVAILABLE,
            f"Market data for {instrument!r} is unavailable: {problem}",
            instrument=instrument,
            failure=failure.value,
        )
        self.instrument = instrument
        self.failure = failure
        self.problem = problem


class MarketDataProvider(Protocol):
    """A source of top-of-book quotes."""

    async def quote(self, instrument: str) -> MarketQuote:
        """The current bid and ask of ``instrument``; raises ``MarketDataError``."""
        ...

    async def aclose(self) -> None:
        """Release the provider's resources."""
        ...


def _elapsed_ms(started_ns: int) -> Decimal:
    # perf_counter_ns is the perf_counter clock in integer nanoseconds: exact Decimal, no float.
    return quantize8(Decimal(time.perf_counter_ns() - started_ns) / Decimal(1_000_000))


class SimulatedMarketData:
    """A market moved by hand: a stable price per instrument, a fixed spread and a tiny jitter.

    Tests and benchmarks use it to put the price where they need it (``set_price``); the
    embedded default quotes the ``PaperMarket``.

    A bot quoting ``mid_price()`` sees the gateway's execution price within half the spread plus
    the jitter (0.02 % by default), far inside the default 0.5 % slippage limit.

    Args:
        prices: Mid prices to start from; other instruments get one derived from their name.
        spread_bps: Distance from bid to ask in basis points of the mid (0 to 1000).
        jitter_percent: Largest random move of the mid per quote, in percent (0 to 1).
        seed: Seed of the jitter's random source, for reproducible runs.
    """

    def __init__(
        self,
        *,
        prices: Mapping[str, Decimal] | None = None,
        spread_bps: Decimal = Decimal(2),
        jitter_percent: Decimal = Decimal("0.01"),
        seed: int | None = None,
    ) -> None:
        if not Decimal(0) <= spread_bps <= _MAX_SPREAD_BPS:
            raise ValueError(f"spread_bps must be between 0 and {_MAX_SPREAD_BPS}")
        if not Decimal(0) <= jitter_percent <= _MAX_JITTER_PERCENT:
            raise ValueError(f"jitter_percent must be between 0 and {_MAX_JITTER_PERCENT}")
        self.spread_bps = spread_bps
        self.jitter_percent = jitter_percent
        # Simulation noise, not security: a seedable PRNG is what we want.
        self._random = random.Random(seed)  # noqa: S311
        self._prices: dict[str, Decimal] = {}
        for instrument, mid in (prices or {}).items():
            self.set_price(instrument, mid)

    @staticmethod
    def base_price(instrument: str) -> Decimal:
        """The name-derived mid of ``instrument``: stable across processes, in [1, 1000)."""
        # sha256 rather than hash(): str hashes are salted per process.
        digest = hashlib.sha256(instrument.encode("utf-8", "surrogatepass")).digest()
        steps = int.from_bytes(digest[:8], "big") % _BASE_PRICE_STEPS
        return quantize8(_MIN_BASE_PRICE + Decimal(steps).scaleb(-PLACES))

    def set_price(self, instrument: str, mid: Decimal) -> None:
        """Move the market: quote ``instrument`` around ``mid`` (rounded to 8 places) from now on.

        Raises:
            ValueError: ``mid`` is not positive, or its highest possible ask would not fit a price.
        """
        try:
            rounded = _PRICE.validate_python(quantize8(mid))
            headroom = 1 + self._jitter_fraction + self._half_spread_fraction
            _PRICE.validate_python(quantize8(rounded * headroom))
        except (ValidationError, InvalidOperation):
            raise ValueError(
                f"invalid simulated price {mid} for {instrument!r}: its quotes must be positive"
                " and fit NUMERIC(18,8)"
            ) from None
        self._prices[instrument] = rounded

    def mid_price(self, instrument: str) -> Decimal:
        """The mid a simulated bot would quote: the set price, else the name-derived one."""
        mid = self._prices.get(instrument)
        return self.base_price(instrument) if mid is None else mid

    async def quote(self, instrument: str) -> MarketQuote:
        """A quote around ``mid_price(instrument)``, jittered by at most ``jitter_percent``."""
        started_ns = time.perf_counter_ns()
        mid = self.mid_price(instrument)
        step = Decimal(self._random.randint(-_JITTER_STEPS, _JITTER_STEPS)) / _JITTER_STEPS
        # Never below one quantum: the jitter is capped at 1 %, so this only guards rounding.
        moved = max(quantize8(mid * (1 + step * self._jitter_fraction)), QUANTUM)
        half_spread = quantize8(moved * self._half_spread_fraction)
        # Both legs are exact 8-place values, so (bid + ask) / 2 is exactly ``moved``.
        bid = moved - half_spread
        ask = moved + half_spread
        return MarketQuote(
            instrument=instrument,
            bid=bid,
            ask=ask,
            as_of=datetime.now(UTC),
            response_latency_ms=_elapsed_ms(started_ns),
        )

    async def aclose(self) -> None:
        """Nothing to release."""

    @property
    def _jitter_fraction(self) -> Decimal:
        return self.jitter_percent / 100

    @property
    def _half_spread_fraction(self) -> Decimal:
        return self.spread_bps / 20_000


AnchorLookup = Callable[[str], Awaitable[PriceAnchor | None]]
"""Finds an instrument's first proposal (``store.market.first_proposal`` bound to sessions)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class PaperMarket:
    """The embedded default's market: each instrument starts where bots first priced it.

    An instrument's walk starts at its first proposal (``first_proposal``, read from the
    database, so every worker and every restart finds the same one) at that proposal's price,
    or at the configured price in ``prices``; from there the mid follows the seeded random walk
    of :func:`hitl.paper_market.walk_factor`, a function of the seconds since the anchor. A
    proposal priced at the current market passes the slippage check; one left waiting long
    enough can exceed it.

    Args:
        first_proposal: Finds an instrument's first proposal, or None before there is one.
        prices: Configured starting prices (``HITL_MARKET_PRICES``), which win over proposals.
        volatility: Relative standard deviation of the mid over one second (0 to 0.01).
        seed: The random path's seed; workers sharing it quote alike.
        spread_bps: Distance from bid to ask in basis points of the mid (0 to 1000); the book
            is always at least one quantum wide on each side.
        clock: Where "now" comes from (tests pass their own).
    """

    def __init__(
        self,
        *,
        first_proposal: AnchorLookup,
        prices: Mapping[str, Decimal] | None = None,
        volatility: Decimal = Decimal("0.0001"),
        seed: int = 0,
        spread_bps: Decimal = Decimal(2),
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not Decimal(0) <= spread_bps <= _MAX_SPREAD_BPS:
            raise ValueError(f"spread_bps must be between 0 and {_MAX_SPREAD_BPS}")
        if not Decimal(0) <= volatility <= Decimal("0.01"):
            raise ValueError("volatility must be between 0 and 0.01")
        self._first_proposal = first_proposal
        self._prices = {
            instrument: _PRICE.validate_python(p) for instrument, p in (prices or {}).items()
        }
        self.volatility = volatility
        self.seed = seed
        self._half_spread = spread_bps / 20_000
        self._clock = clock
        # Found anchors never change (the first proposal stays first): one read per instrument.
        self._anchors: dict[str, PriceAnchor] = {}

    async def anchor(self, instrument: str) -> PriceAnchor | None:
        """Where ``instrument``'s walk starts; None when only a configured price is known (the
        walk starts at the first proposal), raises ``MarketDataError`` when nothing is."""
        cached = self._anchors.get(instrument)
        if cached is not None:
            return cached
        try:
            found = await self._first_proposal(instrument)
        except Exception as exc:  # the database's failures are as many as its drivers'
            raise MarketDataError(
                instrument,
                MarketDataFailure.UNREACHABLE,
                f"the paper market could not read its anchor ({type(exc).__name__}: {exc})",
            ) from exc
        configured = self._prices.get(instrument)
        if found is None:
            if configured is None:
                raise MarketDataError(
                    instrument,
                    MarketDataFailure.UNKNOWN_INSTRUMENT,
                    "no price yet: the paper market starts at an instrument's first proposal"
                    " (or at its HITL_MARKET_PRICES entry)",
                )
            return None
        anchor = found if configured is None else PriceAnchor(price=configured, at=found.at)
        self._anchors[instrument] = anchor
        return anchor

    def mid_at(self, instrument: str, anchor: PriceAnchor, at: datetime) -> Decimal:
        """The mid of ``instrument`` at ``at``, on the walk that starts at ``anchor``."""
        # Whole seconds: the walk moves once a second, and a clock slightly behind the
        # anchor's (another host's) reads as the anchor itself.
        seconds = max(int((at - anchor.at).total_seconds()), 0)
        factor = walk_factor(
            seed=self.seed, instrument=instrument, volatility=self.volatility, seconds=seconds
        )
        highest = quantize8(_MAX_PRICE / (1 + 2 * self._half_spread))
        # Clamped before rounding: a product beyond the price range has more digits than the
        # decimal context can quantize (InvalidOperation after an absurd horizon).
        return max(quantize8(min(anchor.price * factor, highest)), 2 * QUANTUM)

    async def quote(self, instrument: str) -> MarketQuote:
        """The paper market's current quote of ``instrument``; raises ``MarketDataError``."""
        started_ns = time.perf_counter_ns()
        anchor = await self.anchor(instrument)
        now = self._clock()
        mid = self._prices[instrument] if anchor is None else self.mid_at(instrument, anchor, now)
        # At least one quantum each side, so bid < ask always; the mid is at least two quanta.
        half_spread = max(quantize8(mid * self._half_spread), QUANTUM)
        return MarketQuote(
            instrument=instrument,
            bid=mid - half_spread,
            ask=mid + half_spread,
            as_of=now,
            response_latency_ms=_elapsed_ms(started_ns),
        )

    async def aclose(self) -> None:
        """Nothing to release (the sessions belong to the worker)."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a price")


class HttpMarketData:
    """Quotes from an HTTP service: ``GET {base_url}/quotes/{instrument}`` → ``{"bid", "ask"}``.

    One ``httpx.AsyncClient`` with the configured timeout and no retries of its own: a failed
    call raises ``MarketDataError`` at once and Temporal's retry policy decides what happens next.

    Args:
        base_url: The service's http(s) root URL.
        timeout_seconds: The limit for the whole call, and for each of its connect, write,
            read and pool phases.
    """

    def __init__(self, base_url: str, *, timeout_seconds: float) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in {"http", "https"} or not url.host:
            raise ConfigurationError("MARKET_DATA_URL", f"is invalid: {base_url!r} is not http(s)")
        self.base_url = base_url.rstrip("/")
        self.timeout_seconds = timeout_seconds
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            # retries=0 is httpx's default; spelled out because Temporal owns retries.
            transport=httpx.AsyncHTTPTransport(retries=0),
            headers={"Accept": "application/json"},
        )

    def url_for(self, instrument: str) -> str:
        """The quote URL of ``instrument``; ``/`` is encoded too, so ``EUR/USD`` is one segment."""
        return f"{self.base_url}/quotes/{url_quote(instrument, safe='')}"

    async def quote(self, instrument: str) -> MarketQuote:
        """The service's current quote of ``instrument``; raises ``MarketDataError``."""
        started_ns = time.perf_counter_ns()
        try:
            # httpx times each phase; the outer deadline also bounds a server that trickles bytes.
            async with asyncio.timeout(self.timeout_seconds):
                response = await self._client.get(self.url_for(instrument))
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise MarketDataError(
                instrument,
                MarketDataFailure.TIMEOUT,
                f"no answer within {self.timeout_seconds} s ({type(exc).__name__})",
            ) from exc
        except httpx.HTTPError as exc:
            raise MarketDataError(
                instrument,
                MarketDataFailure.UNREACHABLE,
                f"request failed ({type(exc).__name__}: {exc})",
            ) from exc
        latency_ms = _elapsed_ms(started_ns)

        if response.status_code == httpx.codes.NOT_FOUND:
            raise MarketDataError(
                instrument, MarketDataFailure.UNKNOWN_INSTRUMENT, "unknown instrument (HTTP 404)"
            )
        if response.status_code != httpx.codes.OK:
            raise MarketDataError(
                instrument,
                MarketDataFailure.HTTP_STATUS,
                f"unexpected HTTP status {response.status_code}",
            )
        bid, ask = _parse_book(instrument, response.text)
        if bid > ask:
            raise MarketDataError(
                instrument, MarketDataFailure.CROSSED_BOOK, f"crossed book: bid {bid} > ask {ask}"
            )
        try:
            return MarketQuote(
                instrument=instrument,
                bid=bid,
                ask=ask,
                as_of=datetime.now(UTC),
                response_latency_ms=latency_ms,
            )
        except ValidationError as exc:
            # E.g. a price too large for NUMERIC(18,8).
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise MarketDataError(
                instrument,
                MarketDataFailure.MALFORMED,
                f"malformed answer: {where}: {first['msg']}",
            ) from None

    async def aclose(self) -> None:
        """Close the HTTP client and its connections."""
        await self._client.aclose()


def _parse_book(instrument: str, text: str) -> tuple[Decimal, Decimal]:
    try:
        # parse_float=Decimal reads JSON numbers from their text: no float ever holds a price.
        body = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise MarketDataError(
            instrument, MarketDataFailure.MALFORMED, f"malformed answer: not JSON ({exc})"
        ) from None
    if not isinstance(body, dict):
        raise MarketDataError(
            instrument, MarketDataFailure.MALFORMED, "malformed answer: not a JSON object"
        )
    return _parse_price(instrument, body, "bid"), _parse_price(instrument, body, "ask")


def _parse_price(instrument: str, body: dict[str, Any], field: str) -> Decimal:
    if field not in body:
        raise MarketDataError(
            instrument, MarketDataFailure.MALFORMED, f"malformed answer: missing {field!r}"
        )
    raw = body[field]

    def invalid(why: str) -> MarketDataError:
        return MarketDataError(
            instrument, MarketDataFailure.MALFORMED, f"malformed answer: {field} {raw!r:.40} {why}"
        )

    # bool is an int subclass: JSON true must not become a price of 1.
    if isinstance(raw, bool) or not isinstance(raw, str | int | Decimal):
        raise invalid("is not a number")
    # Decimal() alone would also take "NaN", "Infinity", "1_000" and padding.
    if isinstance(raw, str) and not _DECIMAL_TEXT.fullmatch(raw):
        raise invalid("is not a decimal number")
    try:
        # The store keeps 8 places; round the way every other price is rounded.
        value = quantize8(Decimal(raw))
    except InvalidOperation:
        raise invalid("is too large") from None
    if value <= 0:
        raise invalid("is not positive")
    return value


def provider_from_settings(settings: MarketDataSettings) -> MarketDataProvider:
    """``HttpMarketData`` when ``MARKET_DATA_URL`` is set, else a ``SimulatedMarketData`` (for
    tests and benchmarks, which have no database of proposals; the worker uses
    :func:`market_from_settings`)."""
    if settings.url:
        return HttpMarketData(settings.url, timeout_seconds=settings.timeout_seconds)
    return SimulatedMarketData()


def market_from_settings(settings: Settings, *, sessions: Sessions) -> MarketDataProvider:
    """The worker's market: ``HttpMarketData`` or the ``PaperMarket`` anchored on the
    approvals in ``sessions``' database, as :func:`hitl.paper_market.market_kind` decides.

    Raises:
        ConfigurationError: The deployment's market is ambiguous or incomplete (SEC-040).
    """
    if market_kind(settings) is MarketKind.HTTP:
        return HttpMarketData(
            settings.market_data.url, timeout_seconds=settings.market_data.timeout_seconds
        )

    async def lookup(instrument: str) -> PriceAnchor | None:
        return await first_proposal(sessions, instrument)

    return PaperMarket(
        first_proposal=lookup,
        prices=settings.market.market_prices,
        volatility=settings.market.market_volatility,
        seed=settings.market.market_seed,
    )
