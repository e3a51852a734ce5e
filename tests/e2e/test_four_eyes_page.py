"""Four eyes on the operators' page (issue 17 item 2), in Debian's Chromium against the real
stack: a first approval leaves the approval listed with ``1 of 2 approvals`` and its approver,
the same operator cannot approve again, a second operator's approval accepts and both are named.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import httpx
import pytest
from playwright.async_api import expect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from tests.api.conftest import Served, serve_api
from tests.e2e.test_operator_page import Screen, approval, browser, decide, http, propose, screen
from tests.temporal_fixtures import start_gateway

__all__ = ["browser", "http", "screen"]  # the operator page's fixtures, over this stack


@pytest.fixture
async def stack(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Served]:
    """The running gateway; its worker asks two operators above 2 % risk."""
    gw = await start_gateway(dev_env, sqlite_sessions, four_eyes_risk_pct=Decimal("2.0"))
    async with gw.worker:
        async for served in serve_api(gw, sqlite_url):
            yield served


async def test_the_page_shows_one_of_two_approvals_then_both_approvers(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    await screen.open()
    await screen.sign_in("alice-token")
    trade_id = await propose(stack, http, risk_pct="2.5")
    await expect(screen.row(trade_id)).to_have_count(1)

    await screen.button(trade_id, "Approve").click()
    await page.get_by_role("button", name="Confirm approval").click()
    outcome = page.locator("#outcome")
    await expect(outcome).to_contain_text("is recorded (1 of 2 approvals (alice))")
    await expect(outcome).to_have_attribute("data-kind", "ok")
    # Still pending, and it says who approved and what it still needs.
    line = screen.row(trade_id).locator(".approvals-line")
    await expect(line).to_have_text(
        "1 of 2 approvals (alice): a second, different operator must approve."
    )
    await screen.shot("first-approval")

    await screen.button(trade_id, "Approve").click()
    await page.get_by_role("button", name="Confirm approval").click()
    await expect(outcome).to_contain_text("you already approved")
    await expect(outcome).to_have_attribute("data-kind", "error")
    await expect(screen.row(trade_id)).to_have_count(1)
    await screen.shot("same-operator-again")

    await decide(http, trade_id, "approve", "bob")
    await expect(screen.row(trade_id)).to_have_count(0)
    await expect(page.locator("#outcome-list")).to_contain_text("approved by alice and bob")
    record = await approval(http, trade_id)
    assert (record["status"], record["approvers"]) == ("ACCEPTED", ["alice", "bob"])
    await screen.shot("accepted-by-two")


async def test_a_first_approval_made_elsewhere_appears_live(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    await screen.open()
    await screen.sign_in("alice-token")
    trade_id = await propose(stack, http, risk_pct="3")
    await expect(screen.row(trade_id)).to_have_count(1)

    response = await http.post(
        f"/api/hitl/{trade_id}/approve",
        json={"comment": "ok"},
        headers={"Authorization": "Bearer bob-token"},
    )
    assert response.status_code == 202, response.text
    await expect(screen.row(trade_id).locator(".approvals-line")).to_have_text(
        "1 of 2 approvals (bob): a second, different operator must approve."
    )
    await screen.button(trade_id, "Approve").click()
    await screen.page.get_by_role("button", name="Confirm approval").click()
    await expect(screen.page.locator("#outcome")).to_contain_text("was accepted")
    await expect(screen.row(trade_id)).to_have_count(0)
