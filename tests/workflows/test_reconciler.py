"""Reconciliation through its public surfaces: the Temporal dev server (real workflows terminated,
failed, timed out or never started), the real activities and a real database."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Worker

from activities.reconcile import (
    FindingKind,
    ReconcileActivities,
    ReconcileInput,
    ReconcileReport,
    WorkflowState,
    plan,
    reconciler_workflow_id,
    trade_id_of,
)
from hitl.messages import (
    ApprovalWorkflowInput,
    DecisionCommand,
    RecordRequestInput,
    workflow_id_for,
)
from hitl.models import (
    ApprovalRequest,
    DecisionChannel,
    DecisionReason,
    TradeStatus,
)
from store.approvals import record_request
from store.engine import session_factory
from store.reconcile import OpenRow
from tests.temporal_fixtures import Gateway, make_proposal, start_gateway, wait_until
from tests.workflows.test_approval_paths import audits, events, requested, stored
from worker import activities_for
from workflows.approval import ApprovalWorkflow
from workflows.reconciler import ReconcileNow, ReconcilerInput, ReconcilerWorkflow


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def gw(dev_env: WorkflowEnvironment, sqlite_sessions: object) -> AsyncIterator[Gateway]:
    gateway = await start_gateway(dev_env, sqlite_sessions)  # type: ignore[arg-type]
    async with gateway.worker:
        yield gateway
        await _terminate(gateway.env.client, reconciler_workflow_id(gateway.task_queue))


async def _terminate(client: Client, workflow_id: str) -> None:
    with contextlib.suppress(RPCError):  # already ended
        await client.get_workflow_handle(workflow_id).terminate("test over")


async def reconcile(gw: Gateway, *, grace: int = 60) -> ReconcileReport:
    """A fresh pass through the reconciler workflow, as a starting worker asks for one."""
    handle: WorkflowHandle[ReconcilerWorkflow, None] = await gw.env.client.start_workflow(
        ReconcilerWorkflow.run,
        ReconcilerInput(
            task_queue=gw.task_queue, interval_seconds=3600, orphan_grace_seconds=grace
        ),
        id=reconciler_workflow_id(gw.task_queue),
        task_queue=gw.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    return await handle.execute_update(ReconcilerWorkflow.reconcile_now, ReconcileNow())


def _approve() -> DecisionCommand:
    return DecisionCommand(
        operator_id="alice", channel=DecisionChannel.API, correlation_id="corr-approve"
    )


# --- workflows that end on their own -------------------------------------------------------------


@workflow.defn(name="ApprovalWorkflow", sandboxed=False)
class BrokenApproval:
    """An approval workflow with a bug: it records its request, then fails (or hangs until its
    execution timeout). The row is written by the real activity."""

    @workflow.run
    async def run(self, data: ApprovalWorkflowInput) -> None:
        now = workflow.now()
        draft = ApprovalRequest.from_proposal(
            data.proposal, requested_at=now, expires_at=now + timedelta(seconds=300)
        )
        await workflow.execute_activity(
            "record_request",
            RecordRequestInput(approval=draft, requested_by=data.requested_by),
            start_to_close_timeout=timedelta(seconds=30),
            result_type=ApprovalRequest,
        )
        if data.requested_by == "hang":
            await workflow.wait_condition(lambda: False)
        raise ApplicationError("a bug", non_retryable=True)


async def _broken(gw: Gateway, *, hang: bool) -> uuid.UUID:
    """A trade whose approval workflow recorded its row, then failed or timed out."""
    queue = f"broken-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        gw.env.client,
        task_queue=queue,
        workflows=[BrokenApproval],
        activities=activities_for(
            sessions=gw.sessions, provider=gw.market, notifier=gw.notifier, client=gw.env.client
        ),
    )
    proposal = make_proposal(gw.market)
    async with worker:
        handle = await gw.env.client.start_workflow(
            BrokenApproval.run,
            ApprovalWorkflowInput(
                proposal=proposal, requested_by="hang" if hang else "bot-1", policy=gw.policy
            ),
            id=workflow_id_for(proposal.trade_id),
            task_queue=queue,
            execution_timeout=timedelta(seconds=2) if hang else None,
        )
        with pytest.raises(WorkflowFailureError):  # failed, or timed out
            await handle.result()
    return proposal.trade_id


async def _missing(gw: Gateway) -> uuid.UUID:
    """A trade whose row exists but whose workflow Temporal never heard of."""
    proposal = make_proposal(gw.market)
    now = datetime.now(UTC)
    await record_request(
        gw.sessions,
        RecordRequestInput(
            approval=ApprovalRequest.from_proposal(
                proposal, requested_at=now, expires_at=now + timedelta(seconds=300)
            ),
            requested_by="bot-1",
        ),
    )
    return proposal.trade_id


async def _terminated(gw: Gateway) -> uuid.UUID:
    trade_id, _ = await requested(gw)
    await gw.env.client.get_workflow_handle(workflow_id_for(trade_id)).terminate("from the UI")
    return trade_id


LOST = {
    "terminated": (_terminated, WorkflowState.TERMINATED),
    "failed": (lambda gw: _broken(gw, hang=False), WorkflowState.FAILED),
    "timed-out": (lambda gw: _broken(gw, hang=True), WorkflowState.TIMED_OUT),
    "missing": (_missing, WorkflowState.MISSING),
}


@pytest.mark.parametrize("how", list(LOST))
async def test_an_approval_whose_workflow_is_gone_is_closed_workflow_lost(
    gw: Gateway, how: str
) -> None:
    make, state = LOST[how]
    repairs = sample("hitl_reconcile_repairs_total")
    trade_id = await make(gw)
    before = await stored(gw, trade_id)
    assert before is not None and before.status is TradeStatus.AWAITING_APPROVAL

    report = await reconcile(gw)

    closed = await stored(gw, trade_id)
    assert closed is not None
    assert (closed.status, closed.decision_reason, closed.decision_channel, closed.decided_by) == (
        TradeStatus.REJECTED,
        DecisionReason.WORKFLOW_LOST,
        DecisionChannel.SYSTEM,
        "system",
    )
    assert closed.comment is not None and state.value.lower().replace("_", " ") in closed.comment
    assert (await events(gw, trade_id))[-1] == "hitl.decided"
    entry = (await audits(gw, trade_id))[-1]
    assert (entry.action, entry.previous_state, entry.new_state) == (
        "approval.workflow_lost",
        "AWAITING_APPROVAL",
        "REJECTED",
    )
    [finding] = [f for f in report.findings if f.trade_id == trade_id]
    assert (finding.kind, finding.workflow_state, finding.new) == (
        FindingKind.APPROVAL_LOST,
        state,
        True,
    )
    assert report.repaired >= 1
    assert sample("hitl_reconcile_repairs_total") >= repairs + 1
    await wait_until(lambda: any(a.trade_id == trade_id for a in gw.notifier.alerts))

    # The next pass finds nothing left to do: no second decision, no second alert.
    again = await reconcile(gw)
    assert trade_id not in {f.trade_id for f in again.findings}
    assert await stored(gw, trade_id) == closed
    assert [a.trade_id for a in gw.notifier.alerts].count(trade_id) == 1


async def test_running_approvals_are_left_alone_and_counted(gw: Gateway) -> None:
    trade_id, _ = await requested(gw)
    report = await reconcile(gw)
    assert report.approvals_resumed == 1
    assert report.mismatches == 0 and report.findings == []
    row = await stored(gw, trade_id)
    assert row is not None and row.status is TradeStatus.AWAITING_APPROVAL
    assert "approvals resumed 1" in report.summary()


async def test_an_accepted_trade_whose_workflow_is_gone_is_flagged_not_changed(
    gw: Gateway,
) -> None:
    trade_id, _ = await requested(gw)
    accepted = await gw.client.approval(trade_id).approve(_approve())
    await gw.env.client.get_workflow_handle(workflow_id_for(trade_id)).terminate("from the UI")

    first = await reconcile(gw)
    second = await reconcile(gw)

    assert first.lifecycle_open == 1
    [finding] = first.findings
    assert (finding.kind, finding.trade_id, finding.new) == (
        FindingKind.LIFECYCLE_LOST,
        trade_id,
        True,
    )
    # Still a mismatch on the next pass (the gauge keeps showing it), but alerted only once.
    assert [(f.kind, f.new) for f in second.findings] == [(FindingKind.LIFECYCLE_LOST, False)]
    assert REGISTRY.get_sample_value("hitl_reconcile_mismatches") == 1
    row = await stored(gw, trade_id)
    assert row is not None and row.status is TradeStatus.ACCEPTED and row == accepted
    await wait_until(lambda: any(a.trade_id == trade_id for a in gw.notifier.alerts))
    await asyncio.sleep(0.5)
    assert [a.trade_id for a in gw.notifier.alerts].count(trade_id) == 1
    flagged = [a for a in await audits(gw, trade_id) if a.action == "reconcile.lifecycle_lost"]
    assert len(flagged) == 1


async def test_a_running_approval_workflow_without_a_row_raises_an_alert(gw: Gateway) -> None:
    proposal = make_proposal(gw.market)
    # Started, but its first task waits an hour: running, and no row yet (nor ever, here).
    handle = await gw.env.client.start_workflow(
        ApprovalWorkflow.run,
        ApprovalWorkflowInput(proposal=proposal, requested_by="bot-1"),
        id=workflow_id_for(proposal.trade_id),
        task_queue=gw.task_queue,
        start_delay=timedelta(hours=1),
    )
    try:
        # Visibility may lag a moment behind the start.
        async def orphaned() -> bool:
            report = await reconcile(gw, grace=0)
            return any(
                f.kind is FindingKind.ORPHAN_WORKFLOW and f.trade_id == proposal.trade_id
                for f in report.findings
            )

        await wait_until(orphaned, timeout=20, interval=0.5)
        # Young workflows are given time to record their row.
        young = await ActivityEnvironment().run(
            ReconcileActivities(gw.sessions, gw.env.client).reconcile,
            ReconcileInput(task_queue=gw.task_queue, orphan_grace_seconds=3600),
        )
        assert FindingKind.ORPHAN_WORKFLOW not in {f.kind for f in young.findings}
        await wait_until(lambda: any(a.trade_id == proposal.trade_id for a in gw.notifier.alerts))
        [alert] = [a for a in gw.notifier.alerts if a.trade_id == proposal.trade_id]
        assert alert.error_code == "SEC-080"
        assert await stored(gw, proposal.trade_id) is None
    finally:
        await handle.terminate("test over")


async def test_concurrent_passes_close_a_lost_approval_once(
    dev_env: WorkflowEnvironment, engine: AsyncEngine
) -> None:
    """Two workers' passes at the same moment, on PostgreSQL and SQLite: one decision."""
    sessions = session_factory(engine, writer=True)
    gw = await start_gateway(dev_env, sessions)
    trade_ids = [await _missing(gw) for _ in range(3)]
    activities = [ReconcileActivities(sessions, dev_env.client) for _ in range(2)]
    data = ReconcileInput(task_queue=gw.task_queue)
    reports = await asyncio.gather(
        *(ActivityEnvironment().run(a.reconcile, data) for a in activities)
    )
    assert sum(r.repaired for r in reports) == 3
    for trade_id in trade_ids:
        row = await stored(gw, trade_id)
        assert row is not None and row.decision_reason is DecisionReason.WORKFLOW_LOST
        decided = [a for a in await audits(gw, trade_id) if a.new_state == "REJECTED"]
        assert len(decided) == 1
        assert await events(gw, trade_id) == ["hitl.created", "hitl.decided"]


async def test_startup_summary_is_kept_for_readyz(gw: Gateway) -> None:
    await requested(gw)
    await reconcile(gw)
    handle = gw.env.client.get_workflow_handle(reconciler_workflow_id(gw.task_queue))
    startup = await handle.execute_update(
        ReconcilerWorkflow.reconcile_now, ReconcileNow(startup=True, interval_seconds=5)
    )
    status = await handle.query(ReconcilerWorkflow.status)
    assert status.startup == startup and status.last == startup
    assert status.interval_seconds == 5
    assert startup.approvals_resumed == 1


# --- periodic passes: only what closed --------------------------------------------------------


async def _periodic(gw: Gateway, since: datetime) -> ReconcileReport:
    return await ActivityEnvironment().run(
        ReconcileActivities(gw.sessions, gw.env.client).reconcile,
        ReconcileInput(task_queue=gw.task_queue, closed_since=since),
    )


async def test_a_periodic_pass_closes_what_was_terminated_since_and_reads_nothing_else(
    gw: Gateway,
) -> None:
    """A periodic pass looks at the approval workflows ended abnormally since
    ``closed_since``: the one terminated from the UI is closed WORKFLOW_LOST; the running one
    and the one that completed (rejected) are neither read nor counted; a row whose workflow
    never existed waits for the full pass."""
    before = datetime.now(UTC)
    running, _ = await requested(gw)
    rejected, _ = await requested(gw)
    await gw.client.approval(rejected).reject(_approve())
    await gw.env.client.get_workflow_handle(workflow_id_for(rejected)).result()  # completed
    terminated = await _terminated(gw)
    missing = await _missing(gw)

    async def seen() -> ReconcileReport | None:
        # The listing (visibility) may show the termination a moment late.
        report = await _periodic(gw, before)
        return report if report.closed_checked else None

    await wait_until(seen, timeout=20, interval=0.5)
    closed = await stored(gw, terminated)
    assert closed is not None and closed.decision_reason is DecisionReason.WORKFLOW_LOST
    report = await _periodic(gw, before)  # again: the row is closed, nothing to do
    assert (report.full, report.closed_checked, report.mismatches, report.approvals_resumed) == (
        False,
        1,
        0,
        0,
    )
    assert "periodic pass: ended workflows checked 1" in report.summary()
    for trade_id in (running, missing):
        row = await stored(gw, trade_id)
        assert row is not None and row.status is TradeStatus.AWAITING_APPROVAL

    later = await _periodic(gw, datetime.now(UTC) + timedelta(seconds=1))
    assert (later.closed_checked, later.findings) == (0, [])

    full = await reconcile(gw)
    assert full.full and full.approvals_resumed == 1
    assert [(f.kind, f.trade_id) for f in full.findings] == [(FindingKind.APPROVAL_LOST, missing)]


async def test_the_reconciler_runs_periodic_passes_between_full_ones(gw: Gateway) -> None:
    """Started by a worker, the reconciler's first pass is full; the passes every interval
    after it are periodic until a full one is due again, by itself; a termination is repaired
    by the next periodic pass; what the last full pass said stays in the status."""
    handle: WorkflowHandle[ReconcilerWorkflow, None] = await gw.env.client.start_workflow(
        ReconcilerWorkflow.run,
        ReconcilerInput(task_queue=gw.task_queue, interval_seconds=1, full_interval_seconds=3600),
        id=reconciler_workflow_id(gw.task_queue),
        task_queue=gw.task_queue,
    )
    first = await handle.execute_update(ReconcilerWorkflow.reconcile_now, ReconcileNow())
    assert first.full

    async def periodic_after(at: datetime) -> bool:
        status = await handle.query(ReconcilerWorkflow.status)
        return status.last is not None and not status.last.full and status.last.at > at

    await wait_until(lambda: periodic_after(first.at), timeout=20, interval=0.2)
    status = await handle.query(ReconcilerWorkflow.status)
    assert status.last_full == first
    terminated = await _terminated(gw)

    async def repaired() -> bool:
        row = await stored(gw, terminated)
        return row is not None and row.decision_reason is DecisionReason.WORKFLOW_LOST

    await wait_until(repaired, timeout=30, interval=0.2)
    [entry] = [a for a in await audits(gw, terminated) if a.new_state == "REJECTED"]
    assert entry.action == "approval.workflow_lost"
    status = await handle.query(ReconcilerWorkflow.status)
    assert status.last_full == first  # repaired by a periodic pass, not a full one

    # A full pass every 3 s from now: asking runs one at once (the interval given by a
    # starting worker, as the setting), then periodic ones, then a full one comes due.
    asked = await handle.execute_update(
        ReconcilerWorkflow.reconcile_now, ReconcileNow(full_interval_seconds=3)
    )
    assert asked.full
    await wait_until(lambda: periodic_after(asked.at), timeout=20, interval=0.2)

    async def full_due() -> bool:
        status = await handle.query(ReconcilerWorkflow.status)
        last = status.last
        return last is not None and last.full and last.at >= asked.at + timedelta(seconds=3)

    await wait_until(full_due, timeout=30, interval=0.2)
    assert (await handle.query(ReconcilerWorkflow.status)).full_interval_seconds == 3


async def test_periodic_passes_go_on_across_continue_as_new(gw: Gateway) -> None:
    """The last pass's time and the last full one are carried into the next run: the first
    pass after a continue-as-new is periodic, not full."""
    handle: WorkflowHandle[ReconcilerWorkflow, None] = await gw.env.client.start_workflow(
        ReconcilerWorkflow.run,
        ReconcilerInput(
            task_queue=gw.task_queue,
            interval_seconds=1,
            full_interval_seconds=3600,
            passes_per_run=2,
        ),
        id=reconciler_workflow_id(gw.task_queue),
        task_queue=gw.task_queue,
    )
    first_run = (await handle.describe()).run_id
    first = await handle.execute_update(ReconcilerWorkflow.reconcile_now, ReconcileNow())
    assert first.full

    async def continued() -> bool:
        return (await gw.env.client.get_workflow_handle(handle.id).describe()).run_id != (first_run)

    await wait_until(continued, timeout=30, interval=0.2)
    latest = gw.env.client.get_workflow_handle(handle.id)  # the latest run
    # At least two passes of the second run: both periodic, the full one still the first.
    for _ in range(2):
        before = (await latest.query(ReconcilerWorkflow.status)).last
        assert before is not None

        async def next_pass(after: datetime = before.at) -> bool:
            last = (await latest.query(ReconcilerWorkflow.status)).last
            return last is not None and last.at > after

        await wait_until(next_pass, timeout=20, interval=0.2)
        status = await latest.query(ReconcilerWorkflow.status)
        assert status.last is not None and not status.last.full
        assert status.last_full == first


# --- the pure part -------------------------------------------------------------------------------


def _row(status: TradeStatus, *, intact: bool = True) -> OpenRow:
    return OpenRow(trade_id=uuid.uuid4(), status=status, correlation_id="c", intact=intact)


def test_plan_closes_only_awaiting_rows_whose_workflow_is_not_running() -> None:
    waiting, lost, accepted, gone = (
        _row(TradeStatus.AWAITING_APPROVAL),
        _row(TradeStatus.AWAITING_APPROVAL, intact=False),
        _row(TradeStatus.FILLED),
        _row(TradeStatus.ACCEPTED),
    )
    orphan = uuid.uuid4()
    decided = plan(
        [waiting, lost, accepted, gone],
        {lost.trade_id: WorkflowState.TERMINATED, gone.trade_id: WorkflowState.MISSING},
        orphans=[orphan, orphan],
    )
    assert decided.close == [lost]
    assert decided.lifecycle_lost == [gone]
    assert decided.orphans == [orphan]
    assert (decided.approvals_resumed, decided.lifecycle_open, decided.integrity_failures) == (
        1,
        2,
        1,
    )


def test_trade_id_of_reads_only_approval_workflow_ids() -> None:
    trade_id = uuid.uuid4()
    assert trade_id_of(workflow_id_for(trade_id)) == trade_id
    assert trade_id_of("hitl-guardian-x") is None
    assert trade_id_of("approval-not-a-uuid") is None
