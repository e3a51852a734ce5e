"""Discord notifications, through discord.py's REST layer: approval messages with APPROVE and
REJECT buttons and a one-time deep link, timeout notices, security alerts, Guardian summaries.

The worker only posts; it never connects to Discord's gateway. The bot process
(``python -m discord_bot``) receives the button clicks, which carry the trade id in their custom
id, so they keep working whichever process posted them and across restarts of either.

Sent once, however often Temporal retries: each notification has a key (trade and event); a
message already recorded under its key is not sent again, and the send carries a nonce derived
from the key with ``enforce_nonce``, so Discord itself hands back the first message when an
earlier attempt posted it but failed before recording it. The record is an audit entry
(``notify.discord``, with the message id), written once per key.

discord.py retries 5xx answers and sleeps through 429s inside one request; here both fail the
attempt at once instead, so that Temporal owns the retries (with Discord's ``retry_after`` as the
next delay) and every retry is visible in the workflow's history.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, Final
from uuid import UUID

import aiohttp
import discord
import discord.http
import structlog
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.deep_links import deep_link_url, issue_deep_link
from activities.notifications import ConsoleNotifier, Notifier
from hitl.errors import ConfigurationError
from hitl.messages import SYSTEM_ACTOR, GuardianCascadeSummary, SecurityAlertInput
from hitl.models import ApprovalRequest, Decision, DecisionReason, TradeStatus
from hitl.settings import Settings
from store.tables import AuditRow

log = structlog.get_logger(__name__)

CUSTOM_ID_TEMPLATE: Final = (
    r"hitl:(?P<action>approve|reject):"
    r"(?P<trade_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
)
"""What a decision button's custom id looks like: ``hitl:approve:<trade_id>``."""

SENT_ACTION: Final = "notify.discord"
"""The audit action recording a posted Discord message."""

DEFAULT_ATTEMPT_SECONDS: Final = 20.0
"""An attempt's time budget outside an activity (in one, three quarters of its timeout)."""

_NONCE_LENGTH: Final = 25  # Discord refuses longer nonces.


def decision_custom_id(decision: Decision, trade_id: UUID) -> str:
    """The custom id of the button that makes ``decision`` on ``trade_id``'s approval."""
    return f"hitl:{decision.value.lower()}:{trade_id}"


def use_api_base_url(url: str) -> None:
    """Point discord.py at ``url`` (e.g. ``http://127.0.0.1:8999/api/v10``); empty keeps Discord.

    discord.py builds every REST and webhook URL from the class attribute ``Route.BASE``, so this
    holds for the whole process.
    """
    if url:
        discord.http.Route.BASE = url.rstrip("/")


# --- what the messages look like --------------------------------------------------------------


def _number(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _stamp(moment: datetime, style: str) -> str:
    """Discord's timestamp markup: every reader sees it in their own time zone."""
    return f"<t:{int(moment.timestamp())}:{style}>"


def _title(approval: ApprovalRequest) -> str:
    return f"{approval.side.value} {approval.instrument}"


def _add_trade_fields(embed: discord.Embed, approval: ApprovalRequest) -> None:
    embed.add_field(name="Instrument", value=approval.instrument)
    embed.add_field(name="Side", value=approval.side.value)
    embed.add_field(name="Risk", value=f"{_number(approval.risk_pct)}%")
    embed.add_field(name="Confidence", value=f"{_number(approval.confidence * 100)}%")
    embed.add_field(name="Request price", value=_number(approval.request_price))
    embed.add_field(name="Trade", value=f"`{approval.trade_id}`", inline=False)


def approval_embed(approval: ApprovalRequest, *, link: str) -> discord.Embed:
    """The request: the trade, a live countdown, the bot's reasoning and the deep link."""
    embed = discord.Embed(
        title=f"Approval needed: {_title(approval)}",
        url=link,
        description=approval.reasoning_summary,
        colour=discord.Colour.orange(),
        timestamp=approval.requested_at,
    )
    _add_trade_fields(embed, approval)
    embed.add_field(name="Expires", value=_stamp(approval.expires_at, "R"))
    embed.add_field(name="Review", value=f"[Open in the HITL Hub]({link}) (one-time link)")
    embed.set_footer(text=f"correlation {approval.correlation_id}")
    return embed


def _why(approval: ApprovalRequest) -> str:
    reason = approval.decision_reason.value if approval.decision_reason else "-"
    return f"{reason}: {approval.comment}" if approval.comment else reason


def outcome_embed(approval: ApprovalRequest) -> discord.Embed:
    """A decided approval: who decided, when and why, in place of the request."""
    expired = approval.decision_reason is DecisionReason.HITL_TIMEOUT
    accepted = approval.status is not TradeStatus.REJECTED
    heading = "EXPIRED" if expired else approval.status.value
    embed = discord.Embed(
        title=f"{heading}: {_title(approval)}",
        description=approval.reasoning_summary,
        colour=discord.Colour.green() if accepted else discord.Colour.red(),
        timestamp=approval.decided_at,
    )
    _add_trade_fields(embed, approval)
    channel = approval.decision_channel.value if approval.decision_channel else "-"
    embed.add_field(name="Decided by", value=f"{approval.decided_by or '-'} via {channel}")
    if approval.decided_at is not None:
        embed.add_field(name="Decided", value=_stamp(approval.decided_at, "f"))
    embed.add_field(name="Why", value=_why(approval), inline=False)
    embed.set_footer(text=f"correlation {approval.correlation_id}")
    return embed


def expiry_notice_embed(approval: ApprovalRequest) -> discord.Embed:
    """The timeout notice: nobody decided in time, so the trade was rejected."""
    embed = discord.Embed(
        title=f"Approval expired: {_title(approval)}",
        description="No operator decided before the deadline; the trade was rejected.",
        colour=discord.Colour.dark_grey(),
        timestamp=approval.decided_at or approval.expires_at,
    )
    _add_trade_fields(embed, approval)
    embed.add_field(name="Requested", value=_stamp(approval.requested_at, "f"))
    embed.add_field(name="Expired", value=_stamp(approval.expires_at, "f"))
    embed.add_field(name="Reason", value=_why(approval), inline=False)
    embed.set_footer(text=f"correlation {approval.correlation_id}")
    return embed


def security_alert_embed(alert: SecurityAlertInput) -> discord.Embed:
    """A security alert (an integrity failure)."""
    embed = discord.Embed(
        title=f"Security alert {alert.error_code}",
        description=alert.message,
        colour=discord.Colour.red(),
        timestamp=alert.detected_at,
    )
    embed.add_field(name="Trade", value=f"`{alert.trade_id}`", inline=False)
    embed.add_field(name="Detected", value=_stamp(alert.detected_at, "f"))
    embed.set_footer(text=f"correlation {alert.correlation_id}")
    return embed


def cascade_embed(summary: GuardianCascadeSummary) -> discord.Embed:
    """The one summary of a Guardian lock and the approvals it rejected."""
    embed = discord.Embed(
        title="Guardian lock: trading halted",
        description=summary.reason,
        colour=discord.Colour.dark_red(),
        timestamp=summary.locked_at,
    )
    embed.add_field(name="Locked by", value=summary.locked_by)
    embed.add_field(name="Locked", value=_stamp(summary.locked_at, "f"))
    embed.add_field(name="Pending approvals rejected", value=str(summary.rejected))
    embed.set_footer(text=f"correlation {summary.correlation_id}")
    return embed


def decision_view(trade_id: UUID) -> discord.ui.View:
    """The APPROVE and REJECT buttons of ``trade_id``'s approval message."""
    view = discord.ui.View(timeout=None)
    view.add_item(
        discord.ui.Button(
            label="APPROVE",
            style=discord.ButtonStyle.success,
            custom_id=decision_custom_id(Decision.APPROVE, trade_id),
        )
    )
    view.add_item(
        discord.ui.Button(
            label="REJECT",
            style=discord.ButtonStyle.danger,
            custom_id=decision_custom_id(Decision.REJECT, trade_id),
        )
    )
    # The worker never receives clicks (the bot process does): a stopped view is sent without
    # being kept in this client's view store for ever.
    view.stop()
    return view


# --- failing fast ------------------------------------------------------------------------------


class DiscordUnavailable(Exception):
    """Discord answered 429 or 5xx; ``retry_after`` is its own advice, when it gave one."""

    def __init__(self, method: str, path: str, status: int, retry_after: timedelta | None) -> None:
        super().__init__(f"Discord answered {status} to {method} {path}")
        self.status = status
        self.retry_after = retry_after


def _retry_after(headers: Mapping[str, str]) -> timedelta | None:
    # The reset header has sub-second precision; Retry-After is the fallback.
    for name in ("X-RateLimit-Reset-After", "Retry-After"):
        value = headers.get(name)
        if value:
            try:
                return timedelta(seconds=max(float(value), 0.0))
            except ValueError:
                continue
    return None


async def _fail_on_unavailable(
    _session: aiohttp.ClientSession,
    _context: SimpleNamespace,
    params: aiohttp.TraceRequestEndParams,
) -> None:
    status = params.response.status
    if status == 429 or status >= 500:
        # Raised inside aiohttp's request, which closes the response and re-raises, past
        # discord.py's own retry loop (it only catches OSError).
        raise DiscordUnavailable(
            params.method, params.url.path, status, _retry_after(params.response.headers)
        )


def fail_fast_trace() -> aiohttp.TraceConfig:
    """An aiohttp trace making a 429 or 5xx answer fail the request at once."""
    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(_fail_on_unavailable)
    return trace


def _attempt_seconds() -> float:
    # Ending well inside the start-to-close timeout means Temporal never starts the next
    # attempt while this one still runs: two attempts of one notification never overlap.
    if activity.in_activity():
        timeout = activity.info().start_to_close_timeout
        if timeout:
            return timeout.total_seconds() * 0.75
    return DEFAULT_ATTEMPT_SECONDS


# --- the notifier ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostedMessage:
    """A message a notification posted, as recorded."""

    channel_id: int
    message_id: int


def _nonce(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:_NONCE_LENGTH]


def _key(subject: UUID | str, event: str) -> str:
    return f"{subject}:discord:{event}"


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
        sessions: async_sessionmaker[AsyncSession],
        api_base_url: str = "",
    ) -> None:
        self._token = token
        self._channel_id = channel_id
        self._hub_url = hub_url
        self._sessions = sessions
        self._client: discord.Client | None = None
        self._login_lock = asyncio.Lock()
        use_api_base_url(api_base_url)

    @classmethod
    def from_settings(
        cls, settings: Settings, sessions: async_sessionmaker[AsyncSession]
    ) -> DiscordNotifier:
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
        )

    async def aclose(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    # --- the Notifier protocol ------------------------------------------------------------------

    async def approval_requested(self, approval: ApprovalRequest) -> None:
        """Post the approval with its buttons and a fresh one-time deep link."""
        event = "approval_requested"
        key = _key(approval.trade_id, event)
        async with self._attempt(event, approval.correlation_id):
            if await self.posted(key) is not None:
                return
            if approval.expires_at <= datetime.now(UTC):
                # A retry that outlived the deadline: buttons now would only mislead, and the
                # timeout notice tells the operators instead.
                log.warning(
                    "approval expired before it could be posted",
                    correlation_id=approval.correlation_id,
                    actor=SYSTEM_ACTOR,
                    action=f"notify.{event}",
                    result="skipped",
                    trade_id=str(approval.trade_id),
                )
                return
            # The token exists only in this attempt's memory: a retry cannot recover it, so it
            # issues a new one, revoking the old in the same transaction.
            token = await issue_deep_link(
                self._sessions,
                trade_id=approval.trade_id,
                expires_at=approval.expires_at,
                correlation_id=approval.correlation_id,
            )
            link = deep_link_url(self._hub_url, approval.trade_id, token)
            embed = approval_embed(approval, link=link)
            channel = await self._channel()
            message = await channel.send(
                content=(
                    f"Approval needed: {_title(approval)}, "
                    f"expires {_stamp(approval.expires_at, 'R')}"
                ),
                embed=embed,
                view=decision_view(approval.trade_id),
                nonce=_nonce(key),
            )
            if not any(shown.url == link for shown in message.embeds):
                # Discord handed back the message an earlier attempt posted (same nonce); its
                # link was revoked a moment ago, so show the new one.
                message = await message.edit(embed=embed)
            await self._record(
                key,
                event=event,
                subject=str(approval.trade_id),
                correlation_id=approval.correlation_id,
                message=message,
            )

    async def approval_expired(self, approval: ApprovalRequest) -> None:
        """Take the buttons off the approval message and post the timeout notice."""
        event = "approval_expired"
        key = _key(approval.trade_id, event)
        async with self._attempt(event, approval.correlation_id):
            if await self.posted(key) is not None:
                return
            channel = await self._channel()
            notice = expiry_notice_embed(approval)
            original = await self.posted(_key(approval.trade_id, "approval_requested"))
            if original is not None and await self._show_outcome(channel, original, approval):
                # A reply, so that the notice links to the approval it ends.
                reference = discord.MessageReference(
                    message_id=original.message_id,
                    channel_id=original.channel_id,
                    fail_if_not_exists=False,
                )
                message = await channel.send(embed=notice, reference=reference, nonce=_nonce(key))
            else:
                message = await channel.send(embed=notice, nonce=_nonce(key))
            await self._record(
                key,
                event=event,
                subject=str(approval.trade_id),
                correlation_id=approval.correlation_id,
                message=message,
            )

    async def approval_decided(self, approval: ApprovalRequest) -> None:
        """A decision made elsewhere (API, page): show it on the approval message and take the
        buttons off. Editing twice shows the same thing, so retries need no record."""
        async with self._attempt("approval_decided", approval.correlation_id):
            original = await self.posted(_key(approval.trade_id, "approval_requested"))
            if original is not None:
                await self._show_outcome(await self._channel(), original, approval)

    async def security_alert(self, alert: SecurityAlertInput) -> None:
        """Post the alert."""
        event = f"security_alert:{alert.error_code}"
        key = _key(alert.trade_id, event)
        async with self._attempt(event, alert.correlation_id):
            if await self.posted(key) is not None:
                return
            channel = await self._channel()
            message = await channel.send(embed=security_alert_embed(alert), nonce=_nonce(key))
            await self._record(
                key,
                event=event,
                subject=str(alert.trade_id),
                correlation_id=alert.correlation_id,
                message=message,
            )

    async def guardian_cascade(self, summary: GuardianCascadeSummary) -> None:
        """Post the one summary of the cascade."""
        event = "guardian_cascade"
        key = _key(f"guardian:{summary.correlation_id}:{summary.locked_at.isoformat()}", event)
        async with self._attempt(event, summary.correlation_id):
            if await self.posted(key) is not None:
                return
            channel = await self._channel()
            message = await channel.send(embed=cascade_embed(summary), nonce=_nonce(key))
            await self._record(
                key,
                event=event,
                subject="guardian",
                correlation_id=summary.correlation_id,
                message=message,
            )

    # --- plumbing ------------------------------------------------------------------------------

    async def posted(self, key: str) -> PostedMessage | None:
        """The message recorded under ``key``, if one was posted."""
        async with self._sessions() as session:
            payload = (
                await session.execute(
                    select(AuditRow.payload).where(AuditRow.idempotency_key == key)
                )
            ).scalar_one_or_none()
        if payload is None:
            return None
        return PostedMessage(int(payload["channel_id"]), int(payload["message_id"]))

    async def _record(
        self,
        key: str,
        *,
        event: str,
        subject: str,
        correlation_id: str,
        message: discord.Message,
    ) -> None:
        values: dict[str, Any] = {
            "actor_id": SYSTEM_ACTOR,
            "action": SENT_ACTION,
            "target_type": "guardian" if subject == "guardian" else "approval",
            "target_id": subject,
            "previous_state": None,
            "new_state": None,
            "payload": {
                "event": event,
                "channel_id": str(message.channel.id),
                "message_id": str(message.id),
            },
            "correlation_id": correlation_id,
            "error_code": None,
            "created_at": datetime.now(UTC),
            "idempotency_key": key,
        }
        async with self._sessions.begin() as session:
            dialect = postgresql if session.bind.dialect.name == "postgresql" else sqlite
            await session.execute(
                dialect.insert(AuditRow)
                .values(**values)
                .on_conflict_do_nothing(index_elements=[AuditRow.idempotency_key])
            )
        log.info(
            "discord notification posted",
            correlation_id=correlation_id,
            actor=SYSTEM_ACTOR,
            action=f"notify.{event}",
            result="sent",
            target=subject,
            message_id=str(message.id),
        )

    @staticmethod
    async def _show_outcome(
        channel: discord.PartialMessageable, original: PostedMessage, approval: ApprovalRequest
    ) -> bool:
        """Replace the approval message by its outcome, buttons removed; False if it is gone."""
        try:
            await channel.get_partial_message(original.message_id).edit(
                content=None, embed=outcome_embed(approval), view=None
            )
        except discord.NotFound:
            return False  # Deleted by someone; the notice goes out on its own.
        return True

    async def _channel(self) -> discord.PartialMessageable:
        async with self._login_lock:
            if self._client is None:
                client = discord.Client(
                    # A REST-only client uses no intents; Guilds only keeps discord.py from
                    # warning about state it will never need.
                    intents=discord.Intents(guilds=True),
                    max_messages=None,
                    http_trace=fail_fast_trace(),
                )
                try:
                    await client.login(self._token)
                except BaseException:
                    await client.close()
                    raise
                self._client = client
        return self._client.get_partial_messageable(self._channel_id, type=discord.ChannelType.text)

    @asynccontextmanager
    async def _attempt(self, event: str, correlation_id: str) -> AsyncIterator[None]:
        """One attempt: bounded in time, Discord's failures turned into Temporal's terms."""
        try:
            async with asyncio.timeout(_attempt_seconds()):
                yield
        except DiscordUnavailable as exc:
            log.warning(
                "discord unavailable; the activity will retry",
                correlation_id=correlation_id,
                actor=SYSTEM_ACTOR,
                action=f"notify.{event}",
                result=str(exc.status),
            )
            raise ApplicationError(
                str(exc), type="DiscordUnavailable", next_retry_delay=exc.retry_after
            ) from exc
        except discord.HTTPException as exc:
            log.error(
                "discord refused the notification",
                correlation_id=correlation_id,
                actor=SYSTEM_ACTOR,
                action=f"notify.{event}",
                result=str(exc.status),
                detail=exc.text,
            )
            if exc.status == 400:
                # Our own payload is wrong: sending it again cannot help.
                raise ApplicationError(
                    f"Discord refused the message: {exc.text}",
                    type="DiscordBadRequest",
                    non_retryable=True,
                ) from exc
            raise


@asynccontextmanager
async def notifier_from_settings(
    settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Notifier]:
    """Discord when ``DISCORD_BOT_TOKEN`` is set, else the console; closed on exit."""
    if not settings.discord.enabled:
        yield ConsoleNotifier()
        return
    notifier = DiscordNotifier.from_settings(settings, sessions)
    try:
        yield notifier
    finally:
        await notifier.aclose()
