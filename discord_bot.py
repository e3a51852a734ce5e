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
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import discord
import structlog

from activities.discord_render import (
    CUSTOM_ID_TEMPLATE,
    apology_text,
    decided_text,
    decision_custom_id,
    no_answer_text,
    not_decided_text,
    outcome_embed,
    refused_text,
)
from activities.discord_rest import use_api_base_url
from hitl.errors import ConfigurationError, ErrorCode, HITLError
from hitl.logs import configure_logging
from hitl.messages import DecisionCommand
from hitl.models import ApprovalRequest, Decision, DecisionChannel
from hitl.settings import Settings, get_settings
from store.audit import AuditEntry, record_audit
from store.engine import Sessions, create_engine, session_factory
from workflows.client import ApprovalClient
from workflows.connection import connect_temporal

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
            await self._show(interaction, standing)

    async def _show(self, interaction: discord.Interaction[Any], approval: ApprovalRequest) -> None:
        """Replace the approval message by its outcome, buttons removed."""
        if interaction.message is None:
            return
        try:
            await interaction.message.edit(content=None, embed=outcome_embed(approval), view=None)
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
        super().__init__(intents=discord.Intents(guilds=True))
        self.desk = desk

    async def setup_hook(self) -> None:
        """Listen for every decision button, including those posted before this start."""
        self.add_dynamic_items(DecisionButton)

    async def on_ready(self) -> None:
        """Log the connection."""
        log.info(
            "discord bot connected",
            correlation_id="-",
            actor="discord_bot",
            action="discord.ready",
            result="ok",
            user=str(self.user),
        )


async def run(settings: Settings) -> None:
    """Run the bot until SIGINT or SIGTERM; SEC-040 when Discord is not configured."""
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
    try:
        temporal = await connect_temporal(settings)
        bot = ApprovalBot(
            DecisionDesk(
                approvals=ApprovalClient(temporal, task_queue=settings.temporal.task_queue),
                sessions=session_factory(engine),
                operators=operators,
                decision_timeout=timedelta(seconds=settings.api.decision_timeout_seconds),
            )
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with bot:
            running = asyncio.create_task(bot.start(settings.discord.bot_token.get_secret_value()))
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            await bot.close()
            stopping.cancel()
            await running  # A login failure surfaces here.
    finally:
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
