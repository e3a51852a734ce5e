"""The gateway's client for trading bots: HTTP with the bot's token, never Temporal.

::

    async with BotClient("http://127.0.0.1:8000", token) as gateway:
        await gateway.request(proposal)
        final = await gateway.outcome(proposal.trade_id)   # ACCEPTED or REJECTED
"""

from __future__ import annotations

from hitl_client.client import BotClient, GatewayError, Outcome, Ticket

__all__ = ["BotClient", "GatewayError", "Outcome", "Ticket"]
