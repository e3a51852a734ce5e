"""The real Discord bot (``discord_bot.run``) connected through a gateway: the local fake gateway
and the fake REST API, the Temporal dev server with the real activities, a real database. Clicks
arrive as Discord delivers them, over the bot's websocket (issue #16, items 5 and 6)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from discord_bot import run
from hitl.errors import ErrorCode
from hitl.models import DecisionChannel, DecisionReason, TradeStatus
from hitl.settings import get_settings
from tests.discord.fake_discord import FakeDiscord
from tests.discord.fake_gateway import FakeGateway
from tests.discord.test_discord import ALICE, MALLORY, OPERATORS, Rig, running_rig
from tests.temporal_fixtures import wait_until
from workflows.reconciler_client import ReconcilerClient


@dataclass
class RunningBot:
    """``discord_bot.run`` in this process, until ``stop`` is set."""

    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def real_bot(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, sqlite_url: str, **env: str
) -> AsyncIterator[RunningBot]:
    """The bot as ``python -m discord_bot`` runs it, configured from the environment."""
    values = {
        "DISCORD_BOT_TOKEN": rig.fake.bot_token,
        "DISCORD_CHANNEL_ID": str(rig.fake.channel_id),
        "DISCORD_API_BASE_URL": rig.fake.api_url,
        "DISCORD_OPERATORS": OPERATORS,
        "TEMPORAL_ADDRESS": rig.env.client.service_client.config.target_host,
        "TEMPORAL_TASK_QUEUE": rig.task_queue,
        "DATABASE_URL": sqlite_url,
        "HITL_ALLOWED_OPERATORS": "alice,bob",
        **env,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    stop = asyncio.Event()
    task = asyncio.create_task(run(get_settings(), stop=stop))
    try:
        yield RunningBot(stop=stop, task=task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def click(
    rig: Rig, gateway: FakeGateway, message: dict[str, Any], custom_id: str, user_id: int
) -> dict[str, Any]:
    """A click on ``message``, delivered by the gateway to the connected bot."""
    payload = rig.fake.click(int(message["id"]), custom_id, user_id=user_id)
    await gateway.interaction(payload)
    return payload


async def test_clicks_arrive_through_the_gateway_and_decide_end_to_end(
    rig: Rig,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
) -> None:
    async with real_bot(rig, monkeypatch, sqlite_url) as bot:
        await gateway.wait_identified()
        approved, approved_message = await rig.request()
        rejected, rejected_message = await rig.request()
        stranger, stranger_message = await rig.request()

        yes = await click(
            rig, gateway, approved_message, f"hitl:approve:{approved.trade_id}", ALICE
        )
        no = await click(rig, gateway, rejected_message, f"hitl:reject:{rejected.trade_id}", ALICE)
        refused = await click(
            rig, gateway, stranger_message, f"hitl:approve:{stranger.trade_id}", MALLORY
        )

        assert (await rig.answer(yes))["content"].startswith("Approved")
        assert (await rig.answer(no))["content"].startswith("Rejected")
        assert ErrorCode.UNAUTHORISED_OPERATOR.code in (await rig.answer(refused))["content"]
        for approval, status, reason in (
            (approved, TradeStatus.ACCEPTED, DecisionReason.OPERATOR_APPROVED),
            (rejected, TradeStatus.REJECTED, DecisionReason.OPERATOR_REJECTED),
        ):
            row = await rig.stored(approval)
            assert (row.status, row.decision_reason, row.decision_channel, row.decided_by) == (
                status.value,
                reason.value,
                DecisionChannel.DISCORD.value,
                "alice",
            )
        assert (await rig.stored(stranger)).status == TradeStatus.AWAITING_APPROVAL.value
        [audited] = await rig.audit(stranger, "discord.refused")
        assert audited.actor_id == f"discord:{MALLORY}"
        # The bot found the gateway through the REST API and logged in there once.
        assert rig.fake.requests("GET", "/gateway/bot")
        assert gateway.identifies == 1
        assert not bot.task.done()


async def test_a_click_on_an_expired_approval_is_told_so(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
) -> None:
    async with (
        running_rig(dev_env, sqlite_sessions, fake, timeout_seconds=5) as rig,
        real_bot(rig, monkeypatch, sqlite_url, DISCORD_GATEWAY_URL=gateway.url),
    ):
        await gateway.wait_identified()
        approval, message = await rig.request()
        # Alice clicks while the buttons still show; the click reaches the bot after the expiry
        # has removed them (a click that raced the timer: Discord delivers it as it was made).
        late = rig.fake.click(
            int(message["id"]), f"hitl:approve:{approval.trade_id}", user_id=ALICE
        )
        await wait_until(lambda: _status(rig, approval.trade_id, TradeStatus.REJECTED), timeout=15)
        await gateway.interaction(late)
        assert ErrorCode.EXPIRED.code in (await rig.answer(late))["content"]
        row = await rig.stored(approval)
        assert (row.status, row.decision_reason) == ("REJECTED", "HITL_TIMEOUT")
        # DISCORD_GATEWAY_URL wins: the REST API was not asked where the gateway is.
        assert not rig.fake.requests("GET", "/gateway/bot")


async def _status(rig: Rig, trade_id: Any, status: TradeStatus) -> bool:
    current = await rig.approvals.approval(trade_id).current()
    return current is not None and current.status is status


async def test_the_bot_waits_out_an_unreachable_gateway_and_says_so(
    rig: Rig,
    gateway: FakeGateway,
    monkeypatch: pytest.MonkeyPatch,
    sqlite_url: str,
) -> None:
    """Discord's gateway is down when the bot starts: the bot keeps retrying (discord.py alone
    would crash with AttributeError on ``self.ws.sequence``), reports itself down, connects
    when the gateway is back, and decides clicks."""
    await gateway.unreachable()
    reconciler = ReconcilerClient(rig.env.client, task_queue=rig.task_queue)
    async with real_bot(rig, monkeypatch, sqlite_url) as bot:

        async def reported(connected: bool, detail: str = "") -> bool:
            try:
                status = await reconciler.status()
            except RPCError:  # the bot's first report has not started the reconciler yet
                return False
            return (
                status.discord is not None
                and status.discord.connected is connected
                and detail in status.discord.detail
            )

        await wait_until(lambda: reported(False, "unreachable"), timeout=20, interval=0.3)
        await asyncio.sleep(2)
        assert not bot.task.done(), "the bot gave up"

        await gateway.reachable()
        await gateway.wait_identified(timeout=60)
        await wait_until(lambda: reported(True), timeout=20, interval=0.3)

        approval, message = await rig.request()
        payload = await click(rig, gateway, message, f"hitl:approve:{approval.trade_id}", ALICE)
        assert (await rig.answer(payload))["content"].startswith("Approved")

        # Dropped later, discord.py reconnects by itself (resuming the session).
        await gateway.drop_connections()
        await wait_until(lambda: gateway.resumes + gateway.identifies >= 2, timeout=30)
        assert not bot.task.done()
