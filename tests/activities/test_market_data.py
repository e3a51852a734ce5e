"""Market-data providers: the simulated market, and HTTP against a real local server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities.market_providers import (
    HttpMarketData,
    MarketDataError,
    MarketDataFailure,
    MarketDataProvider,
    SimulatedMarketData,
    provider_from_settings,
)
from hitl.decimals import QUANTUM
from hitl.errors import ConfigurationError, ErrorCode
from hitl.market import MarketQuote
from hitl.models import Side
from hitl.settings import HITLSettings, MarketDataSettings
from hitl.slippage import SlippageGuard

# ---------------------------------------------------------------------------------------------
# A real HTTP/1.1 server on 127.0.0.1, small enough to control every byte it answers.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What the test server answers on one path."""

    body: bytes
    status: int = 200
    delay: float = 0.0
    """Seconds to wait before answering at all."""
    byte_delay: float = 0.0
    """Seconds between body bytes, to trickle the answer."""


class QuoteServer:
    """Answers ``replies[path]`` (404 for unknown paths) and records each raw request target."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.targets: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        # Handlers still sleeping (the timeout tests) are cut short rather than left pending.
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("ascii")
            self.targets.append(target)
            reply = self.replies.get(target, Reply(b'{"detail": "Not Found"}', status=404))
            await asyncio.sleep(reply.delay)
            writer.write(
                f"HTTP/1.1 {reply.status} Test\r\n"
                f"Content-Type: application/json\r\n"
                f"Content-Length: {len(reply.body)}\r\n"
                f"Connection: close\r\n\r\n".encode("ascii")
            )
            if reply.byte_delay:
                for index in range(len(reply.body)):
                    writer.write(reply.body[index : index + 1])
                    await writer.drain()
                    await asyncio.sleep(reply.byte_delay)
            else:
                writer.write(reply.body)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # The client gave up first (timeout tests); nothing to answer.
        finally:
            writer.close()
            with suppress(ConnectionError):
                await writer.wait_closed()
            self._handlers.discard(task)


@pytest.fixture
async def server() -> AsyncIterator[QuoteServer]:
    """A started quote server, stopped after the test."""
    quote_server = QuoteServer()
    await quote_server.start()
    yield quote_server
    await quote_server.stop()


@pytest.fixture
async def provider(server: QuoteServer) -> AsyncIterator[HttpMarketData]:
    """An HTTP provider on ``server`` with a short timeout, closed after the test."""
    http_provider = HttpMarketData(server.url, timeout_seconds=0.3)
    yield http_provider
    await http_provider.aclose()


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------------------------------------
# HttpMarketData
# ---------------------------------------------------------------------------------------------


async def test_http_quote_keeps_string_decimals_exact(
    server: QuoteServer, provider: HttpMarketData
) -> None:
    server.replies["/quotes/BTC-PERP"] = Reply(b'{"bid": "1.23456789", "ask": "1.23456790"}')

    quote = await provider.quote("BTC-PERP")

    assert quote.instrument == "BTC-PERP"
    assert quote.bid == Decimal("1.23456789")
    assert quote.ask == Decimal("1.23456790")
    assert Decimal(0) < quote.response_latency_ms < Decimal(1000)
    assert quote.as_of.utcoffset() is not None


async def test_http_quote_reads_json_numbers_without_float(
    server: QuoteServer, provider: HttpMarketData
) -> None:
    # 99999999.99999999 has 16 significant digits: as a float it would become 100000000.0.
    server.replies["/quotes/X"] = Reply(b'{"bid": 1.23456789, "ask": 99999999.99999999}')

    quote = await provider.quote("X")

    assert quote.bid == Decimal("1.23456789")
    assert quote.ask == Decimal("99999999.99999999")


async def test_http_quote_accepts_integer_prices(
    server: QuoteServer, provider: HttpMarketData
) -> None:
    server.replies["/quotes/X"] = Reply(b'{"bid": 100, "ask": 101}')

    quote = await provider.quote("X")

    assert (quote.bid, quote.ask) == (Decimal(100), Decimal(101))


async def test_http_quote_url_encodes_the_instrument(server: QuoteServer) -> None:
    server.replies["/quotes/EUR%2FUSD"] = Reply(b'{"bid": "1.08500000", "ask": "1.08520000"}')
    # A trailing slash on the base URL must not double the separator.
    http_provider = HttpMarketData(server.url + "/", timeout_seconds=0.3)
    try:
        quote = await http_provider.quote("EUR/USD")
    finally:
        await http_provider.aclose()

    assert server.targets == ["/quotes/EUR%2FUSD"]
    assert quote.instrument == "EUR/USD"
    assert (quote.bid, quote.ask) == (Decimal("1.085"), Decimal("1.0852"))


async def test_http_timeout_fails_fast(server: QuoteServer) -> None:
    server.replies["/quotes/SLOW"] = Reply(b'{"bid": "1", "ask": "2"}', delay=5.0)
    http_provider = HttpMarketData(server.url, timeout_seconds=0.2)
    started = time.perf_counter()
    try:
        with pytest.raises(MarketDataError) as caught:
            await http_provider.quote("SLOW")
    finally:
        await http_provider.aclose()

    assert time.perf_counter() - started < 1.0
    assert caught.value.failure is MarketDataFailure.TIMEOUT
    assert "0.2 s" in caught.value.message


async def test_http_timeout_bounds_a_trickling_answer(server: QuoteServer) -> None:
    # Each byte arrives well within the per-read timeout; only the whole-call deadline stops it.
    body = b'{"bid": "1.00000000", "ask": "2.00000000"}'
    server.replies["/quotes/TRICKLE"] = Reply(body, byte_delay=0.1)
    http_provider = HttpMarketData(server.url, timeout_seconds=0.3)
    started = time.perf_counter()
    try:
        with pytest.raises(MarketDataError) as caught:
            await http_provider.quote("TRICKLE")
    finally:
        await http_provider.aclose()

    assert time.perf_counter() - started < 1.0
    assert caught.value.failure is MarketDataFailure.TIMEOUT


@pytest.mark.parametrize(
    ("reply", "failure", "fragment"),
    [
        pytest.param(Reply(b"oops", status=500), MarketDataFailure.HTTP_STATUS, "500", id="500"),
        pytest.param(
            Reply(b'{"bid": "1", "ask": "2"}', status=202),
            MarketDataFailure.HTTP_STATUS,
            "202",
            id="non-200-success",
        ),
        pytest.param(
            Reply(b"<html>bad gateway</html>"), MarketDataFailure.MALFORMED, "not JSON", id="html"
        ),
        pytest.param(Reply(b""), MarketDataFailure.MALFORMED, "not JSON", id="empty"),
        pytest.param(
            Reply(b'["1", "2"]'), MarketDataFailure.MALFORMED, "not a JSON object", id="array"
        ),
        pytest.param(
            Reply(b'{"bid": "1.0"}'), MarketDataFailure.MALFORMED, "missing 'ask'", id="no-ask"
        ),
        pytest.param(
            Reply(b'{"ask": "1.0"}'), MarketDataFailure.MALFORMED, "missing 'bid'", id="no-bid"
        ),
        pytest.param(
            Reply(b'{"bid": "-1.5", "ask": "1.0"}'),
            MarketDataFailure.MALFORMED,
            "not positive",
            id="negative",
        ),
        pytest.param(
            Reply(b'{"bid": 0, "ask": 1}'), MarketDataFailure.MALFORMED, "not positive", id="zero"
        ),
        pytest.param(
            Reply(b'{"bid": "0.000000001", "ask": "1"}'),
            MarketDataFailure.MALFORMED,
            "not positive",
            id="rounds-to-zero",
        ),
        pytest.param(
            Reply(b'{"bid": "2.00000000", "ask": "1.99999999"}'),
            MarketDataFailure.CROSSED_BOOK,
            "crossed book",
            id="crossed",
        ),
        pytest.param(
            Reply(b'{"bid": null, "ask": "1"}'),
            MarketDataFailure.MALFORMED,
            "not a number",
            id="null",
        ),
        pytest.param(
            Reply(b'{"bid": true, "ask": "1"}'),
            MarketDataFailure.MALFORMED,
            "not a number",
            id="bool",
        ),
        pytest.param(
            Reply(b'{"bid": "abc", "ask": "1"}'),
            MarketDataFailure.MALFORMED,
            "not a decimal",
            id="text",
        ),
        pytest.param(
            Reply(b'{"bid": "NaN", "ask": "1"}'),
            MarketDataFailure.MALFORMED,
            "not a decimal",
            id="nan-string",
        ),
        pytest.param(
            Reply(b'{"bid": NaN, "ask": 1}'), MarketDataFailure.MALFORMED, "NaN", id="nan-literal"
        ),
        pytest.param(
            Reply(b'{"bid": "1_000", "ask": "2000"}'),
            MarketDataFailure.MALFORMED,
            "not a decimal",
            id="underscore",
        ),
        pytest.param(
            Reply(b'{"bid": "1e30", "ask": "1e30"}'),
            MarketDataFailure.MALFORMED,
            "too large",
            id="huge",
        ),
        pytest.param(
            Reply(b'{"bid": "12345678901", "ask": "12345678901"}'),
            MarketDataFailure.MALFORMED,
            "bid: Decimal input should have no more than 10 digits",
            id="over-numeric-18-8",
        ),
    ],
)
async def test_http_bad_answers_raise_market_data_error(
    server: QuoteServer,
    provider: HttpMarketData,
    reply: Reply,
    failure: MarketDataFailure,
    fragment: str,
) -> None:
    server.replies["/quotes/EUR%2FUSD"] = reply

    with pytest.raises(MarketDataError) as caught:
        await provider.quote("EUR/USD")

    error = caught.value
    assert error.failure is failure
    assert error.error is ErrorCode.MARKET_DATA_UNAVAILABLE
    assert error.instrument == "EUR/USD"
    assert fragment in error.message
    assert str(error).startswith("SEC-060: Market data for 'EUR/USD' is unavailable")


async def test_http_unknown_instrument(provider: HttpMarketData) -> None:
    with pytest.raises(MarketDataError) as caught:
        await provider.quote("NOPE")

    assert caught.value.failure is MarketDataFailure.UNKNOWN_INSTRUMENT
    assert "404" in caught.value.message


async def test_http_connection_refused() -> None:
    http_provider = HttpMarketData(f"http://127.0.0.1:{closed_port()}", timeout_seconds=0.5)
    try:
        with pytest.raises(MarketDataError) as caught:
            await http_provider.quote("EUR/USD")
    finally:
        await http_provider.aclose()

    assert caught.value.failure is MarketDataFailure.UNREACHABLE
    assert "ConnectError" in caught.value.message


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:8000", "http://"])
def test_http_refuses_a_non_http_url(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        HttpMarketData(url, timeout_seconds=1.0)

    assert caught.value.variable == "MARKET_DATA_URL"
    assert caught.value.error is ErrorCode.CONFIGURATION


# ---------------------------------------------------------------------------------------------
# SimulatedMarketData
# ---------------------------------------------------------------------------------------------


def test_simulated_base_price_is_stable() -> None:
    # Pinned: demos and bots rely on a symbol's simulated price not moving between releases.
    assert SimulatedMarketData.base_price("EUR/USD") == Decimal("738.32370380")
    assert SimulatedMarketData().mid_price("EUR/USD") == SimulatedMarketData().mid_price("EUR/USD")
    assert SimulatedMarketData.base_price("EUR/USD") != SimulatedMarketData.base_price("BTC-PERP")


@given(instrument=st.text(max_size=64))
def test_simulated_base_price_range(instrument: str) -> None:
    price = SimulatedMarketData.base_price(instrument)

    assert Decimal(1) <= price < Decimal(1000)
    assert price == price.quantize(QUANTUM)


async def test_simulated_quote_without_jitter_is_exact() -> None:
    market = SimulatedMarketData(prices={"EUR/USD": Decimal(100)}, jitter_percent=Decimal(0))

    quote = await market.quote("EUR/USD")

    # 2 bps of 100 is 0.02: one basis point either side.
    assert (quote.bid, quote.ask) == (Decimal("99.99"), Decimal("100.01"))
    assert quote.instrument == "EUR/USD"
    assert quote.response_latency_ms >= 0
    assert quote.as_of.utcoffset() is not None


async def test_simulated_set_price_moves_the_market() -> None:
    market = SimulatedMarketData(jitter_percent=Decimal(0), spread_bps=Decimal(0))
    market.set_price("BTC-PERP", Decimal("65000.123456789"))

    assert market.mid_price("BTC-PERP") == Decimal("65000.12345679")
    quote = await market.quote("BTC-PERP")
    assert quote.bid == quote.ask == Decimal("65000.12345679")
    # Other instruments keep their name-derived price.
    assert market.mid_price("ETH-PERP") == SimulatedMarketData.base_price("ETH-PERP")


@pytest.mark.parametrize(
    "mid",
    [
        Decimal(0),
        Decimal("-1"),
        Decimal("0.000000004"),
        Decimal("9999999999.9"),
        Decimal("1e30"),
        Decimal("NaN"),
        Decimal("Infinity"),
    ],
)
def test_simulated_set_price_refuses_impossible_prices(mid: Decimal) -> None:
    with pytest.raises(ValueError, match="invalid simulated price"):
        SimulatedMarketData().set_price("X", mid)


@pytest.mark.parametrize(
    ("spread_bps", "jitter_percent"),
    [
        (Decimal(-1), Decimal(0)),
        (Decimal(1001), Decimal(0)),
        (Decimal(2), Decimal("-0.1")),
        (Decimal(2), Decimal("1.5")),
    ],
)
def test_simulated_refuses_bad_configuration(spread_bps: Decimal, jitter_percent: Decimal) -> None:
    with pytest.raises(ValueError, match="must be between"):
        SimulatedMarketData(spread_bps=spread_bps, jitter_percent=jitter_percent)


async def test_simulated_jitter_is_seeded() -> None:
    first = SimulatedMarketData(seed=7)
    second = SimulatedMarketData(seed=7)

    first_bids = [(await first.quote("X")).bid for _ in range(20)]
    second_bids = [(await second.quote("X")).bid for _ in range(20)]

    assert first_bids == second_bids
    assert len(set(first_bids)) > 1


@given(
    instrument=st.text(max_size=64),
    jitter_percent=st.decimals(min_value=0, max_value=1, places=4),
    seed=st.integers(),
)
async def test_simulated_quote_stays_within_bounds(
    instrument: str, jitter_percent: Decimal, seed: int
) -> None:
    market = SimulatedMarketData(jitter_percent=jitter_percent, seed=seed)
    reference = market.mid_price(instrument)

    quote = await market.quote(instrument)

    assert Decimal(0) < quote.bid <= quote.ask
    mid = (quote.bid + quote.ask) / 2
    # One quantum of slack: the jittered mid is rounded to 8 places.
    assert abs(mid - reference) <= reference * jitter_percent / 100 + QUANTUM


@given(instrument=st.text(min_size=1, max_size=64), seed=st.integers())
async def test_simulated_bot_stays_within_default_slippage(instrument: str, seed: int) -> None:
    market = SimulatedMarketData(seed=seed)
    request_price = market.mid_price(instrument)
    default_limit = HITLSettings.model_fields["slippage_max_percent"].default
    assert default_limit == Decimal("0.5")
    guard = SlippageGuard(default_limit)

    quote = await market.quote(instrument)

    for side in Side:
        is_valid, deviation = guard.validate(request_price, quote.execution_price(side))
        assert is_valid
        # Half the spread plus the jitter: 0.01 % + 0.01 %.
        assert deviation <= Decimal("0.02")


# ---------------------------------------------------------------------------------------------
# provider_from_settings
# ---------------------------------------------------------------------------------------------


async def test_provider_from_settings_without_url_is_simulated() -> None:
    provider: MarketDataProvider = provider_from_settings(MarketDataSettings(url=""))
    try:
        assert isinstance(provider, SimulatedMarketData)
        assert isinstance(await provider.quote("EUR/USD"), MarketQuote)
    finally:
        await provider.aclose()


async def test_provider_from_settings_with_url_is_http(server: QuoteServer) -> None:
    server.replies["/quotes/X"] = Reply(b'{"bid": "1", "ask": "1"}')
    provider = provider_from_settings(MarketDataSettings(url=server.url, timeout_seconds=1.5))
    try:
        assert isinstance(provider, HttpMarketData)
        assert provider.timeout_seconds == 1.5
        quote = await provider.quote("X")
        assert quote.bid == quote.ask == Decimal(1)
    finally:
        await provider.aclose()
