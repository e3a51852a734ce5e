"""Refreshes ``docs/screenshots/temporal-ui.png``: the Temporal UI's list of approvals with the
columns an operator adds (the HITL search attributes).

Run it against a running gateway (``hitl run``, which registers the attributes), after proposing
and deciding a few trades::

    python -m tests.workflows.screenshot_temporal_ui http://127.0.0.1:8233

It drives Debian's Chromium headless with the browser tests' flags; it only reads.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from urllib.parse import quote

from playwright.async_api import async_playwright

from tests.e2e.test_operator_page import CHROMIUM, CHROMIUM_ARGS

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "temporal-ui.png"
REMOVED = ("Run ID", "Type", "Start", "End")
ADDED = (
    "HitlStatus",
    "HitlInstrument",
    "HitlSide",
    "HitlRiskPct",
    "HitlExpiresAt",
    "HitlDecidedBy",
)
QUERY = "WorkflowType = 'ApprovalWorkflow'"


async def _shoot(ui_url: str) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        page = await browser.new_page(viewport={"width": 1900, "height": 600})
        await page.goto(f"{ui_url.rstrip('/')}/namespaces/default/workflows?query={quote(QUERY)}")
        await page.get_by_test_id("workflows-summary-table-configuration-button").click()
        for name in REMOVED:
            await page.get_by_test_id(f"orderable-list-item-{name}-remove-button").click()
        for name in ADDED:
            await page.get_by_test_id(f"orderable-list-item-{name}-add-button").click()
        await page.get_by_test_id("drawer-close-button").click()
        await page.get_by_role("columnheader", name="HitlStatus").wait_for()
        await page.wait_for_timeout(1000)  # the drawer's closing animation
        await page.screenshot(path=str(SCREENSHOT))
        await browser.close()


if __name__ == "__main__":
    asyncio.run(_shoot(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8233"))
