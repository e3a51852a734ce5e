"""The operators' approval page in a real browser.

Debian's Chromium, driven by Playwright, against the real stack: the API under uvicorn on
127.0.0.1, the Temporal dev server with an in-process worker, and a migrated SQLite database. Bots
and other operators act over HTTP exactly as they would in production; the page must follow.

Screenshots of each step go to ``test-artifacts/operator-page/<test>/``. With
``HITL_README_SCREENSHOT=1`` the first test also refreshes ``docs/screenshots/operator-page.png``,
the README's picture (left alone otherwise, so that a test run never dirties the work tree).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Error,
    Page,
    Route,
    WebSocketRoute,
    async_playwright,
    expect,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from tests.api.conftest import Served, auth, serve_api
from tests.temporal_fixtures import start_gateway, wait_until

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "operator-page"
README_SCREENSHOT = REPO / "docs" / "screenshots" / "operator-page.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1100, "height": 900}
PHONE = {"width": 375, "height": 740}
# Long enough for a loaded CI machine; an expectation that holds returns as soon as it does.
expect.set_options(timeout=10_000)


# ---------------------------------------------------------------- the stack


@pytest.fixture
async def stack(
    request: pytest.FixtureRequest,
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Served]:
    """The running gateway; parametrize indirectly with a deadline in seconds (default 300)."""
    timeout_seconds: int = getattr(request, "param", 300)
    # The deadline is the worker's policy (recorded at start), so the worker gets it too.
    gw = await start_gateway(dev_env, sqlite_sessions, timeout_seconds=timeout_seconds)
    async with gw.worker:
        async for served in serve_api(gw, sqlite_url, timeout_seconds=timeout_seconds):
            yield served


@pytest.fixture
async def http(stack: Served) -> AsyncIterator[httpx.AsyncClient]:
    """A client on the API, for the bot, other operators and the admin."""
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium (never a downloaded browser build), shared by the module's tests."""
    assert CHROMIUM.exists(), "install Debian's chromium: apt-get install -y chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@dataclass
class Screen:
    """One browser tab on the stack, with numbered screenshots of its steps."""

    page: Page
    stack: Served
    folder: Path
    shots: int = 0
    errors: list[str] = field(default_factory=list)

    async def shot(self, step: str) -> Path:
        """Save a screenshot of the current state as a test artifact."""
        self.shots += 1
        path = self.folder / f"{self.shots:02d}-{step}.png"
        await self.page.screenshot(path=str(path))
        return path

    async def open(self, path: str = "/") -> None:
        """Load a page of the gateway."""
        await self.page.goto(f"{self.stack.base_url}{path}")

    async def sign_in(self, token: str) -> None:
        """Sign in with an operator token and wait for the live stream."""
        await self.page.get_by_label("Operator token").fill(token)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.locator("#connection")).to_have_text("Live")

    def row(self, trade_id: str) -> Any:
        """The pending list's entry for ``trade_id``."""
        return self.page.locator(f'#pending-list > li[data-trade-id="{trade_id}"]')

    def button(self, trade_id: str, action: str) -> Any:
        """The Approve or Reject button of a pending entry (``action`` is the visible label)."""
        return self.row(trade_id).get_by_role("button", name=re.compile(rf"^{action}\b"))


@pytest.fixture
async def screen(
    request: pytest.FixtureRequest, browser: Browser, stack: Served
) -> AsyncIterator[Screen]:
    """A fresh browser context (empty sessionStorage); parametrize indirectly with "phone"."""
    viewport = PHONE if getattr(request, "param", "desktop") == "phone" else DESKTOP
    context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = await context.new_page()
    folder = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    screen = Screen(page=page, stack=stack, folder=folder)

    def on_console(message: ConsoleMessage) -> None:
        # Refused requests (401, 409, 410, 404 while an endpoint is missing) are logged by the
        # browser as failed loads; those are expected. Anything else is a bug in the page.
        if message.type == "error" and "Failed to load resource" not in message.text:
            screen.errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: screen.errors.append(f"uncaught: {error}"))
    try:
        yield screen
    finally:
        # The page may already be gone after a failure; the failure itself says more.
        with contextlib.suppress(Error):
            await screen.shot("final")
        await context.close()
    assert screen.errors == [], screen.errors


# ---------------------------------------------------------------- helpers


async def propose(
    stack: Served,
    http: httpx.AsyncClient,
    *,
    instrument: str = "EUR/USD",
    side: str = "BUY",
    risk_pct: str = "1.5",
    confidence: str = "0.82",
    reasoning: str = "Breakout above resistance with rising volume.",
) -> str:
    """The bot proposes a trade priced at the simulated market's mid; returns its trade id."""
    trade_id = str(uuid.uuid4())
    response = await http.post(
        "/api/hitl/requests",
        json={
            "trade_id": trade_id,
            "instrument": instrument,
            "side": side,
            "risk_pct": risk_pct,
            "confidence": confidence,
            "request_price": str(stack.gw.market.mid_price(instrument)),
            "reasoning_summary": reasoning,
        },
        headers=auth("bot-1"),
    )
    assert response.status_code == 201, response.text
    return trade_id


async def approval(http: httpx.AsyncClient, trade_id: str) -> dict[str, Any]:
    """The stored record of ``trade_id``."""
    response = await http.get(f"/api/hitl/{trade_id}", headers=auth("alice"))
    assert response.status_code == 200, response.text
    record: dict[str, Any] = response.json()["approval"]
    return record


async def decide(http: httpx.AsyncClient, trade_id: str, action: str, operator: str) -> None:
    """Another operator decides over the API (as from Discord or a second browser)."""
    body = {"reason": "decided elsewhere"} if action == "reject" else {"comment": "elsewhere"}
    response = await http.post(f"/api/hitl/{trade_id}/{action}", json=body, headers=auth(operator))
    assert response.status_code == 200, response.text


async def no_horizontal_scroll(page: Page) -> bool:
    """Whether the page fits its viewport's width (nothing to pan sideways on a phone)."""
    result = await page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    return bool(result)


def hold_until(action: Callable[[], Awaitable[None]]) -> Callable[[Route], Awaitable[None]]:
    """A route handler that runs ``action`` before letting the browser's request through, to put
    a real competing decision on the server first."""

    async def handler(route: Route) -> None:
        await action()
        await route.continue_()

    return handler


# ---------------------------------------------------------------- tests


async def test_sign_in_then_a_new_request_appears_live_and_approving_removes_it(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    sockets: list[str] = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    await screen.open()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_label("Operator token")).to_be_focused()
    await screen.shot("sign-in")

    await page.get_by_label("Operator token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#sign-in-error")).to_have_text("This token is not recognised.")
    await expect(page.get_by_label("Operator token")).to_be_focused()

    await screen.sign_in("alice-token")
    await expect(page.get_by_role("heading", name=re.compile("^Pending approvals"))).to_be_focused()
    await expect(page.get_by_text("No approvals are waiting.")).to_be_visible()
    # Kept for this tab only: sessionStorage, never localStorage or a cookie.
    assert await page.evaluate("sessionStorage.getItem('hitl.operatorToken')") == "alice-token"
    assert await page.evaluate("localStorage.length") == 0
    assert await page.context.cookies() == []
    # The stream's token travels in its first message, never in the address (issue 17).
    assert sockets and not any("token" in url for url in sockets)

    first = await propose(stack, http)
    row = screen.row(first)
    await expect(row).to_be_visible()
    for text in ("EUR/USD", "BUY", "1.5 %", "82 %", "rising volume"):
        await expect(row).to_contain_text(text)
    await expect(row).to_contain_text(str(stack.gw.market.mid_price("EUR/USD")).rstrip("0"))
    remaining = row.locator(".remaining")
    await expect(remaining).to_have_text(re.compile(r"^[45]:\d\d$"))
    before = await remaining.text_content()
    await expect(remaining).not_to_have_text(before or "")  # the countdown runs

    second = await propose(
        stack,
        http,
        instrument="BTC-PERP",
        side="SELL",
        risk_pct="0.75",
        confidence="0.64",
        reasoning="Funding turned negative while open interest climbs; fade the squeeze.",
    )
    third = await propose(
        stack,
        http,
        instrument="XAU/USD",
        risk_pct="2",
        confidence="0.9",
        reasoning="Real yields falling; gold holding the weekly breakout.",
    )
    rows = page.locator("#pending-list > li")
    await expect(rows).to_have_count(3)
    # Soonest deadline first: the order in which they were requested.
    assert [await rows.nth(i).get_attribute("data-trade-id") for i in range(3)] == [
        first,
        second,
        third,
    ]
    await expect(page.locator("#pending-count")).to_have_text("(3)")
    await screen.shot("three-pending")

    await screen.button(first, "Approve").click()
    dialog = page.get_by_role("dialog", name="Approve EUR/USD BUY?")
    await expect(dialog).to_be_visible()
    await expect(dialog.get_by_label("Comment (optional)")).to_be_focused()
    await dialog.get_by_label("Comment (optional)").fill("Clean breakout, size is fine.")
    await screen.shot("approve-dialog")
    await dialog.get_by_role("button", name="Confirm approval").click()

    await expect(page.locator("#outcome")).to_contain_text("Approved: EUR/USD BUY was accepted")
    await expect(row).to_have_count(0)
    await expect(dialog).to_be_hidden()
    # Focus stays in the list, on the next approval.
    await expect(screen.button(second, "Approve")).to_be_focused()
    await expect(page.locator("#outcome-list")).to_contain_text("EUR/USD BUY: approved by alice")
    await expect(page.locator("#pending-count")).to_have_text("(2)")
    record = await approval(http, first)
    assert record["status"] == "ACCEPTED"
    assert record["decided_by"] == "alice"
    assert record["decision_channel"] == "WEB"
    assert record["comment"] == "Clean breakout, size is fine."
    path = await screen.shot("approved")
    if os.environ.get("HITL_README_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        README_SCREENSHOT.write_bytes(path.read_bytes())


@pytest.mark.parametrize("screen", ["phone"], indirect=True)
async def test_reject_with_a_reason_by_keyboard_on_a_phone(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    await screen.open()
    await expect(page.get_by_label("Operator token")).to_be_focused()
    await page.keyboard.type("bob-token")
    await page.keyboard.press("Enter")
    await expect(page.locator("#connection")).to_have_text("Live")
    heading = page.get_by_role("heading", name=re.compile("^Pending approvals"))
    await expect(heading).to_be_focused()

    trade_id = await propose(stack, http, side="SELL")
    await expect(screen.row(trade_id)).to_be_visible()
    assert await no_horizontal_scroll(page)
    await screen.shot("phone-pending")

    # From the heading, Tab reaches the entry's buttons in reading order.
    await page.keyboard.press("Tab")
    await expect(screen.button(trade_id, "Approve")).to_be_focused()
    await page.keyboard.press("Tab")
    reject = screen.button(trade_id, "Reject")
    await expect(reject).to_be_focused()
    await expect(reject).to_have_accessible_name("Reject EUR/USD SELL")

    # Escape backs out and puts the focus back where it was.
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Reject EUR/USD SELL?")
    await expect(dialog).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(reject).to_be_focused()

    await page.keyboard.press("Enter")
    reason = dialog.get_by_label("Reason (required)")
    await expect(reason).to_be_focused()
    # A rejection needs a reason: confirming without one is refused in place.
    await page.keyboard.press("Tab")
    await expect(dialog.get_by_role("button", name="Confirm rejection")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(dialog.get_by_text("Give a reason for the rejection.")).to_be_visible()
    await expect(reason).to_be_focused()
    await expect(reason).to_have_attribute("aria-invalid", "true")
    await page.keyboard.type("Payrolls in ten minutes; no new risk.")
    await screen.shot("phone-reject-dialog")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")

    await expect(page.locator("#outcome")).to_contain_text("Rejected: EUR/USD SELL")
    await expect(screen.row(trade_id)).to_have_count(0)
    await expect(heading).to_be_focused()  # the list is empty: back to its heading
    assert await no_horizontal_scroll(page)
    await screen.shot("phone-rejected")
    record = await approval(http, trade_id)
    assert record["status"] == "REJECTED"
    assert record["decided_by"] == "bob"
    assert record["decision_channel"] == "WEB"
    assert record["comment"] == "Payrolls in ten minutes; no new risk."


async def test_already_decided_and_slippage_outcomes_are_shown_plainly(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    await screen.open()
    await screen.sign_in("alice-token")
    raced, slipped, watched = [await propose(stack, http) for _ in range(3)]
    await expect(page.locator("#pending-list > li")).to_have_count(3)

    # Bob's decision reaches the server first; Alice's then gets 409 SEC-012 naming him.
    await page.route(
        f"**/approvals/{raced}/approve", hold_until(lambda: decide(http, raced, "reject", "bob"))
    )
    await screen.button(raced, "Approve").click()
    await page.get_by_role("button", name="Confirm approval").click()
    outcome = page.locator("#outcome")
    await expect(outcome).to_contain_text("already decided by bob")
    await expect(outcome).to_have_attribute("data-kind", "error")
    await expect(screen.row(raced)).to_have_count(0)
    await screen.shot("already-decided")

    # The market moved 2 % (the limit is 0.5 %): the approval ends as a rejection.
    mid = stack.gw.market.mid_price("EUR/USD")
    stack.gw.market.set_price("EUR/USD", mid * Decimal("1.02"))
    try:
        await screen.button(slipped, "Approve").click()
        await page.get_by_role("button", name="Confirm approval").click()
        await expect(outcome).to_contain_text("moved beyond the slippage limit")
        await expect(outcome).to_contain_text("now rejected")
    finally:
        stack.gw.market.set_price("EUR/USD", mid)
    await expect(screen.row(slipped)).to_have_count(0)
    assert (await approval(http, slipped))["decision_reason"] == "SLIPPAGE_EXCEEDED"
    await screen.shot("slippage")

    # Decided elsewhere while the dialog is open: it says so at once and cannot be confirmed.
    await screen.button(watched, "Reject").click()
    dialog = page.get_by_role("dialog")
    await dialog.get_by_label("Reason (required)").fill("Too late in the session.")
    await decide(http, watched, "approve", "bob")
    await expect(dialog).to_contain_text("already decided by bob")
    await expect(dialog.get_by_role("button", name="Confirm rejection")).to_be_disabled()
    await expect(dialog.get_by_role("button", name="Close")).to_be_focused()
    await screen.shot("decided-while-open")
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("heading", name=re.compile("^Pending approvals"))).to_be_focused()
    await expect(page.locator("#outcome-list")).to_contain_text("approved by bob")
    assert (await approval(http, watched))["decided_by"] == "bob"


@pytest.mark.parametrize("stack", [5], indirect=True, ids=["deadline-5s"])
async def test_an_expiry_removes_the_row(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    await screen.open()
    await screen.sign_in("alice-token")
    trade_id = await propose(stack, http)
    row = screen.row(trade_id)
    await expect(row).to_be_visible()
    await expect(row.locator(".remaining")).to_have_text(re.compile(r"^0:0[0-5]$"))
    await screen.shot("about-to-expire")
    await expect(row).to_have_count(0, timeout=20_000)
    await expect(page.locator("#outcome-list")).to_contain_text(
        "EUR/USD BUY: expired without a decision"
    )
    await expect(page.get_by_text("No approvals are waiting.")).to_be_visible()
    await screen.shot("expired")
    assert (await approval(http, trade_id))["decision_reason"] == "HITL_TIMEOUT"


async def test_the_stream_resumes_after_a_dropped_connection_and_misses_nothing(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    connections: list[WebSocketRoute] = []
    release = asyncio.Event()

    async def through(ws: WebSocketRoute) -> None:
        connections.append(ws)
        if len(connections) > 1:
            await release.wait()  # keep the page offline while things happen
        ws.connect_to_server()

    await page.route_web_socket(re.compile(r"/ws/hitl"), through)
    await screen.open()
    await screen.sign_in("alice-token")
    seen = await propose(stack, http)
    await expect(screen.row(seen)).to_be_visible()

    await connections[0].close()
    await expect(page.locator("#connection")).to_have_text("Reconnecting…")
    await wait_until(lambda: len(connections) == 2)
    missed = await propose(stack, http, instrument="GBP/USD")
    await decide(http, seen, "reject", "bob")
    release.set()

    await expect(page.locator("#connection")).to_have_text("Live")
    assert "after=" in connections[1].url
    await expect(screen.row(missed)).to_be_visible()
    await expect(screen.row(seen)).to_have_count(0)
    # Only the resumed stream carries the decision made while offline.
    await expect(page.locator("#outcome-list")).to_contain_text("rejected by bob")
    await screen.shot("resumed")


async def test_a_guardian_lock_disables_decisions(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    await screen.open()
    await screen.sign_in("alice-token")
    trade_id = await propose(stack, http)
    # The operator is about to approve when the Guardian locks.
    await screen.button(trade_id, "Approve").click()
    dialog = page.get_by_role("dialog", name="Approve EUR/USD BUY?")
    confirm = dialog.get_by_role("button", name="Confirm approval")
    await expect(confirm).to_be_enabled()

    response = await http.post(
        "/api/guardian/lock", json={"reason": "Drawdown limit reached"}, headers=auth("admin")
    )
    assert response.status_code == 200, response.text
    await expect(confirm).to_be_disabled()
    await expect(dialog).to_contain_text("Guardian")
    banner = page.get_by_role("alert").filter(has_text="Guardian locked")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Drawdown limit reached")
    await expect(banner).to_contain_text("Locked by admin")
    # The lock rejected what was pending; nothing anywhere can start a decision.
    await expect(page.locator("#outcome-list")).to_contain_text("the Guardian locked trading")
    await expect(page.locator("button[data-action]:enabled")).to_have_count(0)
    await screen.shot("locked")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()

    response = await http.post("/api/guardian/unlock", headers=auth("admin"))
    assert response.status_code == 200, response.text
    await expect(banner).to_be_hidden()
    after = await propose(stack, http)
    await expect(screen.button(after, "Approve")).to_be_enabled()
    await screen.shot("unlocked")


async def issue_deep_link(http: httpx.AsyncClient, trade_id: str, stack: Served) -> str:
    """A one-time link token for ``trade_id``, issued as the Discord notification issues them."""
    # Imported here: until the deep-link feature lands, only this (xfail) test should notice.
    from activities.deep_links import issue_deep_link as issue

    record = await approval(http, trade_id)
    return await issue(
        stack.gw.sessions,
        trade_id=uuid.UUID(trade_id),
        expires_at=datetime.now(UTC) + timedelta(minutes=10),
        correlation_id=record["correlation_id"],
    )


async def test_a_deep_link_lands_on_its_approval(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    unknown = await http.post("/api/hitl/deep-links/not-a-link")
    assert unknown.status_code == 403, unknown.text
    assert unknown.json()["error_code"] == "SEC-091"
    trade_id = await propose(
        stack, http, instrument="ETH-PERP", reasoning="Range low retest with bullish divergence."
    )
    token = await issue_deep_link(http, trade_id, stack)

    await screen.open(f"/approvals/{trade_id}?token={token}")
    focus = page.locator("#focus")
    await expect(page.get_by_role("heading", name="Approval from your link")).to_be_focused()
    await expect(focus).to_contain_text("ETH-PERP")
    await expect(focus).to_contain_text("bullish divergence")
    await expect(focus).to_contain_text("Read only: sign in below to decide.")
    await expect(focus.get_by_role("button", name=re.compile("^Approve"))).to_be_disabled()
    # The one-time token leaves the address bar at once.
    assert page.url == f"{stack.base_url}/approvals/{trade_id}"
    await screen.shot("deep-link-read-only")

    await screen.sign_in("alice-token")
    await expect(page.get_by_role("heading", name="Approval from your link")).to_be_focused()
    approve = focus.get_by_role("button", name=re.compile("^Approve"))
    await expect(approve).to_be_enabled()
    await approve.click()
    await page.get_by_role("dialog").get_by_role("button", name="Confirm approval").click()
    await expect(page.locator("#outcome")).to_contain_text("Approved: ETH-PERP BUY")
    await expect(focus).to_contain_text("Decided: approved by alice.")
    await expect(screen.row(trade_id)).to_have_count(0)
    await screen.shot("deep-link-approved")

    # A link works once.
    again = await http.post(f"/api/hitl/deep-links/{token}")
    assert again.status_code == 403
    assert again.json()["error_code"] == "SEC-091"


async def test_each_pending_approval_shows_the_market_now_refreshed_and_marked_beyond_the_limit(
    screen: Screen, stack: Served, http: httpx.AsyncClient
) -> None:
    page = screen.page
    asked: list[float] = []
    loop = asyncio.get_running_loop()
    page.on(
        "request",
        lambda request: asked.append(loop.time()) if "/pending/previews" in request.url else None,
    )
    await screen.open()
    await screen.sign_in("alice-token")
    # The first EUR/USD proposal sets the paper market's price; the second is priced 2 % under
    # it, four times the 0.5 % limit.
    fresh = await propose(stack, http)
    mid = stack.gw.market.mid_price("EUR/USD")
    stale_id = str(uuid.uuid4())
    response = await http.post(
        "/api/hitl/requests",
        json={
            "trade_id": stale_id,
            "instrument": "EUR/USD",
            "side": "BUY",
            "risk_pct": "1",
            "confidence": "0.7",
            "request_price": str((mid * Decimal("0.98")).quantize(Decimal("0.00000001"))),
            "reasoning_summary": "An old signal, priced before the move.",
        },
        headers=auth("bot-1"),
    )
    assert response.status_code == 201, response.text

    fresh_row, stale_row = screen.row(fresh), screen.row(stale_id)
    # Within the limit: the price now and a small signed deviation, nothing marked.
    await expect(fresh_row.locator(".market")).to_have_text(
        re.compile(r"^\d+(\.\d+)? \([+-]0\.\d\d %\)$")
    )
    await expect(fresh_row.locator(".slippage-warning")).to_be_hidden()
    await expect(fresh_row.locator("article")).not_to_have_class(re.compile(r"\bexceeds\b"))
    # Beyond it: marked, and said in words.
    await expect(stale_row.locator(".market")).to_have_text(
        re.compile(r"^\d+(\.\d+)? \(\+2\.\d\d %\)$")
    )
    warning = stale_row.locator(".slippage-warning")
    await expect(warning).to_be_visible()
    await expect(warning).to_contain_text("beyond the 0.5 % slippage limit")
    await expect(stale_row.locator("article")).to_have_class(re.compile(r"\bexceeds\b"))
    await screen.shot("previews")

    # The approval dialog says it too, before the operator confirms.
    await screen.button(stale_id, "Approve").click()
    dialog = page.get_by_role("dialog", name="Approve EUR/USD BUY?")
    await expect(dialog).to_contain_text("beyond the 0.5 % limit")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()

    # Live: the page keeps asking while approvals wait (every 3 s), not once.
    first = len(asked)
    await wait_until(lambda: len(asked) >= first + 2, timeout=15)
    # A decided approval leaves the list, and with it its preview.
    await decide(http, stale_id, "reject", "bob")
    await expect(stale_row).to_have_count(0)
    await expect(fresh_row.locator(".market")).to_have_attribute("data-state", "ok")
