"""Reminders and escalations in Discord, and the link to the Temporal UI (issue 18 items 3, 7):
the reminder replies to the approval message allowing no mention; the escalation mentions the
escalation role, the only mention any message of the gateway allows; each is posted once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.discord_notifier import DiscordNotifier
from activities.market_providers import SimulatedMarketData
from activities.notice_dispatch import NoticeDispatcher
from activities.notifications import NotificationActivities
from activities.policy import WorkerTrust
from hitl.keys import KeyPurpose, KeyringFile
from hitl.messages import ReminderInput, ReminderKind
from hitl.models import ApprovalRequest, TradeProposal, TradeStatus
from hitl.settings import get_settings
from tests.discord.fake_discord import FakeDiscord
from tests.temporal_fixtures import TEST_POLL_SECONDS, make_policy, make_proposal, wait_until
from tests.workflows.test_approval_paths import command
from worker import activities_for, build_worker
from workflows.client import ApprovalClient

UI = "http://temporal-ui.example.test:8233"
ROLE = 500_000_000_000_000_077
MESSAGES = r"/channels/\d+/messages"


@dataclass
class Reminding:
    """A worker posting to the fake, with a short window that reminds and escalates."""

    fake: FakeDiscord
    approvals: ApprovalClient
    market: SimulatedMarketData
    notifier: DiscordNotifier


def notifier_for(
    fake: FakeDiscord, sessions: async_sessionmaker[AsyncSession], **options: Any
) -> DiscordNotifier:
    """A Discord notifier posting to the fake, linking to the Temporal UI at ``UI``."""
    return DiscordNotifier(
        token=fake.bot_token,
        channel_id=fake.channel_id,
        hub_url="https://hub.example.test",
        sessions=sessions,
        api_base_url=fake.api_url,
        temporal_ui_url=UI,
        namespace="default",
        **options,
    )


@asynccontextmanager
async def reminding(
    env: WorkflowEnvironment,
    sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
    **policy: Any,
) -> AsyncIterator[Reminding]:
    task_queue = f"hitl-remind-{uuid.uuid4().hex[:8]}"
    market = SimulatedMarketData(jitter_percent=Decimal(0))
    notifier = notifier_for(fake, sessions, escalation_role_id=ROLE)
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
    try:
        async with worker:
            yield Reminding(
                fake=fake,
                approvals=ApprovalClient(env.client, task_queue=task_queue),
                market=market,
                notifier=notifier,
            )
    finally:
        await notifier.aclose()


def _contents(fake: FakeDiscord) -> list[str]:
    return [str(m["content"]) for m in fake.channel_messages()]


async def test_reminder_then_escalation_reply_to_the_approval_message(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
) -> None:
    # A 6 s window: the reminder at 3 s, the escalation at 4.8 s, the deadline at 6 s.
    async with reminding(
        dev_env,
        sqlite_sessions,
        fake,
        timeout_seconds=6,
        remind_at_percent=Decimal(50),
        escalate_at_percent=Decimal(80),
    ) as rig:
        proposal = make_proposal(rig.market)
        handle = await rig.approvals.request_approval(proposal, requested_by="bot-1")
        approval = await handle.recorded()
        await wait_until(lambda: len(fake.channel_messages()) == 3, timeout=15)
        original, reminder, escalation = fake.channel_messages()

        link = f"{UI}/namespaces/default/workflows/approval-{approval.trade_id}"
        workflow_field = {f["name"]: f["value"] for f in original["embeds"][0]["fields"]}
        assert workflow_field["Workflow"] == f"[Open in the Temporal UI]({link})"

        expires = f"<t:{int(approval.expires_at.timestamp())}:R>"
        assert reminder["content"] == (
            f"Reminder: BUY EUR/USD still awaits a decision; it expires {expires}."
        )
        assert escalation["content"] == (
            f"<@&{ROLE}> Escalation: BUY EUR/USD is still undecided and expires {expires}."
        )
        for notice in (reminder, escalation):
            assert notice["message_reference"]["message_id"] == original["id"]
        posts = [call.body for call in fake.requests("POST", MESSAGES)]
        assert [body["allowed_mentions"] for body in posts if body is not None] == [
            {"parse": []},
            {"parse": []},
            # Exactly the escalation role: no everyone, no users, no other role.
            {"parse": [], "roles": [ROLE]},
        ]
        final = await handle.outcome()
        assert final.status is TradeStatus.REJECTED
        await wait_until(lambda: len(fake.channel_messages()) == 4, timeout=10)  # the expiry


async def test_no_reminder_once_decided(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
) -> None:
    async with reminding(
        dev_env,
        sqlite_sessions,
        fake,
        timeout_seconds=4,
        remind_at_percent=Decimal(50),
        escalate_at_percent=Decimal(80),
    ) as rig:
        handle = await rig.approvals.request_approval(
            make_proposal(rig.market), requested_by="bot-1"
        )
        await handle.recorded()
        await wait_until(lambda: len(fake.channel_messages()) == 1)
        await handle.approve(command("alice"))
        await wait_until(lambda: fake.channel_messages()[0]["components"] == [])
        # Past where the reminder and the escalation would have been, and the deadline.
        await asyncio.sleep(5)
        assert len(fake.channel_messages()) == 1


async def test_a_retried_escalation_is_posted_once(
    sqlite_sessions: async_sessionmaker[AsyncSession], fake: FakeDiscord
) -> None:
    notifier = notifier_for(fake, sqlite_sessions, escalation_role_id=ROLE)
    activities = NotificationActivities(notifier, sqlite_sessions)
    proposal = make_proposal(SimulatedMarketData(jitter_percent=Decimal(0)))
    approval = _awaiting(proposal)
    data = ReminderInput(
        approval=approval,
        kind=ReminderKind.ESCALATION,
        at_percent=Decimal(80),
        due_at=approval.requested_at,
    )
    env = ActivityEnvironment()
    try:
        fake.fail(503)
        with pytest.raises(ApplicationError, match="503"):  # left to Temporal to retry
            await env.run(activities.notify_approval_reminder, data)
        await env.run(activities.notify_approval_reminder, data)
        await env.run(activities.notify_approval_reminder, data)
    finally:
        await notifier.aclose()
    # No approval message was posted: the escalation goes out on its own, once.
    assert _contents(fake) == [
        f"<@&{ROLE}> Escalation: BUY EUR/USD is still undecided and expires "
        f"<t:{int(approval.expires_at.timestamp())}:R>."
    ]


def _awaiting(proposal: TradeProposal) -> ApprovalRequest:
    now = datetime.now(UTC)
    return ApprovalRequest.from_proposal(
        proposal, requested_at=now, expires_at=now + timedelta(minutes=5)
    )
