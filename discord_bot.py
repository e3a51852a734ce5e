"""The Discord bot (``python -m discord_bot``): operators decide approvals with one tap.

The worker's DiscordNotifier posts each approval with APPROVE and REJECT buttons whose custom ids
name the trade (``hitl:approve:<trade_id>``). This process receives their clicks through
Discord's gateway as dynamic items, so a button works whatever posted it and however often either
process restarted. A click from a Discord account mapped to an operator (``DISCORD_OPERATORS``)
goes through the same workflow Update as the API, on the DISCORD channel; any other click is
refused privately and audited, and decides nothing. REJECT takes no reason, so that a decision is
one tap; a reason can be given from the HITL Hub or the API.

Exit codes: 0 after SIGINT or SIGTERM, 2 on a configuration error (SEC-040).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import aiohttp
import discord
import discord.gateway
import structlog
import yarl

from activities.discord_preview_refresh import PreviewRefresher
from activities.discord_render import (
    CUSTOM_ID_TEMPLATE,
    NO_MENTIONS,
    apology_text,
    approval_text,
    decided_text,
    decision_custom_id,
    no_answer_text,
    not_decided_text,
    outcome_embed,
    refused_text,
)
from activities.discord_rest import use_api_base_url
from activities.market_preview import PreviewQuotes
from hitl.errors import ConfigurationError, ErrorCode, HITLError
from hitl.logs import configure_logging
from hitl.messages import DecisionCommand
from hitl.models import ApprovalRequest, Decision, DecisionChannel
from hitl.settings import DiscordSettings, Settings, get_settings
from store.audit import AuditEntry, record_audit
from store.engine import Sessions, create_engine, session_factory
from workflows.client import ApprovalClient
from workflows.connection import connect_temporal
from workflows.reconciler import DISCORD_REPORT_SECONDS
from workflows.reconciler_client import ReconcilerClient

# Named, not __name__: run as "python -m discord_bot" the module is "__main__".
log = structlog.get_logger("discord_bot")

REFUSED_ACTION = "discord.refused"
"""The audit action of a click that was not allowed to decide."""

ANSWER_GRACE = timedelta(seconds=5)
"""How much longer than the decision's own deadline the bot waits for the workflow's answer:
a command accepted just before its deadline still reports its real outcome."""

EXIT_CONFIGURATION = 2


def parse_operators(value: str) -> dict[int, str]:
    """``DISCORD_OPERATORS`` (``discord_user_id:operator_id,…``) as a map; SEC-040 if malformed."""
    operators: dict[int, str] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        user_id, sep, operator = (part.strip() for part in entry.partition(":"))
        if not (sep and user_id.isdigit() and operator):
            raise ConfigurationError(
                "DISCORD_OPERATORS", "entries must be discord_user_id:operator_id, comma-separated"
            )
        operators[int(user_id)] = operator
    return operators


def _standing(exc: HITLError) -> ApprovalRequest | None:
    """The approval as it stands after a refused decision, when the refusal says."""
    if exc.error is ErrorCode.NOT_FOUND:
        return None
    approval: ApprovalRequest | None = exc.details.get("approval")
    return approval


@dataclass
class DecisionDesk:
    """What a click needs: who may decide, the approvals, and the audit trail."""

    approvals: ApprovalClient
    sessions: Sessions
    operators: Mapping[int, str]
    """Discord user id → operator id."""
    decision_timeout: timedelta = timedelta(seconds=10)

    async def decide(
        self, interaction: discord.Interaction[Any], decision: Decision, trade_id: UUID
    ) -> None:
        """Handle one click: refuse strangers; else decide and tell the clicker privately."""
        correlation_id = f"discord-{interaction.id}"
        operator = self.operators.get(interaction.user.id)
        if operator is None:
            await self._refuse(
                interaction,
                decision=decision,
                trade_id=trade_id,
                correlation_id=correlation_id,
                actor=f"discord:{interaction.user.id}",
                reason="this Discord account is not mapped to an operator",
                deferred=False,
            )
            return
        # Discord wants a first answer within 3 s; the decision may take longer (a quote).
        await interaction.response.defer(ephemeral=True, thinking=True)
        command = DecisionCommand(
            operator_id=operator,
            channel=DecisionChannel.DISCORD,
            correlation_id=correlation_id,
            not_after=datetime.now(UTC) + self.decision_timeout,
        )
        standing: ApprovalRequest | None
        try:
            async with asyncio.timeout((self.decision_timeout + ANSWER_GRACE).total_seconds()):
                handle = self.approvals.approval(trade_id)
                if decision is Decision.APPROVE:
                    standing = await handle.approve(command)
                else:
                    standing = await handle.reject(command)
            answer = decided_text(standing)
            result = standing.status.value
        except TimeoutError:
            standing = None
            answer = no_answer_text()
            result = ErrorCode.SERVICE_UNAVAILABLE.code
        except HITLError as exc:
            if exc.error is ErrorCode.UNAUTHORISED_OPERATOR:
                await self._refuse(
                    interaction,
                    decision=decision,
                    trade_id=trade_id,
                    correlation_id=correlation_id,
                    actor=operator,
                    reason=exc.message,
                    deferred=True,
                )
                return
            answer, standing = not_decided_text(exc), _standing(exc)
            result = exc.error.code
        log.info(
            "discord decision",
            correlation_id=correlation_id,
            actor=operator,
            action=f"discord.{decision.value.lower()}",
            result=result,
            trade_id=str(trade_id),
            discord_user_id=str(interaction.user.id),
        )
        await interaction.edit_original_response(content=answer)
        if standing is not None and standing.is_decided:
            # The outcome in place of the request, buttons removed.
            await self._show(
                interaction, standing, content=None, embed=outcome_embed(standing), view=None
            )
        elif standing is not None and standing.approvers:
            # A first of two approvals (four eyes): only the text changes (``1 of 2
            # approvals`` and who gave it); the embed, its deep link and the buttons stay.
            await self._show(interaction, standing, content=approval_text(standing))

    async def _show(
        self, interaction: discord.Interaction[Any], approval: ApprovalRequest, **edit: Any
    ) -> None:
        """Edit the clicked approval message with ``edit``; a failure is logged, never raised."""
        if interaction.message is None:
            return
        try:
            await interaction.message.edit(**edit)
        except discord.HTTPException as exc:
            # The decision stands; only its display in the channel is stale.
            log.warning(
                "could not update the approval message",
                correlation_id=f"discord-{interaction.id}",
                actor="discord_bot",
                action="discord.message_edit",
                result=str(exc.status),
                trade_id=str(approval.trade_id),
            )

    async def _refuse(
        self,
        interaction: discord.Interaction[Any],
        *,
        decision: Decision,
        trade_id: UUID,
        correlation_id: str,
        actor: str,
        reason: str,
        deferred: bool,
    ) -> None:
        code = ErrorCode.UNAUTHORISED_OPERATOR.code
        text = refused_text()
        try:
            if deferred:
                await interaction.edit_original_response(content=text)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        finally:
            await record_audit(
                self.sessions,
                AuditEntry(
                    actor_id=actor,
                    action=REFUSED_ACTION,
                    target_id=trade_id,
                    payload={
                        "decision": decision.value,
                        "reason": reason,
                        "discord_user_id": str(interaction.user.id),
                        "discord_user": interaction.user.name,
                    },
                    correlation_id=correlation_id,
                    error_code=code,
                    idempotency_key=f"{correlation_id}:refused",
                ),
            )
            log.warning(
                "discord decision refused",
                correlation_id=correlation_id,
                actor=actor,
                action=REFUSED_ACTION,
                result=code,
                trade_id=str(trade_id),
                reason=reason,
            )


class DecisionButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=CUSTOM_ID_TEMPLATE
):
    """An APPROVE or REJECT button of any approval message, rebuilt from its custom id."""

    def __init__(self, decision: Decision, trade_id: UUID) -> None:
        super().__init__(discord.ui.Button(custom_id=decision_custom_id(decision, trade_id)))
        self.decision = decision
        self.trade_id = trade_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> DecisionButton:
        """The button a clicked custom id names."""
        return cls(Decision(match["action"].upper()), UUID(match["trade_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        """Hand the click to the bot's desk."""
        client = interaction.client
        assert isinstance(client, ApprovalBot), "registered only on ApprovalBot"
        try:
            await client.desk.decide(interaction, self.decision, self.trade_id)
        except Exception:
            log.exception(
                "discord click failed",
                correlation_id=f"discord-{interaction.id}",
                actor="discord_bot",
                action=f"discord.{self.decision.value.lower()}",
                result="error",
                error_code=ErrorCode.INTERNAL.code,
                trade_id=str(self.trade_id),
            )
            await _apologise(interaction)


async def _apologise(interaction: discord.Interaction[Any]) -> None:
    """Tell the clicker something broke, rather than leave them looking at "thinking…"."""
    text = apology_text(f"discord-{interaction.id}")
    with contextlib.suppress(discord.HTTPException):
        if interaction.response.is_done():
            await interaction.edit_original_response(content=text)
        else:
            await interaction.response.send_message(text, ephemeral=True)


class ApprovalBot(discord.Client):
    """The Discord client listening for decision buttons."""

    def __init__(self, desk: DecisionDesk) -> None:
        # Clicks reach a bot whatever its intents; Guilds (not privileged) lets discord.py
        # resolve the channels they happen in.
        # Every answer and edit carries allowed_mentions: none (nothing a bot wrote can ping).
        super().__init__(intents=discord.Intents(guilds=True), allowed_mentions=NO_MENTIONS)
        self.desk = desk
        self.gateway_connected = False
        self.gateway_detail = "not connected yet"
        self.gateway_changed = asyncio.Event()
        """Set whenever the connection comes or goes (the status reporter waits on it)."""

    def gateway_status(self, *, connected: bool, detail: str) -> None:
        """Record whether the bot is connected to Discord's gateway, and why not."""
        if (connected, detail) != (self.gateway_connected, self.gateway_detail):
            self.gateway_connected, self.gateway_detail = connected, detail
            self.gateway_changed.set()

    async def setup_hook(self) -> None:
        """Listen for every decision button, including those posted before this start."""
        self.add_dynamic_items(DecisionButton)

    def dispatch(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        """Dispatch as discord.py does, except after :meth:`close`: discord.py still dispatches
        ``disconnect`` then, with its loop gone, and the handler's coroutine would be created
        and never run."""
        if self.loop is discord.utils.MISSING:
            return
        super().dispatch(event, *args, **kwargs)

    async def on_resumed(self) -> None:
        """Connected again after an interruption."""
        self.gateway_status(connected=True, detail="")

    async def on_disconnect(self) -> None:
        """The gateway connection dropped; discord.py (or :func:`stay_connected`) retries."""
        if self.gateway_connected:  # keep a more precise reason already recorded
            self.gateway_status(connected=False, detail="disconnected from the gateway")

    async def on_ready(self) -> None:
        """Log the connection."""
        self.gateway_status(connected=True, detail="")
        log.info(
            "discord bot connected",
            correlation_id="-",
            actor="discord_bot",
            action="discord.ready",
            result="ok",
            user=str(self.user),
        )


def use_gateway_url(url: str) -> None:
    """Point discord.py's gateway connections at ``url``; empty keeps Discord's own.

    discord.py connects to the class attribute ``DiscordWebSocket.DEFAULT_GATEWAY`` (and falls
    back to it whenever a session is invalidated), so this holds for the whole process.
    """
    if url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)


async def gateway_url(bot: discord.Client, settings: DiscordSettings) -> str:
    """Where the bot's gateway connection goes: ``DISCORD_GATEWAY_URL``, else, when the REST API
    was moved (``DISCORD_API_BASE_URL``), the URL its ``GET /gateway/bot`` names, else Discord's
    default (empty)."""
    if settings.gateway_url:
        return settings.gateway_url
    if settings.api_base_url:
        _shards, url, _limits = await bot.http.get_bot_gateway()
        return url
    return ""


class Backoff:
    """Exponential backoff with jitter, from ``first`` up to ``maximum`` seconds."""

    def __init__(self, first: float, maximum: float) -> None:
        self._first = first
        self._maximum = maximum
        self._next = first

    def delay(self) -> float:
        """The next delay (half to all of the current step), doubling the step."""
        step = self._next
        self._next = min(step * 2, self._maximum)
        return step * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret

    def reset(self) -> None:
        """Start again from ``first`` (after a success)."""
        self._next = self._first


RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
# What an unreachable Discord (DNS, network, an outage, a 5xx) raises on the way in.
_UNREACHABLE = (
    OSError,
    TimeoutError,
    aiohttp.ClientError,
    discord.GatewayNotFound,
    discord.HTTPException,
    discord.ConnectionClosed,
)


async def stay_connected(
    bot: ApprovalBot,
    token: str,
    settings: DiscordSettings,
    *,
    backoff: Backoff | None = None,
) -> None:
    """Log in and stay connected to Discord's gateway until the bot is closed.

    Whatever makes Discord unreachable, the bot waits and tries again with backoff instead of
    crashing, and says so in :meth:`ApprovalBot.gateway_status`. discord.py retries by itself
    once it has been connected; before that it cannot: when the very first connection fails,
    its reconnect path reads ``self.ws.sequence`` with no websocket yet and raises
    ``AttributeError: 'NoneType' object has no attribute 'sequence'`` (a known open discord.py
    issue). That error, with no websocket, is taken for what it hides: the gateway is
    unreachable. A bad token (LoginFailure) or a gateway refusing the bot for good (discord.py
    closes the client) still ends the bot: retrying cannot mend configuration.
    """
    backoff = backoff or Backoff(RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS)
    logged_in = located = False
    while not bot.is_closed():
        try:
            if not logged_in:
                await bot.login(token)
                logged_in = True
            if not located:
                use_gateway_url(await gateway_url(bot, settings))
                located = True
            await bot.connect(reconnect=True)
            return
        except AttributeError as exc:
            if bot.ws is not None:
                raise
            cause = exc.__context__ or exc
            problem = f"gateway unreachable ({type(cause).__name__}: {cause})"
        except discord.ConnectionClosed as exc:
            if bot.is_closed():
                raise
            problem = f"gateway closed the connection ({exc.code})"
        except _UNREACHABLE as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if not logged_in:
            # The failed login opened an HTTP session; the next attempt opens its own.
            await bot.http.close()
        bot.gateway_status(connected=False, detail=problem)
        delay = backoff.delay()
        log.warning(
            "discord unreachable; retrying",
            correlation_id="-",
            actor="discord_bot",
            action="discord.connect",
            result="retry",
            problem=problem,
            retry_in_seconds=round(delay, 1),
        )
        await asyncio.sleep(delay)


STATUS_EVERY_SECONDS = DISCORD_REPORT_SECONDS


async def report_gateway_status(
    bot: ApprovalBot, reconciler: ReconcilerClient, *, every: float = STATUS_EVERY_SECONDS
) -> None:
    """Tell the reconciler (which ``/readyz`` asks) whether the bot is connected: at once when
    it changes, and every ``every`` seconds; Temporal being away is only logged."""
    failing = False
    while True:
        bot.gateway_changed.clear()
        try:
            await reconciler.report_discord(
                connected=bot.gateway_connected, detail=bot.gateway_detail
            )
            failing = False
        except Exception as exc:  # Temporal away: the next report will do
            if not failing:
                log.warning(
                    "could not report the Discord connection",
                    correlation_id="-",
                    actor="discord_bot",
                    action="discord.status",
                    result="error",
                    error=f"{type(exc).__name__}: {exc}",
                )
            failing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await bot.gateway_changed.wait()


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """Run the bot until SIGINT or SIGTERM (or until ``stop`` is set, when given: then no
    signal handler is installed); SEC-040 when Discord is not configured.

    Discord or Temporal being unreachable is waited out, never a reason to exit: the page and
    the API keep working meanwhile, and ``/readyz`` shows Discord as down.
    """
    if not settings.discord.enabled:
        raise ConfigurationError("DISCORD_BOT_TOKEN", "is required to run the Discord bot")
    operators = parse_operators(settings.discord.operators)
    for operator in sorted(set(operators.values()) - settings.hitl.allowed_operators):
        log.warning(
            "mapped operator is not an allowed operator; their clicks will be refused",
            correlation_id="-",
            actor="discord_bot",
            action="discord.configure",
            result="warning",
            operator=operator,
        )
    use_api_base_url(settings.discord.api_base_url)
    engine = create_engine(settings.database_url)
    previews: PreviewQuotes | None = None
    try:
        # Lazy: Temporal being down when the bot starts is one more thing it waits out.
        temporal = await connect_temporal(settings, lazy=True)
        sessions = session_factory(engine)
        bot = ApprovalBot(
            DecisionDesk(
                approvals=ApprovalClient(temporal, task_queue=settings.temporal.task_queue),
                sessions=sessions,
                operators=operators,
                decision_timeout=timedelta(seconds=settings.api.decision_timeout_seconds),
            )
        )
        signals = stop is None
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        if signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        reconciler = ReconcilerClient(
            temporal,
            task_queue=settings.temporal.task_queue,
            interval_seconds=settings.hitl.reconcile_seconds,
            full_interval_seconds=settings.hitl.reconcile_full_seconds,
        )
        async with bot:
            token = settings.discord.bot_token.get_secret_value()
            running = asyncio.create_task(stay_connected(bot, token, settings.discord))
            reporting = asyncio.create_task(report_gateway_status(bot, reconciler))
            background = [reporting]
            every = settings.hitl.discord_preview_seconds
            if every > 0:
                # The market preview of pending approvals' messages, kept fresh (docs/discord.md).
                previews = PreviewQuotes.from_settings(settings, sessions)
                refresher = PreviewRefresher(bot, sessions, previews)
                background.append(asyncio.create_task(refresher.run(every)))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            # Stopped before the client closes: no refresh runs on a closing HTTP session.
            for task in (stopping, *background):
                task.cancel()
            await bot.close()
            for task in (stopping, *background):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await running  # A login failure surfaces here.
    finally:
        if previews is not None:
            await previews.aclose()
        await engine.dispose()


def main() -> None:
    """The command line: ``python -m discord_bot``."""
    configure_logging()
    try:
        asyncio.run(run(get_settings()))
    except ConfigurationError as exc:
        log.error(
            exc.message,
            correlation_id="-",
            actor="discord_bot",
            action="discord.start",
            result="refused",
            error_code=exc.error.code,
        )
        sys.exit(EXIT_CONFIGURATION)


if __name__ == "__main__":
    main()
