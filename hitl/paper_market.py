"""The paper market's rules: which market a deployment quotes, and the random walk it follows.

The paper market starts each instrument at its first proposed price (or a configured one) and
then follows a geometric random walk. The walk is a *function of time*, not a process state:
the mid ``t`` seconds after the anchor is ``anchor · exp(sigma · W(t))``, where ``W`` is a standard
Brownian path drawn from ``(seed, instrument)`` alone. Two workers, or one restarted, given the
same anchor and seed quote the same price at the same second without sharing anything else.
"""

from __future__ import annotations

import hashlib
import math
from decimal import Decimal
from enum import StrEnum
from statistics import NormalDist

from pydantic import BaseModel, ConfigDict

from hitl.errors import ConfigurationError
from hitl.models import Price, UtcDatetime
from hitl.settings import Settings

LEVELS = 40
"""The Brownian path is built over [0, 2**LEVELS] seconds (about 35,000 years)."""
HORIZON_SECONDS = 2**LEVELS

_STANDARD_NORMAL = NormalDist()
# 52 bits of the digest: (x + 0.5) / 2**52 is exact in a float and strictly inside (0, 1).
_UNIFORM_BITS = 52
_MAX_EXPONENT = 50.0


class MarketKind(StrEnum):
    """Where a worker's quotes come from."""

    SIMULATED = "simulated"
    """The paper market (``activities.market_providers.PaperMarket``)."""
    HTTP = "http"
    """The market-data service at ``MARKET_DATA_URL``."""


def market_kind(settings: Settings) -> MarketKind:
    """The market this deployment quotes, refusing an ambiguous one (SEC-040).

    ``HITL_MARKET`` decides when set. Unset, ``MARKET_DATA_URL`` means http, and the paper market
    is chosen only for the embedded default (SQLite): a deployment on its own database server
    (the compose stack, any PostgreSQL ``DATABASE_URL``) must say ``HITL_MARKET=simulated`` to
    check real trades against a paper market.

    Raises:
        ConfigurationError: ``HITL_MARKET=http`` without ``MARKET_DATA_URL``, or neither set on
            a deployment that is not on SQLite.
    """
    chosen = settings.market.market
    if chosen == MarketKind.HTTP.value:
        if not settings.market_data.url:
            raise ConfigurationError(
                "MARKET_DATA_URL",
                "is required when HITL_MARKET=http: set it to the market-data service's URL",
            )
        return MarketKind.HTTP
    if chosen == MarketKind.SIMULATED.value:
        return MarketKind.SIMULATED
    if settings.market_data.url:
        return MarketKind.HTTP
    if not settings.database_url.startswith("sqlite"):
        raise ConfigurationError(
            "HITL_MARKET",
            "is required outside the embedded default (DATABASE_URL is not SQLite and"
            " MARKET_DATA_URL is not set): set MARKET_DATA_URL=<quotes service> for real prices,"
            " or HITL_MARKET=simulated to quote the paper market on purpose",
        )
    return MarketKind.SIMULATED


class PriceAnchor(BaseModel):
    """Where an instrument's walk starts: a price at an instant."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    price: Price
    at: UtcDatetime


def _normal(seed: int, instrument: str, node: int) -> float:
    """A standard normal draw for one node of the path: a hash, so any worker draws the same."""
    key = f"{seed}:{instrument}:{node}".encode("utf-8", "surrogatepass")
    bits = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> (64 - _UNIFORM_BITS)
    return _STANDARD_NORMAL.inv_cdf((bits + 0.5) / 2**_UNIFORM_BITS)


def brownian(seed: int, instrument: str, seconds: int) -> float:
    """``W(seconds)``: a standard Brownian path at a whole second, ``W(0) = 0``.

    Built top-down as a Brownian bridge (Lévy's construction): ``W(2**LEVELS)`` is drawn first,
    then each interval's midpoint given its ends, down to the second asked for. Every value is
    a pure function of ``(seed, instrument, seconds)`` and costs ``LEVELS`` draws, and the
    values at different seconds are jointly those of one Brownian motion (independent
    increments, variance ``t``).
    """
    target = min(max(seconds, 0), HORIZON_SECONDS)
    if target == 0:
        return 0.0
    low, high = 0, HORIZON_SECONDS
    # Node 0 is the far end; every other node is the midpoint it names (unique in the tree).
    w_low, w_high = 0.0, math.sqrt(HORIZON_SECONDS) * _normal(seed, instrument, 0)
    while high - low > 1:
        middle = (low + high) // 2
        # Given W(low) and W(high), W(middle) is normal around their mean with variance L/4.
        spread = math.sqrt((high - low) / 4)
        w_middle = (w_low + w_high) / 2 + spread * _normal(seed, instrument, middle)
        if target == middle:
            return w_middle
        if target < middle:
            high, w_high = middle, w_middle
        else:
            low, w_low = middle, w_middle
    return w_low if target == low else w_high


def walk_factor(*, seed: int, instrument: str, volatility: Decimal, seconds: int) -> Decimal:
    """How far the mid has moved ``seconds`` after its anchor: ``exp(sigma · W(seconds))``.

    ``volatility`` (sigma) is the relative standard deviation over one second, so ``ln`` of the
    factor is normal with standard deviation ``sigma·√seconds``. The float is confined to the
    factor (12 significant digits); the price it multiplies stays a Decimal.
    """
    if volatility == 0 or seconds <= 0:
        return Decimal(1)
    # Capped so exp() cannot overflow after an absurd horizon; callers clamp the price anyway.
    exponent = max(
        -_MAX_EXPONENT, min(_MAX_EXPONENT, float(volatility) * brownian(seed, instrument, seconds))
    )
    return Decimal(f"{math.exp(exponent):.12g}")
