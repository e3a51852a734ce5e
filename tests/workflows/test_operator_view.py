"""What operators see of approvals in Temporal (issue 18 items 1, 2, 7): search attributes after
each kind of change, list queries, summaries and details, and reminders on durable timers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle
from temporalio.common import TypedSearchAttributes
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.notifications import NotificationActivities
from hitl.errors import ConfigurationError
from hitl.messages import GuardianCommand, LifecycleCommand, ReminderInput, ReminderKind
from hitl.models import ApprovalRequest, Side, TradeProposal, TradeStatus
from hitl.settings import get_settings, load_settings
from store.tables import AuditRow, EventRow
from tests.temporal_fixtures import (
    BIN,
    DEV_SERVER_PRAGMAS,
    Gateway,
    RecordingNotifier,
    make_proposal,
    start_gateway,
    wait_until,
)
from tests.workflows.test_approval_paths import audits, command, events
from workflows import search_attributes as sa
from workflows.client import GuardianClient
from workflows.codec import ENCODING
from workflows.connection import gateway_data_converter

# --- helpers ---------------------------------------------------------------------------------


async def attributes(client: Client, workflow_id: str) -> TypedSearchAttributes:
    """The search attributes the server holds for the workflow now."""
    return (await client.get_workflow_handle(workflow_id).describe()).typed_search_attributes


async def wait_for_attribute(
    client: Client, workflow_id: str, key: Any, value: Any, *, timeout: float = 10.0
) -> TypedSearchAttributes:
    """Wait until the workflow's attribute ``key`` reads ``value``; return them all."""
    found: list[TypedSearchAttributes] = []

    async def matches() -> bool:
        found[:] = [await attributes(client, workflow_id)]
        return bool(found[0].get(key) == value)

    await wait_until(matches, timeout=timeout)
    return found[0]


async def listed(client: Client, query: str) -> list[str]:
    """Workflow ids the visibility query finds."""
    return [execution.id async for execution in client.list_workflows(query)]


async def current_details(handle: WorkflowHandle[Any, Any]) -> str:
    """The workflow's current details, as the UI reads them (the built-in metadata query)."""
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return str(metadata.current_details)


def proposal_for(instrument: str, side: Side = Side.BUY, price: str = "1.1612") -> TradeProposal:
    """A proposal at ``price`` (the paper market anchors on a first proposal's price)."""
    return TradeProposal(
        trade_id=uuid.uuid4(),
        instrument=instrument,
        side=side,
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.82"),
        request_price=Decimal(price),
        reasoning_summary="Breakout [click](http://evil.test) *now*",
        correlation_id=f"corr-{uuid.uuid4().hex[:12]}",
    )


# --- search attributes, summaries and details on the dev server -------------------------------


async def test_search_attributes_follow_request_decision_and_lifecycle(gateway: Gateway) -> None:
    gw = gateway
    client = gw.env.client
    bot = f"bot-{uuid.uuid4().hex[:8]}"  # scopes the list queries to this test's approvals
    proposal = make_proposal(gw.market)
    handle = await gw.client.request_approval(proposal, requested_by=bot)
    approval = await handle.recorded()

    found = await wait_for_attribute(client, handle.workflow_id, sa.EXPIRES_AT, approval.expires_at)
    assert found.get(sa.STATUS) == "AWAITING_APPROVAL"
    assert found.get(sa.INSTRUMENT) == "EUR/USD"
    assert found.get(sa.SIDE) == "BUY"
    assert found.get(sa.RISK_PCT) == 1.5
    assert found.get(sa.REQUESTED_BY) == bot
    assert found.get(sa.DECIDED_BY) is None

    await handle.approve(command("alice"))
    found = await wait_for_attribute(client, handle.workflow_id, sa.STATUS, "ACCEPTED")
    assert found.get(sa.DECIDED_BY) == "alice"
    assert "**ACCEPTED** · OPERATOR_APPROVED · by alice via API" in await current_details(
        client.get_workflow_handle(handle.workflow_id)
    )

    await handle.advance(
        LifecycleCommand(target=TradeStatus.FILLED, reported_by=bot, correlation_id="c")
    )
    found = await wait_for_attribute(client, handle.workflow_id, sa.STATUS, "FILLED")
    assert found.get(sa.DECIDED_BY) == "alice"  # lifecycle moves keep who decided


async def test_a_list_query_finds_exactly_the_matching_approvals_within_seconds(
    gateway: Gateway,
) -> None:
    gw = gateway
    client = gw.env.client
    bot = f"bot-{uuid.uuid4().hex[:8]}"
    gw.market.set_price("GBP/USD", Decimal("1.2710"))
    cases = [
        ("EUR/USD", "alice", True),  # the one the query asks for
        ("EUR/USD", "bob", True),
        ("GBP/USD", "alice", True),
        ("EUR/USD", "alice", False),  # rejected
    ]
    ids: list[str] = []
    for instrument, operator, approve in cases:
        handle = await gw.client.request_approval(
            make_proposal(gw.market, instrument), requested_by=bot
        )
        decide = handle.approve if approve else handle.reject
        await decide(command(operator))
        ids.append(handle.workflow_id)
    decided_at = asyncio.get_running_loop().time()

    query = (
        "HitlStatus = 'ACCEPTED' AND HitlInstrument = 'EUR/USD' AND HitlDecidedBy = 'alice'"
        f" AND HitlRequestedBy = '{bot}'"
    )
    # Found in well under a second on an idle machine; the bound leaves room for a loaded
    # 2-core CI runner shared with other suites.
    await wait_until(lambda: _lists(client, query, [ids[0]]), timeout=10.0, interval=0.1)
    lag = asyncio.get_running_loop().time() - decided_at
    assert lag < 5.0, f"the list query found the decision {lag:.1f} s after it"
    assert sorted(await listed(client, f"HitlRequestedBy = '{bot}'")) == sorted(ids)
    assert await listed(client, f"HitlStatus = 'REJECTED' AND HitlRequestedBy = '{bot}'") == [
        ids[3]
    ]


async def _lists(client: Client, query: str, expected: list[str]) -> bool:
    return await listed(client, query) == expected


async def test_summary_and_details_are_shown_and_encrypted_while_attributes_stay_readable(
    gateway: Gateway,
) -> None:
    gw = gateway
    client = gw.env.client
    gw.market.set_price("XAU/USD", Decimal("2650.50"))
    proposal = proposal_for("XAU/USD", Side.SELL, "2650.50")
    handle = await gw.client.request_approval(proposal, requested_by="bot-1")
    approval = await handle.recorded()
    wf = client.get_workflow_handle(handle.workflow_id)
    description = await wf.describe()

    summary = await description.static_summary()
    assert summary is not None
    assert summary.startswith("SELL XAU/USD · risk 1.5 % · 2650.50 · expires ")
    assert summary.endswith("Z")
    details = await description.static_details()
    assert details is not None
    # The bot's text is shown as typed: its markdown link is no link in the UI.
    assert r"Breakout \[click\]\(http://evil\.test\) \*now\*" in details
    assert "**Confidence:** 82 %" in details
    assert f"`{proposal.correlation_id}`" in details
    hub = get_settings().hitl.hub_url.rstrip("/")
    assert f"({hub}/approvals/{proposal.trade_id})" in details

    # The UI reads summaries through the codec endpoint; attributes must stay indexable.
    metadata = description.raw_description.execution_config.user_metadata
    assert metadata.summary.metadata["encoding"] == ENCODING
    assert metadata.details.metadata["encoding"] == ENCODING
    raw = description.raw_description.workflow_execution_info.search_attributes.indexed_fields
    assert raw["HitlInstrument"].metadata["encoding"] == b"json/plain"
    assert raw["HitlInstrument"].data == b'"XAU/USD"'

    assert f"**AWAITING_APPROVAL** · expires {approval.expires_at:%H:%M:%S}Z" in (
        await current_details(wf)
    )

    await handle.reject(command("bob", comment="too *late*"))
    history = await wf.fetch_history()
    summaries: list[str] = []
    for event in history.events:
        if event.user_metadata.HasField("summary"):
            (text,) = await client.data_converter.decode([event.user_metadata.summary])
            summaries.append(text)
    assert "deadline" in summaries  # the deadline timer
    assert "admit and record the request" in summaries
    assert "record REJECTED (OPERATOR_REJECTED)" in summaries
    # No notification activity: the request's notice is queued with it (issue 19).
    assert "approval requested" not in summaries
    details_now = await current_details(wf)
    assert "**REJECTED** · OPERATOR_REJECTED · by bob via API" in details_now
    assert r"too \*late\*" in details_now


async def test_attributes_are_registered_by_the_client_when_the_server_lacks_them(
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    # A dev server started without them (as the benchmark's and other rigs' are).
    env = await WorkflowEnvironment.start_local(
        data_converter=gateway_data_converter(get_settings()),
        dev_server_existing_path=str(BIN / "temporal"),
        dev_server_extra_args=DEV_SERVER_PRAGMAS,
    )
    try:
        gw = await start_gateway(env, sqlite_sessions)
        async with gw.worker:
            handle = await gw.client.request_approval(
                make_proposal(gw.market), requested_by="bot-1"
            )
            approval = await handle.recorded()
            found = await wait_for_attribute(
                env.client, handle.workflow_id, sa.EXPIRES_AT, approval.expires_at
            )
            assert found.get(sa.STATUS) == "AWAITING_APPROVAL"
            # Now registered: nothing more to add.
            assert await sa.ensure_registered(env.client) == []
    finally:
        await env.shutdown()
    assert sa.dev_server_args()[:2] == ["--search-attribute", "HitlStatus=Keyword"]
    assert set(sa.cli_specs()) == {
        "HitlStatus=Keyword",
        "HitlInstrument=Keyword",
        "HitlSide=Keyword",
        "HitlRiskPct=Double",
        "HitlExpiresAt=Datetime",
        "HitlDecidedBy=Keyword",
        "HitlRequestedBy=Keyword",
    }


# --- expiry, Guardian and reminders on the time-skipping server --------------------------------


@pytest.fixture
async def reminding(
    skipping_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Gateway]:
    """A gateway whose policy reminds at 50 % and escalates at 80 % of a 300 s window."""
    gw = await start_gateway(
        skipping_env,
        sqlite_sessions,
        remind_at_percent=Decimal(50),
        escalate_at_percent=Decimal(80),
    )
    async with gw.worker:
        yield gw


def kinds(notifier: RecordingNotifier) -> list[ReminderKind]:
    return [kind for kind, _ in notifier.reminders]


async def test_reminder_then_escalation_fire_once_each_then_the_expiry(
    reminding: Gateway,
) -> None:
    gw = reminding
    client = gw.env.client
    proposal = make_proposal(gw.market)
    handle = await gw.client.request_approval(proposal, requested_by="bot-1")
    await handle.recorded()
    wf = client.get_workflow_handle(handle.workflow_id, result_type=ApprovalRequest)

    await gw.env.sleep(100)
    assert kinds(gw.notifier) == []
    await gw.env.sleep(60)  # 160 s: past 50 %
    await wait_until(lambda: kinds(gw.notifier) == [ReminderKind.REMINDER])
    assert "Operators reminded" in await current_details(wf)
    await gw.env.sleep(90)  # 250 s: past 80 %
    await wait_until(lambda: len(gw.notifier.reminders) == 2)
    assert kinds(gw.notifier) == [ReminderKind.REMINDER, ReminderKind.ESCALATION]
    assert "Operators reminded, then escalated" in await current_details(wf)
    assert all(a.status is TradeStatus.AWAITING_APPROVAL for _, a in gw.notifier.reminders)

    await gw.env.sleep(100)  # past the deadline
    final = await wf.result()
    assert final.status is TradeStatus.REJECTED
    assert kinds(gw.notifier) == [ReminderKind.REMINDER, ReminderKind.ESCALATION]
    assert await events(gw, proposal.trade_id) == [
        "hitl.created",
        "hitl.reminded",
        "hitl.escalated",
        "hitl.expired",
    ]
    trail = [(a.action, a.payload) for a in await audits(gw, proposal.trade_id)]
    assert ("approval.reminder", {"at_percent": "50", "due_at": _due(final, 50)}) in trail
    assert ("approval.escalation", {"at_percent": "80", "due_at": _due(final, 80)}) in trail
    found = await attributes(client, handle.workflow_id)
    assert (found.get(sa.STATUS), found.get(sa.DECIDED_BY)) == ("REJECTED", "system")

    # The timers carried their summaries.
    history = await wf.fetch_history()
    timers = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            (text,) = await client.data_converter.decode([event.user_metadata.summary])
            timers.append(text)
    assert sorted(timers) == [
        "deadline",
        "escalation at 80 % of the window",
        "reminder at 50 % of the window",
    ]


def _due(approval: ApprovalRequest, percent: int) -> str:
    window = approval.expires_at - approval.requested_at
    return (approval.requested_at + window * (percent / 100)).isoformat()


async def test_no_reminder_after_a_decision(reminding: Gateway) -> None:
    gw = reminding
    # Decided before the reminder: neither fires.
    early = await gw.client.request_approval(make_proposal(gw.market), requested_by="bot-1")
    await early.recorded()
    await early.approve(command("alice"))
    # Reminded, then decided before the escalation: the escalation never fires.
    late_proposal = make_proposal(gw.market)
    late = await gw.client.request_approval(late_proposal, requested_by="bot-1")
    await late.recorded()
    await gw.env.sleep(160)
    await wait_until(lambda: len(gw.notifier.reminders) == 1)
    await late.reject(command("bob"))
    await gw.env.sleep(600)
    assert [(k, a.trade_id) for k, a in gw.notifier.reminders] == [
        (ReminderKind.REMINDER, late_proposal.trade_id)
    ]
    assert await events(gw, late_proposal.trade_id) == [
        "hitl.created",
        "hitl.reminded",
        "hitl.decided",
    ]


async def test_a_reminder_that_keeps_failing_holds_the_escalation_behind_it(
    reminding: Gateway,
) -> None:
    """Operators are reminded before they are escalated to: while the reminder's send is being
    retried (the notifier down), the escalation's point passes and its send waits for the
    reminder's; then both go, in order. (A run of ``APPROVAL_V8`` waits on the escalation's
    timer while the reminder is retried, where older runs sent both from one task.)"""
    gw = reminding
    recorded = gw.notifier.approval_reminder
    down = True

    async def flaky(approval: ApprovalRequest, kind: ReminderKind) -> None:
        if down and kind is ReminderKind.REMINDER:
            raise ConnectionError("notifier down")
        await recorded(approval, kind)

    gw.notifier.approval_reminder = flaky  # type: ignore[method-assign]
    handle = await gw.client.request_approval(make_proposal(gw.market), requested_by="bot-1")
    await handle.recorded()
    wf = gw.env.client.get_workflow_handle(handle.workflow_id, result_type=ApprovalRequest)
    await gw.env.sleep(160)  # past 50 %: the reminder fails and is retried
    await gw.env.sleep(90)  # past 80 %: the escalation is due
    await asyncio.sleep(0.5)
    assert kinds(gw.notifier) == []
    down = False
    await gw.env.sleep(40)  # the reminder's next retry goes through, then the escalation
    await wait_until(lambda: len(gw.notifier.reminders) == 2)
    assert kinds(gw.notifier) == [ReminderKind.REMINDER, ReminderKind.ESCALATION]
    assert "Operators reminded, then escalated" in await current_details(wf)
    # Ended before the worker stops (an activity left behind keeps the shared test server
    # from skipping time for the tests after this one).
    await gw.env.sleep(60)
    assert (await wf.result()).status is TradeStatus.REJECTED


async def test_guardian_rejection_shows_and_stops_reminders(reminding: Gateway) -> None:
    gw = reminding
    handle = await gw.client.request_approval(make_proposal(gw.market), requested_by="bot-1")
    await handle.recorded()
    guardian = GuardianClient(gw.env.client, task_queue=gw.task_queue)
    await guardian.lock(GuardianCommand(reason="drawdown", by="admin", correlation_id="c"))
    try:
        found = await wait_for_attribute(gw.env.client, handle.workflow_id, sa.STATUS, "REJECTED")
        assert found.get(sa.DECIDED_BY) == "system"
        await gw.env.sleep(600)
        assert gw.notifier.reminders == []
    finally:
        await guardian.unlock(GuardianCommand(by="admin", correlation_id="c"))


async def test_hitl_disabled_is_searchable_as_accepted(
    skipping_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    gw = await start_gateway(skipping_env, sqlite_sessions, enabled=False)
    async with gw.worker:
        handle = await gw.client.request_approval(make_proposal(gw.market), requested_by="bot-1")
        await handle.outcome()
        found = await wait_for_attribute(gw.env.client, handle.workflow_id, sa.STATUS, "ACCEPTED")
        assert found.get(sa.DECIDED_BY) == "system"


# --- the reminder activity -----------------------------------------------------------------


async def test_a_retried_reminder_is_recorded_once(
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    # An approval row is not needed: the notice is an audit entry and an event about it.
    approval = ApprovalRequest.from_proposal(
        proposal_for("EUR/USD"),
        requested_at=datetime.now(UTC),
        expires_at=datetime.now(UTC) + timedelta(seconds=300),
    )
    notifier = RecordingNotifier()
    activities = NotificationActivities(notifier, sqlite_sessions)
    data = ReminderInput(
        approval=approval,
        kind=ReminderKind.ESCALATION,
        at_percent=Decimal(80),
        due_at=approval.requested_at + timedelta(seconds=240),
    )
    env = ActivityEnvironment()
    await env.run(activities.notify_approval_reminder, data)
    await env.run(activities.notify_approval_reminder, data)  # Temporal's retry
    async with sqlite_sessions() as session:
        rows = await session.execute(
            select(AuditRow.action).where(AuditRow.target_id == str(approval.trade_id))
        )
        assert list(rows.scalars()) == ["approval.escalation"]
        kinds_published = await session.execute(
            select(EventRow.event_type).where(EventRow.trade_id == approval.trade_id)
        )
        assert list(kinds_published.scalars()) == ["hitl.escalated"]
    # The message itself is the notifier's to send once (Discord keys it: tests/discord).
    assert [kind for kind, _ in notifier.reminders] == [ReminderKind.ESCALATION] * 2


def test_the_compose_stack_registers_exactly_these_attributes() -> None:
    compose = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
    setup = compose["services"]["temporal-search-attributes"]
    specs = setup["command"][0].split(" do ")[0].removeprefix("for spec in ").rstrip(";")
    assert specs.split() == sa.cli_specs()
    for name in ("api", "worker", "discord-bot"):
        waits = compose["services"][name]["depends_on"]["temporal-search-attributes"]
        assert waits == {"condition": "service_completed_successfully"}


def test_reminder_points_are_percentages_of_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HITL_ALLOWED_OPERATORS", "alice")
    monkeypatch.setenv("HITL_REMIND_AT", "30%")
    monkeypatch.setenv("HITL_ESCALATE_AT", "0")
    settings = load_settings()
    policy = settings.policy()
    assert (policy.remind_at_percent, policy.escalate_at_percent) == (Decimal(30), Decimal(0))
    monkeypatch.setenv("HITL_REMIND_AT", "100")
    with pytest.raises(ConfigurationError, match="HITL_REMIND_AT"):
        load_settings()
