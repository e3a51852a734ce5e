"""Text a bot or an operator wrote never acts in Discord: markdown links, code fences and
mentions show as typed, and every message is sent allowing no mention (issue 17 item 4)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.discord_render import approval_embed, as_text, outcome_embed
from activities.discord_rest import DiscordChannel, PostedMessage
from hitl.models import (
    ApprovalRequest,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeStatus,
)
from tests.discord.fake_discord import FakeDiscord

HOSTILE = (
    "Breakout. [click here](http://evil.example/steal) ```py\nimport os\n``` "
    "**urgent** @everyone <@123456789012345678> ||hidden||"
)


def _approval(**changes: object) -> ApprovalRequest:
    now = datetime.now(UTC)
    approval = ApprovalRequest(
        trade_id=uuid.uuid4(),
        instrument="EUR/USD",
        side=Side.BUY,
        risk_pct=Decimal("1"),
        confidence=Decimal("0.5"),
        request_price=Decimal("1.1"),
        reasoning_summary=HOSTILE,
        correlation_id="corr-x",
        status=TradeStatus.AWAITING_APPROVAL,
        requested_at=now,
        expires_at=now + timedelta(minutes=5),
    )
    return approval.model_copy(update=changes)


def test_markup_in_someone_elses_text_is_escaped() -> None:
    shown = as_text(HOSTILE)
    assert "\\[click here](http://evil.example/steal)" in shown  # no longer a masked link
    assert "\\`\\`\\`py" in shown and "```" not in shown
    assert "\\*\\*urgent\\*\\*" in shown and "\\|\\|hidden\\|\\|" in shown
    assert "@everyone" not in shown and "@\u200beveryone" in shown
    assert "<@123456789012345678>" not in shown
    assert as_text("Plain reasoning, 1.5% risk.") == "Plain reasoning, 1.5% risk."


def test_the_reasoning_and_the_comment_show_as_text_in_every_embed() -> None:
    request = approval_embed(_approval(), link="http://hub/approvals/x?token=t")
    assert request.description == as_text(HOSTILE)
    decided = _approval(
        status=TradeStatus.REJECTED,
        decided_at=datetime.now(UTC),
        decided_by="alice",
        decision_channel=DecisionChannel.WEB,
        decision_reason=DecisionReason.OPERATOR_REJECTED,
        comment="see [this](http://evil.example)",
    )
    outcome = outcome_embed(decided)
    assert outcome.description == as_text(HOSTILE)
    why = next(field.value for field in outcome.fields if field.name == "Why")
    assert why == "OPERATOR_REJECTED: see \\[this](http://evil.example)"


async def test_every_post_and_edit_allows_no_mention(
    fake: FakeDiscord, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    channel = DiscordChannel(
        token=fake.bot_token,
        channel_id=fake.channel_id,
        sessions=sqlite_sessions,
        api_base_url=fake.api_url,
    )
    try:
        sent = await channel.send("key-1", content="@everyone look")
        posted = PostedMessage(fake.channel_id, int(sent.id))
        await channel.replace(posted, embed=approval_embed(_approval(), link="http://hub/x"))
    finally:
        await channel.aclose()
    [post] = fake.requests("POST", r"/channels/\d+/messages")
    [edit] = fake.requests("PATCH", r"/channels/\d+/messages/\d+")
    for call in (post, edit):
        assert call.body is not None
        assert call.body["allowed_mentions"] == {"parse": []}, call
