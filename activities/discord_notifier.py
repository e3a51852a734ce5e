"""The Discord notifier: approval messages with APPROVE and REJECT buttons and a one-time deep
link, timeout notices, security alerts, Guardian summaries, each posted once.

The worker only posts (``discord_rest``); it never connects to Discord's gateway. The bot process
(``python -m discord_bot``) receives the button clicks, which carry the trade id in their custom
id, so they keep working whichever process posted them and across restarts of either. What the
messages look like is ``discord_render``'s, shared with the bot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from uuid import UUID

import discord
import structlog

from activities.deep_links import deep_link_url, issue_deep_link
from activities.discord_render import (
    NO_MENTIONS,
    approval_embed,
    approval_text,
    cascade_embed,
    decision_view,
    escalation_mentions,
    expiry_notice_embed,
    outcome_embed,
    reminder_text,
    security_alert_embed,
)
from activities.discord_rest import (
    APPROVAL_MESSAGE_EVENT,
    DiscordChannel,
    approval_message_key,
    message_key,
)
from activities.market_preview import PreviewQuotes
from activities.notifications import ConsoleNotifier, Notifier
from hitl.errors import ConfigurationError
from hitl.messages import (
    SYSTEM_ACTOR,
    GuardianCascadeSummary,
    ReminderKind,
    SecurityAlertInput,
    temporal_ui_link,
)
from hitl.models import ApprovalRequest
from hitl.settings import Settings
from store.approvals import verified_approval
from store.audit import GUARDIAN_TARGET
from store.engine import Sessions

log = structlog.get_logger(__name__)


class DiscordNotifier:
    """Posts notifications to one Discord channel (``DISCORD_CHANNEL_ID``) as the bot.

    Logs in on first use; ``aclose()`` releases the HTTP session.
    """

    def __init__(
        self,
        *,
        token: str,
        channel_id: int,
        hub_url: str,
        sessions: Sessions,
        api_base_url: str = "",
        temporal_ui_url: str = "",
        namespace: str = "default",
        escalation_role_id: int | None = None,
        previews: PreviewQuotes | None = None,
    ) -> None:
        self._hub_url = hub_url
        self._previews = previews
        self._temporal_ui_url = temporal_ui_url
        self._namespace = namespace
        self._escalation_role_id = escalation_role_id
        self._sessions = sessions
        self._channel = DiscordChannel(
            token=token, channel_id=channel_id, sessions=sessions, api_base_url=api_base_url
        )

    @classmethod
    def from_settings(cls, settings: Settings, sessions: Sessions) -> DiscordNotifier:
        """The notifier the settings describe; SEC-040 when the channel is missing."""
        discord_settings = settings.discord
        if discord_settings.channel_id is None:
            raise ConfigurationError(
                "DISCORD_CHANNEL_ID", "is required when DISCORD_BOT_TOKEN is set"
            )
        return cls(
            token=discord_settings.bot_token.get_secret_value(),
            channel_id=discord_settings.channel_id,
            hub_url=settings.hitl.hub_url,
            sessions=sessions,
            api_base_url=discord_settings.api_base_url,
            temporal_ui_url=settings.hitl.temporal_ui_url,
            namespace=settings.temporal.namespace,
            escalation_role_id=discord_settings.escalation_role_id,
            previews=PreviewQuotes.from_settings(settings, sessions),
        )

    async def aclose(self) -> None:
        """Close the HTTP session, if one was opened (and the previews' market)."""
        await self._channel.aclose()
        if self._previews is not None:
            await self._previews.aclose()

    async def approval_requested(self, approval: ApprovalRequest) -> None:
        """Post the approval with its buttons and a fresh one-time deep link."""
        key = approval_message_key(approval.trade_id)

        async def post() -> discord.Message | None:
            if approval.expires_at <= datetime.now(UTC):
                # A retry that outlived the deadline: buttons now would only mislead, and the
                # timeout notice tells the operators instead.
                log.warning(
                    "approval expired before it could be posted",
                    correlation_id=approval.correlation_id,
                    actor=SYSTEM_ACTOR,
                    action=f"notify.{APPROVAL_MESSAGE_EVENT}",
                    result="skipped",
                    trade_id=str(approval.trade_id),
                )
                return None
            # The token exists only in this attempt's memory: a retry cannot recover it, so it
            # issues a new one, revoking the old in the same transaction.
            token = await issue_deep_link(
                self._sessions,
                trade_id=approval.trade_id,
                expires_at=approval.expires_at,
                correlation_id=approval.correlation_id,
            )
            link = deep_link_url(self._hub_url, approval.trade_id, token)
            # The market at posting; the bot keeps it current (discord_preview_refresh).
            preview = await self._previews.preview(approval) if self._previews else None
            embed = approval_embed(
                approval,
                link=link,
                temporal_link=temporal_ui_link(
                    self._temporal_ui_url, self._namespace, approval.trade_id
                ),
                preview=preview,
            )
            message = await self._channel.send(
                key,
                content=approval_text(approval),
                embed=embed,
                view=decision_view(approval.trade_id),
            )
            if not any(shown.url == link for shown in message.embeds):
                # Discord handed back the message an earlier attempt posted (same nonce); its
                # link was revoked a moment ago, so show the new one.
                message = await message.edit(embed=embed)
            return message

        await self._channel.post_once(
            key,
            event=APPROVAL_MESSAGE_EVENT,
            subject=str(approval.trade_id),
            correlation_id=approval.correlation_id,
            post=post,
        )
        await self._catch_up(approval.trade_id)

    async def _catch_up(self, trade_id: UUID) -> None:
        """Show on the approval message what was decided before it could be posted.

        While Discord was unreachable an operator may have decided over the API or the page;
        that decision's notice found no message and ended, so the message just posted would keep
        live buttons. Read after the message's record is committed: a decision recorded later
        finds the message itself (:meth:`approval_decided`), so one of the two always shows it.
        """
        current = await verified_approval(self._sessions, trade_id)
        if current is None:
            return  # nothing trustworthy to show: the buttons stay, the workflow decides
        if current.is_decided or current.approvers:
            await self.approval_decided(current)

    async def approval_expired(self, approval: ApprovalRequest) -> None:
        """Take the buttons off the approval message and post the timeout notice."""
        event = "approval_expired"
        key = message_key(approval.trade_id, event)

        async def post() -> discord.Message:
            notice = expiry_notice_embed(approval)
            original = await self._channel.posted(approval_message_key(approval.trade_id))
            if original is not None and await self._channel.replace(
                original, embed=outcome_embed(approval)
            ):
                # A reply, so that the notice links to the approval it ends.
                return await self._channel.reply(key, original, embed=notice)
            # No approval message left to end: the notice goes out on its own.
            return await self._channel.send(key, embed=notice)

        await self._channel.post_once(
            key,
            event=event,
            subject=str(approval.trade_id),
            correlation_id=approval.correlation_id,
            post=post,
        )

    async def approval_decided(self, approval: ApprovalRequest) -> None:
        """A decision made elsewhere (API, page): show it on the approval message and take the
        buttons off; a first of two approvals (four eyes) only edits the message's text to
        ``1 of 2 approvals``. Editing twice shows the same thing, so retries need no record."""
        async with self._channel.attempt("approval_decided", approval.correlation_id):
            original = await self._channel.posted(approval_message_key(approval.trade_id))
            if original is None:
                return
            if not approval.is_decided:
                # A first of two approvals (four eyes): the text says so, the buttons stay.
                await self._channel.retext(original, content=approval_text(approval))
                return
            await self._channel.replace(original, embed=outcome_embed(approval))

    async def approval_reminder(self, approval: ApprovalRequest, kind: ReminderKind) -> None:
        """Post the reminder or escalation as a reply to the approval message (so it links to
        the buttons); an escalation mentions ``DISCORD_ESCALATION_ROLE_ID``, the only mention
        any message of the gateway allows."""
        event = f"approval_{kind.value}"
        key = message_key(approval.trade_id, event)

        async def post() -> discord.Message | None:
            if approval.expires_at <= datetime.now(UTC):
                return None  # a retry past the deadline: the timeout notice says it all
            fields = {
                "content": reminder_text(approval, kind, role_id=self._escalation_role_id),
                "allowed_mentions": (
                    escalation_mentions(self._escalation_role_id)
                    if kind is ReminderKind.ESCALATION
                    else NO_MENTIONS
                ),
            }
            original = await self._channel.posted(approval_message_key(approval.trade_id))
            if original is not None:
                return await self._channel.reply(key, original, **fields)
            return await self._channel.send(key, **fields)

        await self._channel.post_once(
            key,
            event=event,
            subject=str(approval.trade_id),
            correlation_id=approval.correlation_id,
            post=post,
        )

    async def security_alert(self, alert: SecurityAlertInput) -> None:
        """Post the alert."""
        event = f"security_alert:{alert.error_code}"
        key = message_key(alert.trade_id, event)

        async def post() -> discord.Message:
            return await self._channel.send(key, embed=security_alert_embed(alert))

        await self._channel.post_once(
            key,
            event=event,
            subject=str(alert.trade_id),
            correlation_id=alert.correlation_id,
            post=post,
        )

    async def guardian_cascade(self, summary: GuardianCascadeSummary) -> None:
        """Post the one summary of the cascade."""
        event = "guardian_cascade"
        lock = f"{GUARDIAN_TARGET}:{summary.correlation_id}:{summary.locked_at.isoformat()}"
        key = message_key(lock, event)

        async def post() -> discord.Message:
            return await self._channel.send(key, embed=cascade_embed(summary))

        await self._channel.post_once(
            key,
            event=event,
            subject=GUARDIAN_TARGET,
            correlation_id=summary.correlation_id,
            post=post,
        )


@asynccontextmanager
async def notifier_from_settings(settings: Settings, sessions: Sessions) -> AsyncIterator[Notifier]:
    """Discord when ``DISCORD_BOT_TOKEN`` is set, else the console; closed on exit."""
    if not settings.discord.enabled:
        yield ConsoleNotifier()
        return
    notifier = DiscordNotifier.from_settings(settings, sessions)
    try:
        yield notifier
    finally:
        await notifier.aclose()
