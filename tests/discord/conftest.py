"""Fixtures of the Discord tests: the local fake of Discord's REST API and its gateway, the
running rig (gateway, notifier, bot), and discord.py's process-wide URLs put back after each
test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import discord.gateway
import discord.http
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from tests.discord.fake_discord import FakeDiscord
from tests.discord.fake_gateway import FakeGateway
from tests.discord.test_discord import Rig, running_rig


@pytest.fixture(autouse=True)
def _restore_discord_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """The notifier and the bot point discord.py's process-wide REST and gateway URLs at the
    fakes; undo it after each test."""
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(
        discord.gateway.DiscordWebSocket,
        "DEFAULT_GATEWAY",
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """The fake Discord REST API, serving on a free loopback port."""
    server = FakeDiscord()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def gateway(fake: FakeDiscord) -> AsyncIterator[FakeGateway]:
    """The fake gateway of ``fake``, which names it in GET /gateway/bot."""
    server = FakeGateway(
        bot_token=fake.bot_token,
        bot_user=fake.user(fake.bot_user_id, "hitl-bot", bot=True),
        application_id=fake.application_id,
    )
    await server.start()
    fake.gateway_url = server.url
    yield server
    await server.stop()


@pytest.fixture
async def rig(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
) -> AsyncIterator[Rig]:
    """A running rig on SQLite with the default policy (300 s); a test module with another
    policy or market defines its own."""
    async with running_rig(dev_env, sqlite_sessions, fake) as running:
        yield running
