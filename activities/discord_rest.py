"""Posting to one Discord channel through discord.py's REST layer: each message sent once, and
every failure left for Temporal to retry.

Sent once, however often Temporal retries: each message has a key (subject and event); a message
already recorded under its key is not sent again, and the send carries a nonce derived from the
key with ``enforce_nonce``, so Discord itself hands back the first message when an earlier attempt
posted it but failed before recording it. The record is an audit entry (``notify.discord``, with
the message id), written once per key.

discord.py retries 5xx answers and sleeps through 429s inside one request; here both fail the
attempt at once instead, so that Temporal owns the retries (with Discord's ``retry_after`` as the
next delay) and every retry is visible in the workflow's history.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, Final
from uuid import UUID

import aiohttp
import discord
import discord.http
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.discord_render import NO_MENTIONS
from hitl.messages import SYSTEM_ACTOR
from store.audit import APPROVAL_TARGET, GUARDIAN_TARGET, AuditEntry, audit_payload, record_audit
from store.engine import Sessions

log = structlog.get_logger(__name__)

SENT_ACTION: Final = "notify.discord"
"""The audit action recording a posted Discord message."""

DEFAULT_ATTEMPT_SECONDS: Final = 20.0
"""An attempt's time budget outside an activity (in one, three quarters of its timeout)."""

_NONCE_LENGTH: Final = 25  # Discord refuses longer nonces.


def use_api_base_url(url: str) -> None:
    """Point discord.py at ``url`` (e.g. ``http://127.0.0.1:8999/api/v10``); empty keeps Discord.

    discord.py builds every REST and webhook URL from the class attribute ``Route.BASE``, so this
    holds for the whole process.
    """
    if url:
        discord.http.Route.BASE = url.rstrip("/")


def message_key(subject: UUID | str, event: str) -> str:
    """The key a message about ``subject`` for ``event`` is sent once under."""
    return f"{subject}:discord:{event}"


APPROVAL_MESSAGE_EVENT: Final = "approval_requested"
"""The event an approval's own message (its embed and buttons) is posted under."""


def approval_message_key(trade_id: UUID) -> str:
    """The key of an approval's own message: what every later edit of it looks up."""
    return message_key(trade_id, APPROVAL_MESSAGE_EVENT)


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


# --- the channel -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PostedMessage:
    """A message a notification posted, as recorded."""

    channel_id: int
    message_id: int


async def posted_message(sessions: Sessions, key: str) -> PostedMessage | None:
    """The message recorded under ``key`` (its posting's audit entry), if one was posted."""
    payload = await audit_payload(sessions, key)
    if payload is None:
        return None
    return PostedMessage(int(payload["channel_id"]), int(payload["message_id"]))


def _nonce(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:_NONCE_LENGTH]


class DiscordChannel:
    """One Discord channel, posted to as the bot over REST (never the gateway).

    Logs in on first use; ``aclose()`` releases the HTTP session.
    """

    def __init__(
        self, *, token: str, channel_id: int, sessions: Sessions, api_base_url: str = ""
    ) -> None:
        self._token = token
        self._channel_id = channel_id
        self._sessions = sessions
        self._client: discord.Client | None = None
        self._login_lock = asyncio.Lock()
        use_api_base_url(api_base_url)

    async def aclose(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def post_once(
        self,
        key: str,
        *,
        event: str,
        subject: str,
        correlation_id: str,
        post: Callable[[], Awaitable[discord.Message | None]],
    ) -> None:
        """One attempt at the message keyed ``key``: nothing if it was already posted; else
        ``post()`` (which sends with :meth:`send`, or returns None to send nothing) and record
        what it posted."""
        async with self.attempt(event, correlation_id):
            if await self.posted(key) is not None:
                return
            message = await post()
            if message is not None:
                await self._record(
                    key,
                    event=event,
                    subject=subject,
                    correlation_id=correlation_id,
                    message=message,
                )

    async def send(self, key: str, **fields: Any) -> discord.Message:
        """Send a message (``content``, ``embed``, ``view``, ``reference``…) with ``key``'s nonce:
        a second send under one key hands back the first message."""
        channel = await self._channel()
        message: discord.Message = await channel.send(**fields, nonce=_nonce(key))
        return message

    async def reply(self, key: str, original: PostedMessage, **fields: Any) -> discord.Message:
        """:meth:`send` as a reply to ``original``, so that the new message links to it."""
        reference = discord.MessageReference(
            message_id=original.message_id,
            channel_id=original.channel_id,
            fail_if_not_exists=False,
        )
        return await self.send(key, reference=reference, **fields)

    async def replace(self, original: PostedMessage, *, embed: discord.Embed) -> bool:
        """Show ``embed`` alone in place of ``original`` (text and buttons removed); False if
        the message is gone."""
        channel = await self._channel()
        try:
            await channel.get_partial_message(original.message_id).edit(
                content=None, embed=embed, view=None
            )
        except discord.NotFound:
            return False  # Deleted by someone.
        return True

    async def retext(self, original: PostedMessage, *, content: str) -> bool:
        """Change only ``original``'s text (embed and buttons stay); False if it is gone."""
        channel = await self._channel()
        try:
            await channel.get_partial_message(original.message_id).edit(content=content)
        except discord.NotFound:
            return False  # Deleted by someone.
        return True

    async def posted(self, key: str) -> PostedMessage | None:
        """The message recorded under ``key``, if one was posted."""
        return await posted_message(self._sessions, key)

    async def _record(
        self,
        key: str,
        *,
        event: str,
        subject: str,
        correlation_id: str,
        message: discord.Message,
    ) -> None:
        entry = AuditEntry(
            actor_id=SYSTEM_ACTOR,
            action=SENT_ACTION,
            target_type=GUARDIAN_TARGET if subject == GUARDIAN_TARGET else APPROVAL_TARGET,
            target_id=subject,
            payload={
                "event": event,
                "channel_id": str(message.channel.id),
                "message_id": str(message.id),
            },
            correlation_id=correlation_id,
            idempotency_key=key,
        )
        await record_audit(self._sessions, entry, once=True)
        log.info(
            "discord notification posted",
            correlation_id=correlation_id,
            actor=SYSTEM_ACTOR,
            action=f"notify.{event}",
            result="sent",
            target=subject,
            message_id=str(message.id),
        )

    async def _channel(self) -> discord.PartialMessageable:
        async with self._login_lock:
            if self._client is None:
                client = discord.Client(
                    # A REST-only client uses no intents; Guilds only keeps discord.py from
                    # warning about state it will never need.
                    intents=discord.Intents(guilds=True),
                    # Every message and edit this client sends carries allowed_mentions: none.
                    allowed_mentions=NO_MENTIONS,
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
    async def attempt(self, event: str, correlation_id: str) -> AsyncIterator[None]:
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
