"""Slippage previews for notifications: the market as an approval is posted, best effort.

The Discord message shows where the market stands against the requested price when it is drawn
("at posting: now 1.1619, +0.06 %"). The quote comes from the worker's market (built from the
same settings, ``market_from_settings``), bounded in time; a preview that cannot be had is left
out rather than holding up the notification. The Discord bot then keeps it current
(``activities/discord_preview_refresh.py``), as the operators' page does.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import structlog

from activities.market_providers import MarketDataProvider, market_from_settings
from hitl.errors import ConfigurationError, HITLError
from hitl.models import ApprovalRequest
from hitl.preview import SlippagePreview, slippage_preview
from hitl.settings import Settings
from store.engine import Sessions

log = structlog.get_logger(__name__)

QUOTE_SECONDS = 2.0
"""The longest a notification waits for its preview's quote."""


class PreviewQuotes:
    """Previews from ``market`` at the ``max_slippage_pct`` limit (none without a market)."""

    def __init__(
        self,
        market: MarketDataProvider | None,
        *,
        max_slippage_pct: Decimal,
        timeout_seconds: float = QUOTE_SECONDS,
    ) -> None:
        self._market = market
        self._max_slippage_pct = max_slippage_pct
        self._timeout_seconds = timeout_seconds

    @classmethod
    def from_settings(cls, settings: Settings, sessions: Sessions) -> PreviewQuotes:
        """The worker's market and limit; an ambiguous market (which the worker itself refuses
        at start) gives no previews rather than a second refusal here."""
        try:
            market: MarketDataProvider | None = market_from_settings(settings, sessions=sessions)
        except ConfigurationError:
            market = None
        return cls(market, max_slippage_pct=settings.hitl.slippage_max_percent)

    async def preview(self, approval: ApprovalRequest) -> SlippagePreview | None:
        """The preview of approving ``approval`` now, or None when no quote came in time."""
        if self._market is None:
            return None
        try:
            async with asyncio.timeout(self._timeout_seconds):
                quote = await self._market.quote(approval.instrument)
        except (HITLError, TimeoutError) as exc:
            log.warning(
                "no market preview for the notification",
                correlation_id=approval.correlation_id,
                actor="notifier",
                action="notify.preview",
                result="skipped",
                trade_id=str(approval.trade_id),
                error=str(exc) or type(exc).__name__,
            )
            return None
        return slippage_preview(
            trade_id=approval.trade_id,
            side=approval.side,
            request_price=approval.request_price,
            quote=quote,
            max_slippage_pct=self._max_slippage_pct,
        )

    async def aclose(self) -> None:
        """Release the market's resources."""
        if self._market is not None:
            await self._market.aclose()
