"""Discord end to end: the real discord.py code against a local fake of Discord's REST API, the
Temporal dev server with the real activities, and a real database.

Button clicks are the INTERACTION_CREATE payloads Discord's gateway would deliver, fed to a real
discord.py client's parser; they drive real decisions through the workflow Update.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import discord.http
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.deep_links import consume_deep_link, hash_token, issue_deep_link
from activities.discord_notifier import DiscordNotifier, notifier_from_settings
from activities.market_providers import SimulatedMarketData
from activities.notice_dispatch import NoticeDispatcher
from activities.notifications import ConsoleNotifier, NotificationActivities, Notifier
from activities.policy import WorkerTrust
from api.main import create_app
from api.routes import deep_links
from discord_bot import ApprovalBot, DecisionDesk, parse_operators, run
from hitl.errors import ConfigurationError, ErrorCode
from hitl.keys import KeyPurpose, KeyringFile
from hitl.messages import (
    ApprovalPolicy,
    DecisionCommand,
    GuardianCascadeSummary,
    SecurityAlertInput,
)
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from hitl.notices import NoticeKind
from hitl.settings import DiscordSettings, Settings, get_settings, load_settings
from store.engine import session_factory
from store.tables import ApprovalRow, AuditRow, DeepLinkTokenRow, NoticeRow
from tests.api.conftest import api_settings
from tests.discord.fake_discord import (
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    EPHEMERAL,
    FakeDiscord,
)
from tests.temporal_fixtures import TEST_POLL_SECONDS, make_policy, make_proposal, wait_until
from worker import activities_for, build_worker
from workflows.client import ApprovalClient

HUB_URL = "https://hub.example.test"

# Discord user ids: alice and bob are operators; carol is mapped but not an allowed operator;
# mallory is mapped to nobody.
ALICE = 400_000_000_000_000_001
BOB = 400_000_000_000_000_002
CAROL = 400_000_000_000_000_003
MALLORY = 400_000_000_000_000_666
OPERATORS = f"{ALICE}:alice, {BOB}:bob, {CAROL}:carol"

MESSAGES = r"/channels/\d+/messages"
DEEP_LINK_PATH = "/api/hitl/deep-links/{token}"


def custom_ids(message: dict[str, Any]) -> list[str]:
    """The custom ids of a message's buttons, in order."""
    return [c["custom_id"] for row in message["components"] for c in row["components"]]


def fields(message: dict[str, Any]) -> dict[str, str]:
    """The first embed's fields, by name."""
    return {f["name"]: f["value"] for f in message["embeds"][0]["fields"]}


def token_of(message: dict[str, Any]) -> str:
    """The one-time token in an approval message's deep link."""
    return str(parse_qs(urlsplit(message["embeds"][0]["url"]).query)["token"][0])


@dataclass
class Rig:
    """A gateway whose notifier is Discord, plus the bot, all against the fake."""

    fake: FakeDiscord
    env: WorkflowEnvironment
    approvals: ApprovalClient
    sessions: async_sessionmaker[AsyncSession]
    market: SimulatedMarketData
    notifier: DiscordNotifier
    bot: ApprovalBot
    policy: ApprovalPolicy
    task_queue: str

    async def request(self, instrument: str = "EUR/USD") -> tuple[ApprovalRequest, dict[str, Any]]:
        """Start an approval; return it with its Discord message once posted."""
        proposal = make_proposal(self.market, instrument)
        handle = await self.approvals.request_approval(proposal, requested_by="bot-1")
        approval = await handle.recorded()
        await wait_until(lambda: self.audit(approval, "notify.discord"))
        message = self.message_of(approval)
        assert message is not None
        return approval, message

    def message_of(self, approval: ApprovalRequest) -> dict[str, Any] | None:
        """The approval's message: the first in the channel naming its trade."""
        trade = f"`{approval.trade_id}`"
        for message in self.fake.channel_messages():
            if message["embeds"] and fields(message).get("Trade") == trade:
                return message
        return None

    def click(self, message: dict[str, Any], custom_id: str, user_id: int) -> dict[str, Any]:
        """Deliver a click on ``message`` to the bot, as Discord's gateway would."""
        payload = self.fake.click(int(message["id"]), custom_id, user_id=user_id)
        self.bot._connection.parse_interaction_create(payload)  # type: ignore[arg-type]
        return payload

    async def stored(self, approval: ApprovalRequest) -> ApprovalRow:
        """The approval's database row."""
        async with self.sessions() as session:
            return (
                await session.execute(
                    select(ApprovalRow).where(ApprovalRow.trade_id == approval.trade_id)
                )
            ).scalar_one()

    async def audit(self, approval: ApprovalRequest, action: str) -> list[AuditRow]:
        """The approval's audit entries with ``action``."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(AuditRow)
                .where(AuditRow.target_id == str(approval.trade_id), AuditRow.action == action)
                .order_by(AuditRow.id)
            )
            return list(rows.scalars())

    async def answer(self, payload: dict[str, Any]) -> dict[str, Any]:
        """What the clicker was told privately (the interaction's own response), once told."""
        await wait_until(lambda: (self.fake.original_response(payload) or {}).get("content"))
        answer = self.fake.original_response(payload)
        assert answer is not None
        return answer


@asynccontextmanager
async def running_rig(
    env: WorkflowEnvironment,
    sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
    **policy: Any,
) -> AsyncIterator[Rig]:
    """A worker with the Discord notifier and a logged-in bot, on a fresh task queue."""
    task_queue = f"hitl-discord-{uuid.uuid4().hex[:8]}"
    market = SimulatedMarketData(jitter_percent=Decimal(0))
    notifier = DiscordNotifier(
        token=fake.bot_token,
        channel_id=fake.channel_id,
        hub_url=HUB_URL,
        sessions=sessions,
        api_base_url=fake.api_url,
    )
    approvals = ApprovalClient(env.client, task_queue=task_queue)
    bot = ApprovalBot(
        DecisionDesk(
            approvals=approvals,
            sessions=sessions,
            operators=parse_operators(OPERATORS),
            decision_timeout=timedelta(seconds=10),
        )
    )
    # The policy is the worker's (issue 14): the rig's, for this worker.
    trust = WorkerTrust(
        keyring=KeyringFile(get_settings().keys_dir, KeyPurpose.COMMANDS).current,
        policy=lambda: make_policy(**policy),
    )
    worker = build_worker(
        env.client,
        task_queue=task_queue,
        activities=activities_for(
            sessions=sessions, provider=market, notifier=notifier, client=env.client, trust=trust
        ),
        trust=trust,
        notices=NoticeDispatcher(sessions, notifier, poll_seconds=TEST_POLL_SECONDS),
    )
    # The bot only logs in (REST): its clicks are injected instead of arriving by gateway.
    await bot.login(fake.bot_token)
    try:
        async with worker:
            yield Rig(
                fake=fake,
                env=env,
                approvals=approvals,
                sessions=sessions,
                market=market,
                notifier=notifier,
                bot=bot,
                policy=make_policy(**policy),
                task_queue=task_queue,
            )
    finally:
        await bot.close()
        await notifier.aclose()


# --- the approval message --------------------------------------------------------------------


async def test_approval_message_has_the_trade_a_countdown_buttons_and_a_one_time_link(
    rig: Rig,
) -> None:
    approval, message = await rig.request()
    trade_id = approval.trade_id

    post = rig.fake.requests("POST", MESSAGES)[0]
    assert post.body is not None
    assert post.body["enforce_nonce"] is True and len(post.body["nonce"]) == 25
    embed = message["embeds"][0]
    assert embed["title"] == "Approval needed: BUY EUR/USD"
    assert embed["description"] == "Breakout above resistance with rising volume."
    expires = f"<t:{int(approval.expires_at.timestamp())}:R>"
    link = embed["url"]
    assert fields(message) == {
        "Instrument": "EUR/USD",
        "Side": "BUY",
        "Risk": "1.5%",
        "Confidence": "82%",
        "Request price": format(approval.request_price.normalize(), "f"),
        "Trade": f"`{trade_id}`",
        "Expires": expires,
        "Review": f"[Open in the HITL Hub]({link}) (one-time link)",
    }
    assert expires in message["content"]
    assert custom_ids(message) == [f"hitl:approve:{trade_id}", f"hitl:reject:{trade_id}"]
    styles = [c["style"] for row in message["components"] for c in row["components"]]
    assert styles == [discord.ButtonStyle.success.value, discord.ButtonStyle.danger.value]

    assert link.startswith(f"{HUB_URL}/approvals/{trade_id}?token=")
    token = token_of(message)
    async with rig.sessions() as session:
        rows = (
            await session.execute(
                select(DeepLinkTokenRow).where(DeepLinkTokenRow.trade_id == trade_id)
            )
        ).scalars()
        stored = list(rows)
    # Only the hash is kept, and the link dies with the approval.
    assert [(r.token, r.expires_at, r.used_at) for r in stored] == [
        (hash_token(token), approval.expires_at, None)
    ]
    assert hashlib.sha256(token.encode()).hexdigest() == stored[0].token
    sent = await rig.audit(approval, "notify.discord")
    assert [a.payload["message_id"] for a in sent] == [message["id"]]


# --- decisions by button ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("button", "status", "reason", "said"),
    [
        ("approve", TradeStatus.ACCEPTED, DecisionReason.OPERATOR_APPROVED, "Approved"),
        ("reject", TradeStatus.REJECTED, DecisionReason.OPERATOR_REJECTED, "Rejected"),
    ],
)
async def test_button_click_decides_end_to_end(
    rig: Rig, button: str, status: TradeStatus, reason: DecisionReason, said: str
) -> None:
    approval, message = await rig.request()
    edit_path = f"/channels/{message['channel_id']}/messages/{message['id']}"

    payload = rig.click(message, f"hitl:{button}:{approval.trade_id}", ALICE)
    await wait_until(lambda: rig.fake.requests("PATCH", edit_path))

    row = await rig.stored(approval)
    assert (row.status, row.decision_channel, row.decided_by, row.decision_reason) == (
        status.value,
        DecisionChannel.DISCORD.value,
        "alice",
        reason.value,
    )
    # The clicker was answered privately: an ephemeral deferral, then the outcome.
    callback = rig.fake.requests("POST", rf"/interactions/{payload['id']}/[^/]+/callback")
    assert [c.body for c in callback] == [
        {"type": DEFERRED_CHANNEL_MESSAGE, "data": {"flags": EPHEMERAL}}
    ]
    answer = await rig.answer(payload)
    assert answer["flags"] & EPHEMERAL
    assert answer["content"].startswith(said)
    # The message shows the decision, buttons gone.
    edited = rig.fake.messages[int(message["id"])]
    assert edited["components"] == []
    assert edited["content"] == ""
    assert edited["embeds"][0]["title"] == f"{status.value}: BUY EUR/USD"
    shown = fields(edited)
    assert shown["Decided by"] == "alice via DISCORD"
    assert shown["Decided"] == f"<t:{int(row.decided_at.timestamp())}:f>"  # type: ignore[union-attr]
    assert shown["Why"] == reason.value
    assert len(rig.fake.channel_messages()) == 1


async def test_a_decision_made_on_the_page_takes_the_buttons_off(rig: Rig) -> None:
    approval, message = await rig.request()
    edit_path = f"/channels/{message['channel_id']}/messages/{message['id']}"
    decided = await rig.approvals.approval(approval.trade_id).approve(
        DecisionCommand(
            operator_id="alice",
            channel=DecisionChannel.WEB,
            comment="from the page",
            correlation_id="corr-page",
        )
    )
    await wait_until(lambda: rig.fake.requests("PATCH", edit_path))
    edited = rig.fake.messages[int(message["id"])]
    assert edited["components"] == []
    assert edited["embeds"][0]["title"] == f"{decided.status.value}: BUY EUR/USD"
    assert fields(edited)["Decided by"] == "alice via WEB"
    assert len(rig.fake.channel_messages()) == 1


@pytest.mark.parametrize(
    ("user_id", "actor", "first_answer"),
    [(MALLORY, f"discord:{MALLORY}", CHANNEL_MESSAGE), (CAROL, "carol", DEFERRED_CHANNEL_MESSAGE)],
    ids=["unmapped", "not-an-allowed-operator"],
)
async def test_unauthorised_clicker_is_refused_audited_and_decides_nothing(
    rig: Rig, user_id: int, actor: str, first_answer: int
) -> None:
    approval, message = await rig.request()

    payload = rig.click(message, f"hitl:approve:{approval.trade_id}", user_id)
    await wait_until(lambda: rig.audit(approval, "discord.refused"))

    [refused] = await rig.audit(approval, "discord.refused")
    assert (refused.actor_id, refused.error_code) == (actor, ErrorCode.UNAUTHORISED_OPERATOR.code)
    assert refused.correlation_id == f"discord-{payload['id']}"
    assert refused.payload["discord_user_id"] == str(user_id)
    answer = await rig.answer(payload)
    assert answer["flags"] & EPHEMERAL
    assert ErrorCode.UNAUTHORISED_OPERATOR.code in answer["content"]
    callback = rig.fake.requests("POST", rf"/interactions/{payload['id']}/[^/]+/callback")
    assert [c.body["type"] for c in callback if c.body] == [first_answer]
    # Nothing decided, nothing shown.
    assert (await rig.stored(approval)).status == TradeStatus.AWAITING_APPROVAL.value
    current = await rig.approvals.approval(approval.trade_id).current()
    assert current is not None and not current.is_decided
    assert rig.fake.requests("PATCH", MESSAGES + r"/\d+") == []
    assert rig.fake.messages[int(message["id"])]["components"] == message["components"]


async def test_clicker_is_told_of_slippage_and_of_a_standing_decision(rig: Rig) -> None:
    moved, moved_message = await rig.request("BTC-PERP")
    decided, decided_message = await rig.request("EUR/USD")

    # The market moves 1 % (limit 0.5 %) before alice approves.
    rig.market.set_price("BTC-PERP", rig.market.mid_price("BTC-PERP") * Decimal("1.01"))
    slipped = rig.click(moved_message, f"hitl:approve:{moved.trade_id}", ALICE)
    # Bob rejects the other one through the API while its Discord message still has buttons.
    await rig.approvals.approval(decided.trade_id).reject(
        DecisionCommand(operator_id="bob", channel=DecisionChannel.API, correlation_id="corr-api")
    )
    stale = rig.click(decided_message, f"hitl:approve:{decided.trade_id}", ALICE)

    slipped_answer = await rig.answer(slipped)
    stale_answer = await rig.answer(stale)
    # Both messages are edited: by the bot after each click, and (bob's decision was made
    # outside Discord) by the worker's decision notice too.
    for path in (f"{MESSAGES}/{m['id']}" for m in (moved_message, decided_message)):
        await wait_until(partial(rig.fake.requests, "PATCH", path))

    assert ErrorCode.SLIPPAGE_EXCEEDED.code in slipped_answer["content"]
    assert "REJECTED" in slipped_answer["content"]
    row = await rig.stored(moved)
    assert (row.status, row.decision_reason) == ("REJECTED", "SLIPPAGE_EXCEEDED")
    shown = rig.fake.messages[int(moved_message["id"])]
    assert shown["components"] == [] and fields(shown)["Why"] == "SLIPPAGE_EXCEEDED"

    assert stale_answer["content"] == (
        f"Already decided by bob: REJECTED (OPERATOR_REJECTED) ({ErrorCode.ALREADY_DECIDED.code})."
    )
    shown = rig.fake.messages[int(decided_message["id"])]
    assert shown["components"] == [] and fields(shown)["Decided by"] == "bob via API"
    assert (await rig.stored(decided)).decided_by == "bob"


# --- Discord failing --------------------------------------------------------------------------


async def _notice(rig: Rig, approval: ApprovalRequest, kind: NoticeKind) -> NoticeRow | None:
    """The approval's queued notice of ``kind``, once the dispatcher is done with it."""
    async with rig.sessions() as session:
        row = await session.scalar(
            select(NoticeRow).where(
                NoticeRow.trade_id == approval.trade_id, NoticeRow.kind == kind.value
            )
        )
    return row if row is not None and row.done_at is not None else None


@pytest.mark.parametrize("status", [500, 429])
async def test_discord_failure_is_retried_by_the_dispatcher_and_notifies_once(
    rig: Rig, status: int
) -> None:
    rig.fake.fail(status)
    approval, message = await rig.request()

    assert [c.status for c in rig.fake.requests("POST", MESSAGES)] == [status, 200]
    assert len(rig.fake.channel_messages()) == 1
    await wait_until(lambda: rig.audit(approval, "notify.discord"))
    # The notice dispatcher retried it (discord.py's own retry loop never ran): marked sent on
    # its second attempt, a moment after the message's record is written.
    await wait_until(lambda: _notice(rig, approval, NoticeKind.APPROVAL_REQUESTED))
    notice = await _notice(rig, approval, NoticeKind.APPROVAL_REQUESTED)
    assert notice is not None
    assert (notice.outcome, notice.attempts) == ("sent", 2)
    assert notice.last_error is not None and str(status) in notice.last_error
    # The approval is intact and decidable from the one message.
    edit_path = f"/channels/{message['channel_id']}/messages/{message['id']}"
    rig.click(message, f"hitl:approve:{approval.trade_id}", BOB)
    await wait_until(lambda: rig.fake.requests("PATCH", edit_path))
    row = await rig.stored(approval)
    assert (row.status, row.decided_by) == ("ACCEPTED", "bob")


async def test_message_discord_created_before_failing_is_not_posted_twice(rig: Rig) -> None:
    # Discord stores the message, then answers 500: the retry must not post a second one.
    rig.fake.fail(500, after_effect=True)
    approval, _ = await rig.request()
    await wait_until(lambda: rig.audit(approval, "notify.discord"))

    assert [c.status for c in rig.fake.requests("POST", MESSAGES)] == [500, 200]
    [message] = rig.fake.channel_messages()
    # The retry got the first message back (same nonce) and gave it a fresh link; the first
    # attempt's link was revoked, so exactly one valid link exists and the message shows it.
    assert len(rig.fake.requests("PATCH", MESSAGES + r"/\d+")) == 1
    async with rig.sessions() as session:
        rows = (
            await session.execute(
                select(DeepLinkTokenRow).where(DeepLinkTokenRow.trade_id == approval.trade_id)
            )
        ).scalars()
        unused = [r.token for r in rows if r.used_at is None]
    assert unused == [hash_token(token_of(message))]
    grant = await consume_deep_link(rig.sessions, token_of(message))
    assert grant is not None and grant.trade_id == approval.trade_id


# --- expiry, alerts, cascades -----------------------------------------------------------------


async def test_timeout_notice_on_expiry(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
) -> None:
    async with running_rig(dev_env, sqlite_sessions, fake, timeout_seconds=4) as rig:
        approval, message = await rig.request()
        # An operator's client still showing the buttons, clicked after the deadline.
        late = rig.fake.click(
            int(message["id"]), f"hitl:approve:{approval.trade_id}", user_id=ALICE
        )
        await wait_until(lambda: len(rig.fake.channel_messages()) == 2)

        notice = rig.fake.channel_messages()[1]
        embed = notice["embeds"][0]
        assert embed["title"] == "Approval expired: BUY EUR/USD"
        assert "rejected" in embed["description"]
        shown = fields(notice)
        assert shown["Reason"] == DecisionReason.HITL_TIMEOUT.value
        assert shown["Trade"] == f"`{approval.trade_id}`"
        assert (shown["Instrument"], shown["Side"], shown["Risk"]) == ("EUR/USD", "BUY", "1.5%")
        assert shown["Expired"] == f"<t:{int(approval.expires_at.timestamp())}:f>"
        assert notice["message_reference"]["message_id"] == message["id"]
        original = rig.fake.messages[int(message["id"])]
        assert original["components"] == []
        assert original["embeds"][0]["title"] == "EXPIRED: BUY EUR/USD"
        row = await rig.stored(approval)
        assert (row.status, row.decision_reason) == ("REJECTED", "HITL_TIMEOUT")

        rig.bot._connection.parse_interaction_create(late)  # type: ignore[arg-type]
        answer = await rig.answer(late)
        assert ErrorCode.EXPIRED.code in answer["content"]
        assert len(rig.fake.channel_messages()) == 2


async def test_security_alert_and_guardian_cascade_are_posted_once(
    fake: FakeDiscord, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    notifier = DiscordNotifier(
        token=fake.bot_token,
        channel_id=fake.channel_id,
        hub_url=HUB_URL,
        sessions=sqlite_sessions,
        api_base_url=fake.api_url,
    )
    activities = NotificationActivities(notifier)
    env = ActivityEnvironment()
    now = datetime.now(UTC)
    summary = GuardianCascadeSummary(
        reason="Daily drawdown limit reached",
        locked_by="admin",
        locked_at=now,
        rejected=3,
        correlation_id="corr-guardian-1",
    )
    alert = SecurityAlertInput(
        trade_id=uuid.uuid4(),
        error_code=ErrorCode.INTEGRITY_FAILURE.code,
        message="stored approval failed its integrity check; rejected",
        correlation_id="corr-alert-1",
        detected_at=now,
    )
    try:
        fake.fail(429, retry_after=0.25)
        with pytest.raises(ApplicationError) as failed:
            await env.run(activities.notify_guardian_cascade, summary)
        # Temporal is asked to wait as long as Discord said.
        assert failed.value.next_retry_delay == timedelta(seconds=0.25)
        assert not failed.value.non_retryable
        for _ in range(2):  # the retry, and one more for good measure
            await env.run(activities.notify_guardian_cascade, summary)
            await env.run(activities.notify_security_alert, alert)
    finally:
        await notifier.aclose()

    cascade, posted_alert = fake.channel_messages()
    assert cascade["embeds"][0]["title"] == "Guardian lock: trading halted"
    assert cascade["embeds"][0]["description"] == "Daily drawdown limit reached"
    assert fields(cascade) == {
        "Locked by": "admin",
        "Locked": f"<t:{int(now.timestamp())}:f>",
        "Pending approvals rejected": "3",
    }
    assert posted_alert["embeds"][0]["title"] == "Security alert SEC-080"
    assert fields(posted_alert)["Trade"] == f"`{alert.trade_id}`"
    assert [c.status for c in fake.requests("POST", MESSAGES)] == [429, 200, 200]


async def test_a_request_retried_past_its_deadline_is_not_posted(
    fake: FakeDiscord, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    notifier = DiscordNotifier(
        token=fake.bot_token,
        channel_id=fake.channel_id,
        hub_url=HUB_URL,
        sessions=sqlite_sessions,
        api_base_url=fake.api_url,
    )
    now = datetime.now(UTC)
    late = ApprovalRequest.from_proposal(
        make_proposal(SimulatedMarketData(jitter_percent=Decimal(0))),
        requested_at=now - timedelta(seconds=301),
        expires_at=now - timedelta(seconds=1),
    )
    try:
        await notifier.approval_requested(late)
    finally:
        await notifier.aclose()
    assert fake.channel_messages() == []


# --- configuration -----------------------------------------------------------------------------


def _settings(monkeypatch: pytest.MonkeyPatch, **discord_env: str) -> Settings:
    for name in ("DISCORD_BOT_TOKEN", "DISCORD_CHANNEL_ID", "DISCORD_OPERATORS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in discord_env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


async def test_without_a_bot_token_the_console_notifier_serves_the_gateway(
    monkeypatch: pytest.MonkeyPatch,
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    settings = _settings(monkeypatch)
    assert not settings.discord.enabled
    market = SimulatedMarketData(jitter_percent=Decimal(0))
    task_queue = f"hitl-console-{uuid.uuid4().hex[:8]}"
    notifier: Notifier
    async with notifier_from_settings(settings, sqlite_sessions) as notifier:
        assert isinstance(notifier, ConsoleNotifier)
        worker = build_worker(
            dev_env.client,
            task_queue=task_queue,
            activities=activities_for(
                sessions=sqlite_sessions, provider=market, notifier=notifier, client=dev_env.client
            ),
            notices=NoticeDispatcher(sqlite_sessions, notifier, poll_seconds=TEST_POLL_SECONDS),
        )
        async with worker:
            approvals = ApprovalClient(dev_env.client, task_queue=task_queue)
            handle = await approvals.request_approval(make_proposal(market), requested_by="bot-1")
            await handle.recorded()
            command = DecisionCommand(
                operator_id="alice", channel=DecisionChannel.API, correlation_id="corr-console"
            )
            decided = await handle.reject(command)
    assert decided.status is TradeStatus.REJECTED


async def test_discord_configuration_errors_refuse_to_start(
    monkeypatch: pytest.MonkeyPatch, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    no_channel = _settings(monkeypatch, DISCORD_BOT_TOKEN="token")
    with pytest.raises(ConfigurationError) as missing_channel:
        async with notifier_from_settings(no_channel, sqlite_sessions):
            pass
    assert missing_channel.value.variable == "DISCORD_CHANNEL_ID"
    assert missing_channel.value.error is ErrorCode.CONFIGURATION

    with pytest.raises(ConfigurationError) as missing_token:
        await run(_settings(monkeypatch))
    assert missing_token.value.variable == "DISCORD_BOT_TOKEN"

    for malformed in ("alice:123", "123", "123:", "12x:alice"):
        with pytest.raises(ConfigurationError) as bad:
            parse_operators(malformed)
        assert bad.value.variable == "DISCORD_OPERATORS"
    assert parse_operators(" 1:alice ,2:bob,") == {1: "alice", 2: "bob"}
    assert DiscordSettings(operators="").operators == ""


# --- deep links -----------------------------------------------------------------------------


async def test_property_12_deep_link_tokens_are_single_use(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    token = await issue_deep_link(
        sessions,
        trade_id=uuid.uuid4(),
        expires_at=datetime.now(UTC) + timedelta(minutes=5),
        correlation_id="corr-p12",
    )
    grants = await asyncio.gather(*(consume_deep_link(sessions, token) for _ in range(50)))
    assert sum(grant is not None for grant in grants) == 1


async def test_expired_replaced_and_unknown_tokens_open_nothing(
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    trade_id = uuid.uuid4()
    expired = await issue_deep_link(
        sqlite_sessions,
        trade_id=uuid.uuid4(),
        expires_at=datetime.now(UTC) - timedelta(seconds=1),
        correlation_id="corr-expired",
    )
    assert await consume_deep_link(sqlite_sessions, expired) is None

    later = datetime.now(UTC) + timedelta(minutes=5)
    first = await issue_deep_link(
        sqlite_sessions, trade_id=trade_id, expires_at=later, correlation_id="corr-1"
    )
    second = await issue_deep_link(
        sqlite_sessions, trade_id=trade_id, expires_at=later, correlation_id="corr-1"
    )
    assert await consume_deep_link(sqlite_sessions, first) is None
    grant = await consume_deep_link(sqlite_sessions, second)
    assert grant is not None and (grant.trade_id, grant.correlation_id) == (trade_id, "corr-1")
    assert await consume_deep_link(sqlite_sessions, second) is None
    assert await consume_deep_link(sqlite_sessions, "never-issued") is None
    assert await consume_deep_link(sqlite_sessions, "x" * 10_000) is None


async def test_deep_link_endpoint_shows_the_approval_once_and_decides_nothing(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
) -> None:
    async with running_rig(dev_env, sqlite_sessions, fake) as rig:
        approval, message = await rig.request()
        settings = api_settings(
            database_url=sqlite_url,
            temporal_address=dev_env.client.service_client.config.target_host,
            task_queue=rig.task_queue,
        )
        app = create_app(settings)
        if not any(getattr(r, "path", "") == DEEP_LINK_PATH for r in app.routes):
            app.include_router(deep_links.router)  # until api/main.py registers it
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                url = f"/api/hitl/deep-links/{token_of(message)}"
                # Opening is a POST: a GET never uses a link up (issue 17).
                assert (await http.get(url)).status_code == 405
                opened = await http.post(url, headers={"X-Correlation-ID": "corr-open-1"})
                again = await http.post(url)
                unknown = await http.post("/api/hitl/deep-links/not-a-token")

        assert opened.status_code == 200, opened.text
        assert opened.headers["Cache-Control"] == "no-store"
        body = opened.json()
        assert body["trade_id"] == str(approval.trade_id)
        assert body["correlation_id"] == "corr-open-1"
        assert body["approval"]["integrity_ok"] is True
        assert body["approval"]["approval"]["status"] == "AWAITING_APPROVAL"
        assert body["approval"]["approval"]["correlation_id"] == approval.correlation_id
        for refused in (again, unknown):
            assert refused.status_code == 403, refused.text
            error = refused.json()
            assert error["error_code"] == ErrorCode.INVALID_DEEP_LINK.code
            assert error["message"] == ErrorCode.INVALID_DEEP_LINK.message
            assert error["correlation_id"] == refused.headers["X-Correlation-ID"]
        # Opening the link decided nothing.
        assert (await rig.stored(approval)).status == "AWAITING_APPROVAL"
        current = await rig.approvals.approval(approval.trade_id).current()
        assert current is not None and current.status is TradeStatus.AWAITING_APPROVAL


async def test_an_approval_decided_while_discord_was_down_is_posted_decided(rig: Rig) -> None:
    """Discord refuses the approval message's first two posts; meanwhile bob approves over the
    API. The message Discord finally gets must show the decision, not live buttons (found by the
    Discord-outage chaos scenario: the decision's edit found no message and ended)."""
    rig.fake.fail(500, times=2)
    proposal = make_proposal(rig.market)
    handle = await rig.approvals.request_approval(proposal, requested_by="bot-1")
    approval = await handle.recorded()
    decided = await handle.approve(
        DecisionCommand(operator_id="bob", channel=DecisionChannel.API, correlation_id="corr-api")
    )
    assert decided.status is TradeStatus.ACCEPTED
    # The decision's notice ran while no message existed yet.
    assert not [c for c in rig.fake.requests("POST", MESSAGES) if c.status == 200]

    def shown_decided() -> bool:
        message = rig.message_of(approval)
        return message is not None and message["embeds"][0]["title"].startswith("ACCEPTED")

    await wait_until(shown_decided, timeout=30)
    message = rig.message_of(approval)
    assert message is not None
    assert message["components"] == []
    assert len(rig.fake.channel_messages()) == 1
