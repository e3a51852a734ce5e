"""The paper market of issue 18 item 5: anchored at the first proposal (or a configured price),
then a seeded random walk whose moves stay within k·sigma·sqrt(t); and the SEC-040 rule that only
the embedded default quotes it without being told to."""

from __future__ import annotations

import itertools
import math
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.market_providers import (
    HttpMarketData,
    MarketDataError,
    MarketDataFailure,
    PaperMarket,
    market_from_settings,
)
from hitl.decimals import QUANTUM
from hitl.errors import ConfigurationError, ErrorCode
from hitl.models import Side, TradeStatus
from hitl.paper_market import MarketKind, PriceAnchor, brownian, market_kind, walk_factor
from hitl.settings import (
    DatabaseSettings,
    MarketDataSettings,
    MarketSettings,
    Settings,
    load_settings,
)
from hitl.slippage import SlippageGuard
from store.engine import AsyncEngine, Sessions, create_engine, session_factory
from store.market import first_proposal
from store.tables import ApprovalRow

T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
SIGMA = Decimal("0.0001")

instruments = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12
)
seeds = st.integers(min_value=0, max_value=2**31)
anchor_prices = st.decimals(
    min_value=Decimal("0.5"), max_value=Decimal(100_000), places=8, allow_nan=False
)
volatilities = st.decimals(
    min_value=Decimal("0.000001"), max_value=Decimal("0.01"), places=6, allow_nan=False
)


class Clock:
    """A clock the test moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Anchored:
    """A first-proposal lookup that knows one anchor, and records its calls."""

    def __init__(self, anchor: PriceAnchor | None) -> None:
        self.anchor = anchor
        self.calls: list[str] = []

    async def __call__(self, instrument: str) -> PriceAnchor | None:
        self.calls.append(instrument)
        return self.anchor


def market(
    anchor: PriceAnchor | None,
    *,
    clock: Clock,
    seed: int = 7,
    volatility: Decimal = SIGMA,
    prices: dict[str, Decimal] | None = None,
    spread_bps: Decimal = Decimal(2),
) -> PaperMarket:
    return PaperMarket(
        first_proposal=Anchored(anchor),
        prices=prices,
        volatility=volatility,
        seed=seed,
        spread_bps=spread_bps,
        clock=clock,
    )


def mid(quote_bid: Decimal, quote_ask: Decimal) -> Decimal:
    return (quote_bid + quote_ask) / 2


# ---------------------------------------------------------------------------------------------
# Anchoring
# ---------------------------------------------------------------------------------------------


@given(price=anchor_prices, seed=seeds, instrument=instruments)
async def test_the_walk_starts_at_the_first_proposed_price(
    price: Decimal, seed: int, instrument: str
) -> None:
    clock = Clock(T0)
    paper = market(PriceAnchor(price=price, at=T0), clock=clock, seed=seed)
    quote = await paper.quote(instrument)
    assert mid(quote.bid, quote.ask) == price
    assert quote.bid < price < quote.ask
    # Within the anchor's first second the mid has not moved yet.
    clock.now = T0 + timedelta(milliseconds=999)
    later = await paper.quote(instrument)
    assert mid(later.bid, later.ask) == price


async def test_the_anchor_is_read_once_and_the_walk_then_moves() -> None:
    clock = Clock(T0)
    lookup = Anchored(PriceAnchor(price=Decimal("1.1612"), at=T0))
    paper = PaperMarket(first_proposal=lookup, volatility=SIGMA, seed=3, clock=clock)
    seen = set()
    for second in range(0, 600, 60):
        clock.now = T0 + timedelta(seconds=second)
        quote = await paper.quote("EUR/USD")
        seen.add(mid(quote.bid, quote.ask))
    assert lookup.calls == ["EUR/USD"]
    assert len(seen) > 5  # it walks
    # ... and stays near 1.16 over ten minutes (sigma·sqrt(600) is about 0.25 %).
    assert all(abs(price / Decimal("1.1612") - 1) < Decimal("0.02") for price in seen)


async def test_two_workers_and_a_restart_quote_alike() -> None:
    anchor = PriceAnchor(price=Decimal("2650.5"), at=T0)
    clock = Clock(T0 + timedelta(minutes=17, seconds=3))
    first, second = market(anchor, clock=clock), market(anchor, clock=clock)
    warm = await first.quote("XAU/USD")
    clock.now += timedelta(minutes=5)
    later = await first.quote("XAU/USD")
    # The second worker (or the first, restarted) never saw the earlier quote.
    restarted = await second.quote("XAU/USD")
    assert (later.bid, later.ask) == (restarted.bid, restarted.ask)
    assert (warm.bid, warm.ask) != (later.bid, later.ask)


async def test_a_different_seed_is_a_different_path() -> None:
    anchor = PriceAnchor(price=Decimal("1.1612"), at=T0)
    clock = Clock(T0 + timedelta(hours=1))
    one = await market(anchor, clock=clock, seed=1).quote("EUR/USD")
    two = await market(anchor, clock=clock, seed=2).quote("EUR/USD")
    assert one.bid != two.bid


async def test_anchors_come_from_the_first_approval_in_the_database(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, writer=True)
    assert await first_proposal(sessions, "XAU/USD") is None
    await _record(sessions, "XAU/USD", Decimal("2650.5"), T0)
    await _record(sessions, "XAU/USD", Decimal("2700"), T0 + timedelta(seconds=30))
    await _record(sessions, "EUR/USD", Decimal("1.1612"), T0 + timedelta(seconds=40))
    anchor = await first_proposal(sessions, "XAU/USD")
    assert anchor == PriceAnchor(price=Decimal("2650.5"), at=T0)
    assert await first_proposal(sessions, "EUR/USD") == PriceAnchor(
        price=Decimal("1.1612"), at=T0 + timedelta(seconds=40)
    )

    # The worker's market, on that database: a new proposal at the market is approved.
    paper = market_from_settings(
        _settings(database=""), sessions=session_factory(engine, writer=True)
    )
    assert isinstance(paper, PaperMarket)
    quote = await paper.quote("XAU/USD")
    start = paper.mid_at("XAU/USD", anchor, T0)
    assert start == Decimal("2650.5")
    assert abs(mid(quote.bid, quote.ask) / start - 1) < Decimal("0.5")


async def _record(sessions: Sessions, instrument: str, price: Decimal, at: datetime) -> None:
    # Written directly: the anchor is read from these columns alone, whatever else a
    # request's transaction writes beside them.
    async with sessions() as session, session.begin():
        session.add(
            ApprovalRow(
                trade_id=uuid.uuid4(),
                instrument=instrument,
                side=Side.BUY.value,
                risk_pct=Decimal("1.5"),
                confidence=Decimal("0.8"),
                request_price=price,
                reasoning_summary="paper market anchor",
                correlation_id=f"corr-{uuid.uuid4()}",
                status=TradeStatus.AWAITING_APPROVAL.value,
                requested_at=at,
                expires_at=at + timedelta(minutes=5),
                row_hash="0" * 64,
            )
        )


# ---------------------------------------------------------------------------------------------
# Configured prices, unknown instruments, failures
# ---------------------------------------------------------------------------------------------


async def test_a_configured_price_quotes_flat_until_the_first_proposal() -> None:
    clock = Clock(T0)
    paper = market(None, clock=clock, prices={"XAU/USD": Decimal("2650.5")})
    for hours in (0, 1, 30):
        clock.now = T0 + timedelta(hours=hours)
        quote = await paper.quote("XAU/USD")
        assert mid(quote.bid, quote.ask) == Decimal("2650.5")


@given(seed=seeds, seconds=st.integers(min_value=0, max_value=10**6))
async def test_a_configured_price_wins_over_the_first_proposal(seed: int, seconds: int) -> None:
    clock = Clock(T0 + timedelta(seconds=seconds))
    configured = market(
        PriceAnchor(price=Decimal(2700), at=T0),
        clock=clock,
        seed=seed,
        prices={"XAU/USD": Decimal("2650.5")},
    )
    proposed = market(PriceAnchor(price=Decimal("2650.5"), at=T0), clock=clock, seed=seed)
    one, two = await configured.quote("XAU/USD"), await proposed.quote("XAU/USD")
    assert (one.bid, one.ask) == (two.bid, two.ask)


def test_configured_prices_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_ALLOWED_OPERATORS", "alice")
    monkeypatch.setenv("HITL_MARKET_PRICES", "EUR/USD=1.1612, XAU/USD=2650.5")
    monkeypatch.setenv("HITL_MARKET_VOLATILITY", "0.00005")
    monkeypatch.setenv("HITL_MARKET_SEED", "42")
    market_settings = load_settings().market
    assert market_settings.market_prices == {
        "EUR/USD": Decimal("1.1612"),
        "XAU/USD": Decimal("2650.5"),
    }
    assert market_settings.market_volatility == Decimal("0.00005")
    assert market_settings.market_seed == 42


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HITL_MARKET_PRICES", "EUR/USD"),
        ("HITL_MARKET_PRICES", "EUR/USD=-1"),
        ("HITL_MARKET_PRICES", "EUR/USD=abc"),
        ("HITL_MARKET_VOLATILITY", "0.5"),
        ("HITL_MARKET", "paper"),
    ],
)
def test_invalid_market_settings_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("HITL_ALLOWED_OPERATORS", "alice")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    assert refused.value.error is ErrorCode.CONFIGURATION
    assert refused.value.variable == name


async def test_an_instrument_nobody_priced_is_unknown() -> None:
    paper = market(None, clock=Clock(T0))
    with pytest.raises(MarketDataError) as failed:
        await paper.quote("ETH-PERP")
    assert failed.value.failure is MarketDataFailure.UNKNOWN_INSTRUMENT


async def test_a_database_failure_is_unreachable_market_data() -> None:
    async def broken(instrument: str) -> PriceAnchor | None:
        raise OSError("connection refused")

    paper = PaperMarket(first_proposal=broken, clock=Clock(T0))
    with pytest.raises(MarketDataError) as failed:
        await paper.quote("EUR/USD")
    assert failed.value.failure is MarketDataFailure.UNREACHABLE
    assert failed.value.error is ErrorCode.MARKET_DATA_UNAVAILABLE


# ---------------------------------------------------------------------------------------------
# The walk
# ---------------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(
    price=anchor_prices,
    seed=seeds,
    instrument=instruments,
    volatility=volatilities,
    seconds=st.integers(min_value=1, max_value=10**8),
)
async def test_over_t_seconds_the_move_stays_within_six_sigma_sqrt_t(
    price: Decimal, seed: int, instrument: str, volatility: Decimal, seconds: int
) -> None:
    # ln(mid/anchor) is normal with standard deviation sigma·sqrt(t): beyond 6 of them has a
    # probability of 2e-9 per draw, and the path is a function of the seed, so never flaky.
    anchor = PriceAnchor(price=price, at=T0)
    paper = market(anchor, clock=Clock(T0), seed=seed, volatility=volatility)
    moved = paper.mid_at(instrument, anchor, T0 + timedelta(seconds=seconds))
    bound = 6 * float(volatility) * math.sqrt(seconds)
    rounding = float(QUANTUM / min(moved, price))
    assert abs(math.log(float(moved / price))) <= bound + 2 * rounding


@settings(max_examples=10, deadline=None)
@given(seed=seeds, instrument=instruments)
def test_the_path_has_brownian_increments(seed: int, instrument: str) -> None:
    # 2,000 one-second increments: mean 0 and variance 1 (the estimate's standard error is
    # about 0.03, so 0.75..1.25 is eight of them).
    path = [brownian(seed, instrument, second) for second in range(2001)]
    steps = [b - a for a, b in itertools.pairwise(path)]
    mean = sum(steps) / len(steps)
    variance = sum((step - mean) ** 2 for step in steps) / (len(steps) - 1)
    assert abs(mean) < 0.15
    assert 0.75 < variance < 1.25
    assert path[0] == 0.0


def test_the_path_over_long_horizons_has_variance_t() -> None:
    # W(t) across 400 instruments at t = 1 day: the sample variance is t within 25 %.
    day = 86_400
    values = [brownian(11, f"I{n}", day) for n in range(400)]
    variance = sum(value**2 for value in values) / len(values)
    assert 0.75 * day < variance < 1.25 * day


@given(seed=seeds, instrument=instruments, seconds=st.integers(min_value=0, max_value=10**9))
def test_the_path_is_a_function_of_seed_instrument_and_time(
    seed: int, instrument: str, seconds: int
) -> None:
    assert brownian(seed, instrument, seconds) == brownian(seed, instrument, seconds)
    factor = walk_factor(seed=seed, instrument=instrument, volatility=SIGMA, seconds=seconds)
    assert factor > 0
    assert (
        walk_factor(seed=seed, instrument=instrument, volatility=Decimal(0), seconds=seconds) == 1
    )


@given(
    price=st.decimals(min_value=QUANTUM, max_value=Decimal(10**9), places=8, allow_nan=False),
    seed=seeds,
    spread_bps=st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False),
    seconds=st.integers(min_value=0, max_value=10**7),
)
async def test_every_quote_has_bid_below_ask_with_8_places(
    price: Decimal, seed: int, spread_bps: Decimal, seconds: int
) -> None:
    paper = market(
        PriceAnchor(price=price, at=T0),
        clock=Clock(T0 + timedelta(seconds=seconds)),
        seed=seed,
        volatility=Decimal("0.001"),
        spread_bps=spread_bps,
    )
    quote = await paper.quote("X")
    assert Decimal(0) < quote.bid < quote.ask
    for leg in (quote.bid, quote.ask):
        assert leg == leg.quantize(QUANTUM)
        assert leg.as_tuple().exponent == -8


async def test_a_fresh_proposal_passes_and_a_stale_one_can_exceed_the_limit() -> None:
    # The default 0.5 % limit: a proposal decided within its five minutes at the market passes
    # for every one of 200 instruments; proposals left a day at their old price do not all.
    guard = SlippageGuard(Decimal("0.5"))
    anchor = PriceAnchor(price=Decimal("1.1612"), at=T0)
    clock = Clock(T0)
    paper = market(anchor, clock=clock, seed=5)
    fresh_failures = stale_failures = 0
    for n in range(200):
        instrument = f"FX{n}"
        clock.now = T0 + timedelta(hours=1)
        proposed = paper.mid_at(instrument, anchor, clock.now)
        for later, counter in ((timedelta(minutes=5), "fresh"), (timedelta(days=1), "stale")):
            clock.now = T0 + timedelta(hours=1) + later
            executed = paper.mid_at(instrument, anchor, clock.now)
            within, _deviation = guard.validate(proposed, executed)
            if not within:
                if counter == "fresh":
                    fresh_failures += 1
                else:
                    stale_failures += 1
    assert fresh_failures == 0
    assert stale_failures > 50


# ---------------------------------------------------------------------------------------------
# Which market a deployment quotes (SEC-040)
# ---------------------------------------------------------------------------------------------


def _settings(*, database: str, market: str = "", url: str = "") -> Settings:
    base = Settings.model_validate(
        {
            "hitl": {"allowed_operators": "alice"},
            "database": DatabaseSettings(url=database),
            "temporal": {},
            "market_data": MarketDataSettings(url=url),
            "market": MarketSettings(market=market),
            "worker": {},
            "api": {},
            "discord": {},
        }
    )
    return base


POSTGRES = "postgresql+asyncpg://hitl:pw@db:5432/hitl"


@pytest.mark.parametrize(
    ("database", "chosen", "url", "kind"),
    [
        ("", "", "", MarketKind.SIMULATED),
        ("sqlite+aiosqlite:////srv/hitl/hitl.db", "", "", MarketKind.SIMULATED),
        ("", "", "http://quotes:8080", MarketKind.HTTP),
        (POSTGRES, "", "http://quotes:8080", MarketKind.HTTP),
        (POSTGRES, "simulated", "", MarketKind.SIMULATED),
        (POSTGRES, "simulated", "http://quotes:8080", MarketKind.SIMULATED),
        ("", "http", "http://quotes:8080", MarketKind.HTTP),
    ],
)
def test_the_market_a_deployment_quotes(
    database: str, chosen: str, url: str, kind: MarketKind
) -> None:
    assert market_kind(_settings(database=database, market=chosen, url=url)) is kind


def test_a_deployment_on_its_own_database_refuses_the_paper_market_unless_told() -> None:
    with pytest.raises(ConfigurationError) as refused:
        market_kind(_settings(database=POSTGRES))
    assert refused.value.error is ErrorCode.CONFIGURATION
    assert refused.value.variable == "HITL_MARKET"
    # The message is the fix, on one line.
    assert "HITL_MARKET=simulated" in str(refused.value)
    assert "MARKET_DATA_URL=" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_http_without_a_url_refuses_to_start() -> None:
    with pytest.raises(ConfigurationError) as refused:
        market_kind(_settings(database="", market="http"))
    assert refused.value.variable == "MARKET_DATA_URL"


async def test_the_worker_builds_the_market_it_was_told(empty_sqlite_url: str) -> None:
    # Never connected to: neither the http market nor a refusal reads an anchor.
    engine = create_engine(empty_sqlite_url)
    sessions = session_factory(engine, writer=True)
    http = market_from_settings(
        _settings(database=POSTGRES, market="http", url="http://quotes:8080"), sessions=sessions
    )
    try:
        assert isinstance(http, HttpMarketData)
    finally:
        await http.aclose()
    with pytest.raises(ConfigurationError):
        market_from_settings(_settings(database=POSTGRES), sessions=sessions)
    await engine.dispose()
