"""The market-data activity: the current top of book, from the configured provider."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.market_providers import MarketDataError, MarketDataFailure, MarketDataProvider
from hitl.errors import ErrorCode
from hitl.market import MarketQuote
from hitl.messages import FetchQuoteInput


class MarketDataActivities:
    """Quotes as an activity; built in ``worker.py`` with the configured provider."""

    def __init__(self, provider: MarketDataProvider) -> None:
        self._provider = provider

    @activity.defn(name="fetch_quote")
    async def fetch_quote(self, data: FetchQuoteInput) -> MarketQuote:
        """The instrument's current quote; a provider failure is reported as SEC-060 and left
        to the workflow's retry policy."""
        try:
            return await self._provider.quote(data.instrument)
        except MarketDataError as exc:
            # An instrument the market does not know will not appear on a retry.
            raise ApplicationError(
                f"{ErrorCode.MARKET_DATA_UNAVAILABLE.code}: {exc.message}",
                type=ErrorCode.MARKET_DATA_UNAVAILABLE.code,
                non_retryable=exc.failure is MarketDataFailure.UNKNOWN_INSTRUMENT,
            ) from exc
