"""Four eyes in Discord (issue 17 item 2): the approval message says ``1 of 2 approvals`` with
the first approver and keeps its buttons for the second; once accepted it names both.

The real discord.py code against the local fake of Discord, the dev server and SQLite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from hitl.errors import ErrorCode
from hitl.messages import DecisionCommand
from hitl.models import DecisionChannel
from tests.discord.fake_discord import FakeDiscord
from tests.discord.test_discord import ALICE, BOB, Rig, fields, running_rig
from tests.temporal_fixtures import wait_until

# make_proposal asks 1.5 % risk: above this, two operators must approve.
THRESHOLD = Decimal("1.0")


@pytest.fixture
async def rig4(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    fake: FakeDiscord,
) -> AsyncIterator[Rig]:
    async with running_rig(dev_env, sqlite_sessions, fake, four_eyes_risk_pct=THRESHOLD) as r:
        yield r


async def test_two_clicks_by_two_operators_accept_and_the_message_shows_both(rig4: Rig) -> None:
    approval, message = await rig4.request()
    message_id = int(message["id"])
    approve_id = f"hitl:approve:{approval.trade_id}"

    first = rig4.click(message, approve_id, ALICE)
    answer = await rig4.answer(first)
    assert answer["content"].startswith("Approved (1 of 2 approvals (alice))")
    await wait_until(lambda: "1 of 2 approvals" in rig4.fake.messages[message_id]["content"])
    shown = rig4.fake.messages[message_id]
    assert "1 of 2 approvals (alice)" in shown["content"]
    assert "second, different operator" in shown["content"]
    assert (
        len(shown["components"]) == 1 and shown["embeds"][0]["url"] == message["embeds"][0]["url"]
    )
    assert (await rig4.stored(approval)).approvers == ["alice"]

    again = rig4.click(shown, approve_id, ALICE)
    assert ErrorCode.SAME_APPROVER.code in (await rig4.answer(again))["content"]
    row = await rig4.stored(approval)
    assert (row.status, row.approvers) == ("AWAITING_APPROVAL", ["alice"])

    second = rig4.click(rig4.fake.messages[message_id], approve_id, BOB)
    assert (await rig4.answer(second))["content"].startswith("Approved:")
    await wait_until(lambda: rig4.fake.messages[message_id]["components"] == [])
    shown = rig4.fake.messages[message_id]
    assert shown["embeds"][0]["title"] == "ACCEPTED: BUY EUR/USD"
    assert fields(shown)["Decided by"] == "bob via DISCORD"
    assert fields(shown)["Approvals"] == "2 of 2 approvals (alice, bob)"
    row = await rig4.stored(approval)
    assert (row.status, row.approvers) == ("ACCEPTED", ["alice", "bob"])


async def test_a_first_approval_on_the_page_is_shown_on_the_message(rig4: Rig) -> None:
    approval, message = await rig4.request()
    message_id = int(message["id"])
    first = await rig4.approvals.approval(approval.trade_id).approve(
        DecisionCommand(
            operator_id="alice", channel=DecisionChannel.WEB, correlation_id="corr-page"
        )
    )
    assert first.approvers == ("alice",) and not first.is_decided
    # The worker's notice edits the text only: embed, deep link and buttons stay.
    await wait_until(lambda: "1 of 2 approvals" in rig4.fake.messages[message_id]["content"])
    shown = rig4.fake.messages[message_id]
    assert "1 of 2 approvals (alice)" in shown["content"]
    assert shown["components"] == message["components"]
    assert shown["embeds"] == message["embeds"]
