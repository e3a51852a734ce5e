"""/readyz shows the reconciler's startup summary and last pass, and whether the Discord bot is
connected; Discord being down never makes the gateway unready (issue 16, items 2 and 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from tests.api.conftest import Api, start_api
from tests.temporal_fixtures import start_gateway, wait_until
from workflows.reconciler_client import ReconcilerClient


@pytest.fixture
async def discord_api(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Api]:
    """The app with Discord configured (the bot itself is not running)."""
    monkeypatch.setenv("DISCORD_BOT_TOKEN", "not-a-real-token")
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        async for client in start_api(gw, sqlite_url):
            yield client


async def _readyz(api: Api) -> dict[str, Any]:
    answer = await api.http.get("/readyz")
    body: dict[str, Any] = answer.json()
    body["status_code"] = answer.status_code
    return body


async def test_readyz_shows_the_startup_summary_and_discord_down_while_staying_ready(
    discord_api: Api,
) -> None:
    api = discord_api
    await wait_until(lambda: _ready(api))
    before = await _readyz(api)
    assert before["reconciliation"] is None  # no worker has asked for a pass yet
    assert before["checks"]["discord"] == "unknown"

    reconciler = ReconcilerClient(api.gw.env.client, task_queue=api.gw.task_queue)
    report = await reconciler.startup_pass()
    await reconciler.report_discord(connected=False, detail="gateway unreachable (test)")

    body = await _readyz(api)
    assert body["status_code"] == 200 and body["ready"] is True
    assert body["checks"]["discord"] == "down: gateway unreachable (test)"
    reconciliation = body["reconciliation"]
    assert reconciliation["startup"] == report.summary()
    assert reconciliation["startup"].startswith("approvals resumed 0, lifecycle trades open 0")

    await reconciler.report_discord(connected=True)
    assert (await _readyz(api))["checks"]["discord"] == "ok"


async def _ready(api: Api) -> bool:
    return (await api.http.get("/readyz")).status_code == 200
