"""The live market preview in pending approvals' Discord messages (issue 18 item 6).

The worker posts each approval with the market as it stood then ("at posting: now 1.1619,
+0.06 %"). The Discord bot process runs a :class:`PreviewRefresher`: every
``HITL_DISCORD_PREVIEW_SECONDS`` it quotes each pending approval that has a message, and where
the text it would show differs from the message's, it changes that one embed field and nothing
else (the deep link, the Temporal link, the four-eyes text above the embed and the buttons stay
as they are).

What it must never do is bring a decided approval back to life. A decision's notice replaces the
message with its outcome and removes the buttons; so:

- an edit never carries buttons or text (only the embed), so no edit of ours can put buttons
  back on a message whose buttons were removed;
- a message that shows no buttons any more is decided and never edited; the approval's status is
  read again right before the edit, and an approval no longer awaiting a decision is left alone;
- the race: a decision recorded between that read and our edit lands its own edit first or after
  ours. Its notice is edited after the decision is recorded, so if ours came last the status read
  again *after* our edit sees the decision, and the outcome is drawn again here
  (``outcome_embed``, buttons removed: what the notice draws). Either way the message ends showing
  the outcome without buttons.

Discord's rate limits: at most ``edits_per_cycle`` messages are touched per cycle, soonest
deadline first, one every ``spacing`` seconds across cycles (by default 10 per 5 s; each touch is
one read and at most one edit of one message), and nothing is sent for a message whose text has
not changed since it was last shown. Failures (Discord, the market, the database) are logged; the
next cycle tries again, and nothing here stops the bot.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final
from uuid import UUID

import discord
import structlog

from activities.discord_render import MARKET_FIELD, outcome_embed, preview_field
from activities.discord_rest import PostedMessage, approval_message_key, posted_message
from activities.market_preview import PreviewQuotes
from hitl.models import ApprovalRequest, TradeStatus
from store.approvals import pending_approvals, verified_approval
from store.engine import Sessions

log = structlog.get_logger(__name__)

_BEFORE_FIELD: Final = "Expires"
"""Where the field goes when the message was posted without one (no quote at posting)."""

EDITS_PER_CYCLE: Final = 10
SPACING_SECONDS: Final = 0.5
"""One message touched every half second at most: 10 per 5 s, well inside Discord's limits."""
TOUCH_SECONDS: Final = 10.0
"""The longest one message's read and edit may take (discord.py waits out a 429 by itself)."""

_ACTOR: Final = "discord_bot"
_ACTION: Final = "discord.preview_refresh"


def _with_market(embed: discord.Embed, text: str) -> discord.Embed:
    """A copy of ``embed`` whose Market field says ``text`` (added before Expires if absent)."""
    updated = discord.Embed.from_dict(embed.to_dict())
    names = [field.name for field in updated.fields]
    if MARKET_FIELD in names:
        index = names.index(MARKET_FIELD)
        updated.set_field_at(index, name=MARKET_FIELD, value=text, inline=True)
    elif _BEFORE_FIELD in names:
        updated.insert_field_at(names.index(_BEFORE_FIELD), name=MARKET_FIELD, value=text)
    else:
        updated.add_field(name=MARKET_FIELD, value=text)
    return updated


def _shown_market(message: discord.Message) -> str | None:
    for field in message.embeds[0].fields:
        if field.name == MARKET_FIELD:
            return field.value
    return None


class PreviewRefresher:
    """Refreshes the Market field of pending approvals' messages through ``client`` (logged in)."""

    def __init__(
        self,
        client: discord.Client,
        sessions: Sessions,
        previews: PreviewQuotes,
        *,
        edits_per_cycle: int = EDITS_PER_CYCLE,
        spacing_seconds: float = SPACING_SECONDS,
    ) -> None:
        self._client = client
        self._sessions = sessions
        self._previews = previews
        self._edits_per_cycle = edits_per_cycle
        self._spacing = spacing_seconds
        self._next_slot = 0.0
        self._shown: dict[UUID, str | None] = {}
        """Trade id → the Market text its message shows, as last read or written (None: the
        message is gone or decided)."""

    async def run(self, every_seconds: float) -> None:
        """Refresh every ``every_seconds`` until cancelled; a failed cycle is logged only."""
        while True:
            try:
                await self.refresh_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Discord, the market or the database away: next cycle
                log.warning(
                    "preview refresh failed; the next cycle tries again",
                    correlation_id="-",
                    actor=_ACTOR,
                    action=_ACTION,
                    result="error",
                    error=f"{type(exc).__name__}: {exc}",
                )
            await asyncio.sleep(every_seconds)

    async def refresh_once(self) -> int:
        """One cycle: the number of messages edited."""
        if self._client.user is None or self._client.is_closed():
            return 0  # not logged in (yet): nothing can be read or edited
        async with self._sessions() as session:
            pending = [record for record in await pending_approvals(session) if record.integrity_ok]
        # Forget the messages of approvals no longer pending (those past this cycle's limit
        # are still pending: what they show is kept).
        for trade_id in set(self._shown) - {record.trade_id for record in pending}:
            del self._shown[trade_id]
        touched = edited = 0
        for record in pending:  # soonest deadline first
            if touched >= self._edits_per_cycle:
                break
            if self._shown.get(record.trade_id, "") is None:
                continue  # its message was deleted, or shows a decision
            posted = await posted_message(self._sessions, approval_message_key(record.trade_id))
            if posted is None:
                continue  # not posted (yet)
            approval = await self._pending(record.trade_id)
            if approval is None:
                continue  # decided meanwhile
            preview = await self._previews.preview(approval)
            if preview is None:
                continue  # no quote in time (logged): the next cycle tries again
            text = preview_field(preview, at_posting=False)
            if self._shown.get(record.trade_id) == text:
                continue  # unchanged: nothing to send
            touched += 1
            await self._pace()
            async with asyncio.timeout(TOUCH_SECONDS):
                edited += await self._touch(posted, approval, text)
        return edited

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next_slot > now:
            await asyncio.sleep(self._next_slot - now)
        self._next_slot = max(now, self._next_slot) + self._spacing

    async def _pending(self, trade_id: UUID) -> ApprovalRequest | None:
        """The approval, if it is still awaiting a decision and its record verifies."""
        approval = await verified_approval(self._sessions, trade_id)
        if approval is None or approval.status is not TradeStatus.AWAITING_APPROVAL:
            return None
        return approval

    async def _touch(self, posted: PostedMessage, approval: ApprovalRequest, text: str) -> int:
        """Show ``text`` in the message's Market field: 1 if edited, else 0."""
        channel = self._client.get_partial_messageable(
            posted.channel_id, type=discord.ChannelType.text
        )
        try:
            message = await channel.fetch_message(posted.message_id)
        except discord.NotFound:
            self._shown[approval.trade_id] = None  # deleted by someone: leave it be
            return 0
        if not message.embeds or not message.components:
            # Its buttons are gone: decided, whatever the database said a moment ago.
            self._shown[approval.trade_id] = None
            return 0
        if _shown_market(message) == text:
            self._shown[approval.trade_id] = text
            return 0
        updated = _with_market(message.embeds[0], text)
        if await self._pending(approval.trade_id) is None:
            return 0  # decided since this cycle read it: the notice owns the message now
        try:
            # The embed only: the text above it (four eyes), the buttons and the flags are not
            # sent (a partial message's edit, unlike a fetched one's, sends no flags).
            await channel.get_partial_message(posted.message_id).edit(embed=updated)
        except discord.NotFound:
            self._shown[approval.trade_id] = None
            return 0
        self._shown[approval.trade_id] = text
        log.info(
            "approval message's market preview refreshed",
            correlation_id=approval.correlation_id,
            actor=_ACTOR,
            action=_ACTION,
            result="edited",
            trade_id=str(approval.trade_id),
            market=text,
        )
        await self._settle(channel, posted, approval.trade_id)
        return 1

    async def _settle(
        self, channel: discord.PartialMessageable, posted: PostedMessage, trade_id: UUID
    ) -> None:
        """After an edit: if the approval was decided meanwhile, draw its outcome again (its
        notice may have landed before our edit, which then hid it)."""
        approval = await verified_approval(self._sessions, trade_id)
        if approval is None or not approval.is_decided:
            return  # still pending: a decision from now on edits after us
        self._shown[trade_id] = None
        with contextlib.suppress(discord.NotFound):
            await channel.get_partial_message(posted.message_id).edit(
                content=None, embed=outcome_embed(approval), view=None
            )
        log.info(
            "approval decided during a preview refresh; its outcome drawn again",
            correlation_id=approval.correlation_id,
            actor=_ACTOR,
            action=_ACTION,
            result="outcome",
            trade_id=str(trade_id),
        )
