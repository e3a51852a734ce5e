"""The operators' page and Temporal (issue 18 items 3, 7), in Chromium: each pending approval links
to its workflow in the Temporal UI, and an approval nobody decided by the escalation point gets
a badge the moment the escalation is streamed."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from playwright.async_api import expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from tests.api.conftest import Served, serve_api
from tests.e2e.test_operator_page import Screen, browser, propose, screen
from tests.temporal_fixtures import start_gateway

__all__ = ["browser", "screen"]  # the browser fixtures, shared with the page's main tests

UI = "http://127.0.0.1:8233"
WINDOW_SECONDS = 8


@pytest.fixture
async def stack(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Served]:
    """The gateway with a short window that escalates at 50 %, linking to the Temporal UI."""
    monkeypatch.setenv("HITL_TEMPORAL_UI_URL", f"{UI}/")
    gw = await start_gateway(
        dev_env,
        sqlite_sessions,
        timeout_seconds=WINDOW_SECONDS,
        remind_at_percent=Decimal(25),
        escalate_at_percent=Decimal(50),
    )
    async with gw.worker:
        async for served in serve_api(gw, sqlite_url, timeout_seconds=WINDOW_SECONDS):
            yield served


@pytest.fixture
async def http(stack: Served) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the API, for the bot."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        yield client


async def test_a_pending_approval_links_to_temporal_and_is_badged_when_escalated(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    config = (await http.get("/page-config")).json()
    assert config == {"temporal_ui_url": UI, "namespace": stack.settings.temporal.namespace}

    await screen.open()
    await screen.sign_in("alice-token")
    trade_id = await propose(stack, http)
    row = screen.row(trade_id)
    await expect(row).to_be_visible()
    link = row.get_by_role("link", name="Open in the Temporal UI")
    await expect(link).to_have_attribute(
        "href", f"{UI}/namespaces/default/workflows/approval-{trade_id}"
    )
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", re.compile("noopener"))
    badge = row.locator(".escalated-badge")
    await expect(badge).to_be_hidden()
    await screen.shot("pending")

    # Escalated at half the window; the badge comes with the streamed hitl.escalated.
    await expect(badge).to_be_visible(timeout=WINDOW_SECONDS * 1000)
    await expect(badge).to_have_text("Escalated")
    await expect(page.locator("#announcer")).to_have_text(re.compile("^Escalated: EUR/USD BUY"))
    await screen.shot("escalated")

    # Reloaded, the page learns it from /pending (the event was streamed before the reload).
    await page.reload()
    await expect(page.locator("#connection")).to_have_text("Live")
    await expect(screen.row(trade_id).locator(".escalated-badge")).to_be_visible()
    pending = (
        await http.get("/api/hitl/pending", headers={"Authorization": "Bearer alice-token"})
    ).json()
    assert [item["escalated"] for item in pending["items"] if item["trade_id"] == trade_id] == [
        True
    ]
