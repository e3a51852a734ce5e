"""Reconciliation: the database and Temporal must tell the same story about every approval.

An approval's workflow is the single writer of its row, so a row AWAITING_APPROVAL whose workflow
no longer runs (terminated from the Temporal UI, failed, timed out, or missing altogether) would
wait forever: nobody can decide it and no timer will expire it. One pass of
:meth:`ReconcileActivities.reconcile` finds such rows and closes them REJECTED with
``WORKFLOW_LOST`` (conditionally: only a row still AWAITING_APPROVAL is written, so passes on
several workers, or a pass racing a Guardian lock, never write twice). Accepted trades whose
workflow is gone, and running approval workflows that have no row, are only reported: the
gateway cannot know what the truth is, a human must look.

The pure part (:func:`plan`) decides from what was read; the activity reads, asks Temporal and
writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated
from uuid import UUID

import structlog
from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity
from temporalio.api.workflow.v1 import WorkflowExecutionInfo
from temporalio.api.workflowservice.v1 import ListWorkflowExecutionsRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from hitl import metrics
from hitl.errors import ErrorCode
from hitl.messages import workflow_id_for
from hitl.models import TradeStatus, UtcDatetime
from store.approvals import close_lost_approval
from store.engine import Sessions
from store.reconcile import (
    LIFECYCLE_OPEN,
    OpenRow,
    open_rows,
    record_reconcile_finding,
    trade_ids_without_row,
)

log = structlog.get_logger(__name__)

APPROVAL_WORKFLOW_TYPE = "ApprovalWorkflow"
WORKFLOW_ID_PREFIX = "approval-"

ENDED_ABNORMALLY = "'Terminated', 'Failed', 'TimedOut', 'Canceled'"
"""The closes a periodic pass lists (visibility's names of the execution statuses)."""

LIST_PAGE_SIZE = 1000
"""Workflows per page of a listing (one heartbeat per page)."""

LIST_PAGE_PAUSE_SECONDS = 0.5
"""A pause between the pages of a listing: the dev server answers a page of 1,000 with a few
hundred ms of its CPU and its persistence budget, which the decisions share."""

DESCRIBE_CONCURRENCY = 20
"""Describe calls in flight at once when confirming that workflows are gone."""

MAX_ALERTS_PER_PASS = 50
"""Alerts one pass raises one by one; beyond that the pass's report and log carry the rest (a
mass termination must not become a thousand notifications)."""


def reconciler_workflow_id(task_queue: str) -> str:
    """The one reconciler workflow of a gateway (its task queue)."""
    return f"hitl-reconciler-{task_queue}"


class WorkflowState(StrEnum):
    """What Temporal says of an approval's workflow; MISSING when it knows none."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"
    TERMINATED = "TERMINATED"
    CONTINUED_AS_NEW = "CONTINUED_AS_NEW"
    TIMED_OUT = "TIMED_OUT"
    MISSING = "MISSING"

    @classmethod
    def of(cls, status: WorkflowExecutionStatus | None) -> WorkflowState:
        """The state of a described or listed execution."""
        if status is None:
            return cls.MISSING
        return cls(status.name)


class FindingKind(StrEnum):
    """What a reconciliation pass can find."""

    APPROVAL_LOST = "APPROVAL_LOST"
    """A row AWAITING_APPROVAL whose workflow is not running: closed REJECTED WORKFLOW_LOST."""
    LIFECYCLE_LOST = "LIFECYCLE_LOST"
    """An accepted trade whose workflow is not running: flagged, not changed."""
    ORPHAN_WORKFLOW = "ORPHAN_WORKFLOW"
    """A running approval workflow without a row: flagged."""


ALERT_CODES: Mapping[FindingKind, ErrorCode] = {
    # The approval service lost the approval; nothing was tampered with as far as we know.
    FindingKind.APPROVAL_LOST: ErrorCode.SERVICE_UNAVAILABLE,
    FindingKind.LIFECYCLE_LOST: ErrorCode.SERVICE_UNAVAILABLE,
    # A workflow whose record is gone: a row that was written has disappeared.
    FindingKind.ORPHAN_WORKFLOW: ErrorCode.INTEGRITY_FAILURE,
}


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReconcileInput(_Message):
    """One reconciliation pass."""

    task_queue: str
    """Running approval workflows are listed on this queue (the gateway's own)."""
    orphan_grace_seconds: Annotated[int, Field(ge=0)] = 60
    """A workflow younger than this may not have recorded its row yet: not an orphan."""
    closed_since: UtcDatetime | None = None
    """None: a full pass, every open row against every running workflow. A time (the Temporal
    server's, which stamps the closes): a periodic pass, which looks only at the approval
    workflows terminated, failed, timed out or cancelled since then and at their rows; its
    cost follows what ended so, not what is pending."""


class Finding(_Message):
    """One mismatch between the database and Temporal."""

    kind: FindingKind
    trade_id: UUID
    workflow_state: WorkflowState
    correlation_id: str
    new: bool = True
    """Found for the first time (its audit entry was written by this pass): alert on it."""

    @property
    def message(self) -> str:
        """What the security alert says."""
        state = self.workflow_state.value.lower().replace("_", " ")
        if self.kind is FindingKind.APPROVAL_LOST:
            return f"approval workflow {state}; the pending approval was closed REJECTED"
        if self.kind is FindingKind.LIFECYCLE_LOST:
            return f"accepted trade's workflow {state}; its lifecycle is no longer followed"
        return "an approval workflow is running without a stored approval"


class ReconcileReport(_Message):
    """What one pass found and did; the worker logs the first one as its startup summary."""

    at: UtcDatetime
    full: bool = True
    """A full pass; otherwise a periodic one (workflows ended abnormally only), whose counts of
    resumed approvals, open trades and integrity failures are not taken (zero)."""
    closed_checked: int = 0
    """Approval workflows that ended abnormally since the periodic pass's ``closed_since``."""
    approvals_resumed: int = 0
    """Rows AWAITING_APPROVAL whose workflow runs (and so keeps its deadline)."""
    lifecycle_open: int = 0
    """Accepted trades not yet SETTLED (their workflow follows them)."""
    integrity_failures: int = 0
    """Open rows whose row hash does not match their content."""
    mismatches: int = 0
    """Rows and workflows that disagree (every finding, new or already reported)."""
    repaired: int = 0
    """Approvals this pass closed REJECTED with WORKFLOW_LOST."""
    findings: list[Finding] = Field(default_factory=list)

    def summary(self) -> str:
        """The one-line summary (log line, ``/readyz``)."""
        if not self.full:
            return (
                f"periodic pass: ended workflows checked {self.closed_checked}, "
                f"mismatches found {self.mismatches} ({self.repaired} repaired)"
            )
        return (
            f"approvals resumed {self.approvals_resumed}, lifecycle trades open "
            f"{self.lifecycle_open}, integrity failures {self.integrity_failures}, "
            f"mismatches found {self.mismatches} ({self.repaired} repaired)"
        )

    def alerts(self) -> list[Finding]:
        """The findings to raise a security alert for: new ones, at most a pass's worth."""
        return [f for f in self.findings if f.new][:MAX_ALERTS_PER_PASS]


# --- the pure part ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do about what was read."""

    close: list[OpenRow]
    lifecycle_lost: list[OpenRow]
    orphans: list[UUID]
    approvals_resumed: int
    lifecycle_open: int
    integrity_failures: int


def plan(
    rows: Sequence[OpenRow],
    states: Mapping[UUID, WorkflowState],
    *,
    orphans: Iterable[UUID] = (),
) -> Plan:
    """Decide, from the open rows and the state of their workflows, what a pass does.

    ``states`` lacks the trades whose workflow was seen running; every other trade's state is
    what Temporal answered when asked about it alone. ``orphans`` are running workflows (old
    enough to have written their row) for which no row exists at all.
    """
    close: list[OpenRow] = []
    lost: list[OpenRow] = []
    resumed = 0
    for row in rows:
        running = states.get(row.trade_id, WorkflowState.RUNNING) is WorkflowState.RUNNING
        if row.status is TradeStatus.AWAITING_APPROVAL:
            if running:
                resumed += 1
            else:
                close.append(row)
        elif row.status in LIFECYCLE_OPEN and not running:
            lost.append(row)
    return Plan(
        close=close,
        lifecycle_lost=lost,
        orphans=sorted(set(orphans)),
        approvals_resumed=resumed,
        lifecycle_open=sum(1 for row in rows if row.status in LIFECYCLE_OPEN),
        integrity_failures=sum(1 for row in rows if not row.intact),
    )


def trade_id_of(workflow_id: str) -> UUID | None:
    """The trade an approval workflow id names, or None for any other workflow id."""
    if not workflow_id.startswith(WORKFLOW_ID_PREFIX):
        return None
    try:
        return UUID(workflow_id.removeprefix(WORKFLOW_ID_PREFIX))
    except ValueError:
        return None


# --- the activity ----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


class ReconcileActivities:
    """One reconciliation pass, as an activity; built in ``worker.py`` with sessions and the
    Temporal client."""

    def __init__(self, sessions: Sessions, client: Client) -> None:
        self._sessions = sessions
        self._client = client

    @activity.defn(name="reconcile")
    async def reconcile(self, data: ReconcileInput) -> ReconcileReport:
        """Compare the open rows with Temporal; close lost approvals; report the rest."""
        started = _now()
        closed_checked = 0
        if data.closed_since is None:
            running = await self._running_workflows(data.task_queue)
            rows = await open_rows(self._sessions)
            unseen = [row.trade_id for row in rows if row.trade_id not in running]
            states = await self._states(unseen)
            young = started - timedelta(seconds=data.orphan_grace_seconds)
            candidates = [trade for trade, since in running.items() if since <= young]
            orphans = await trade_ids_without_row(self._sessions, candidates)
        else:
            ended = await self._closed_workflows(data.task_queue, data.closed_since)
            closed_checked = len(ended)
            rows = await open_rows(self._sessions, ended)
            # The listing may be stale (a workflow reset to run again): describe decides.
            states = await self._states([row.trade_id for row in rows])
            orphans = []
        decided = plan(rows, states, orphans=orphans)
        findings: list[Finding] = []
        repaired = 0
        for row in decided.close:
            closed = await close_lost_approval(
                self._sessions,
                row.trade_id,
                at=_now(),
                workflow_state=states[row.trade_id].value,
            )
            repaired += closed
            # A row another pass (or a Guardian lock) closed meanwhile is no longer a finding
            # of ours to alert on; it still counts as what this pass found.
            findings.append(self._finding(FindingKind.APPROVAL_LOST, row, states, new=closed))
        for row in decided.lifecycle_lost:
            new = await record_reconcile_finding(
                self._sessions,
                kind=FindingKind.LIFECYCLE_LOST.value,
                trade_id=row.trade_id,
                correlation_id=row.correlation_id,
                workflow_state=states[row.trade_id].value,
            )
            findings.append(self._finding(FindingKind.LIFECYCLE_LOST, row, states, new=new))
        for trade_id in decided.orphans:
            new = await record_reconcile_finding(
                self._sessions,
                kind=FindingKind.ORPHAN_WORKFLOW.value,
                trade_id=trade_id,
                correlation_id=f"reconcile-{trade_id}",
                workflow_state=WorkflowState.RUNNING.value,
            )
            findings.append(
                Finding(
                    kind=FindingKind.ORPHAN_WORKFLOW,
                    trade_id=trade_id,
                    workflow_state=WorkflowState.RUNNING,
                    correlation_id=f"reconcile-{trade_id}",
                    new=new,
                )
            )
        report = ReconcileReport(
            at=started,
            full=data.closed_since is None,
            closed_checked=closed_checked,
            approvals_resumed=decided.approvals_resumed,
            lifecycle_open=decided.lifecycle_open,
            integrity_failures=decided.integrity_failures,
            mismatches=len(findings),
            repaired=repaired,
            findings=findings,
        )
        if report.full:
            metrics.RECONCILE_MISMATCHES.set(report.mismatches)
        else:  # what the last full pass saw, plus what periodic passes found new since
            metrics.RECONCILE_MISMATCHES.inc(sum(f.new for f in report.findings))
        metrics.RECONCILE_REPAIRS.inc(repaired)
        for finding in report.findings:
            if finding.new:
                log.critical(
                    "reconciliation mismatch",
                    correlation_id=finding.correlation_id,
                    actor="reconciler",
                    action=f"reconcile.{finding.kind.value.lower()}",
                    result="REJECTED" if finding.kind is FindingKind.APPROVAL_LOST else "flagged",
                    error_code=ALERT_CODES[finding.kind].code,
                    trade_id=str(finding.trade_id),
                    workflow_state=finding.workflow_state.value,
                )
        return report

    @staticmethod
    def _finding(
        kind: FindingKind, row: OpenRow, states: Mapping[UUID, WorkflowState], *, new: bool
    ) -> Finding:
        return Finding(
            kind=kind,
            trade_id=row.trade_id,
            workflow_state=states[row.trade_id],
            correlation_id=row.correlation_id,
            new=new,
        )

    async def _running_workflows(self, task_queue: str) -> dict[UUID, datetime]:
        """Running approval workflows on ``task_queue``, by trade, with their start time."""
        running: dict[UUID, datetime] = {}
        async for execution in self._listed(task_queue, "ExecutionStatus = 'Running'"):
            trade_id = trade_id_of(execution.execution.workflow_id)
            if trade_id is not None:
                running[trade_id] = execution.start_time.ToDatetime(tzinfo=UTC)
        return running

    async def _closed_workflows(self, task_queue: str, since: datetime) -> list[UUID]:
        """Approval workflows on ``task_queue`` that ended otherwise than by completing, at
        ``since`` or later, by trade. A completed approval workflow wrote its row's last state
        itself (one that did not is a bug the full pass finds); listing only the others keeps
        a periodic pass small however many approvals complete."""
        at = since.astimezone(UTC).isoformat().replace("+00:00", "Z")
        closed: set[UUID] = set()
        async for execution in self._listed(
            task_queue, f"ExecutionStatus IN ({ENDED_ABNORMALLY}) AND CloseTime >= '{at}'"
        ):
            trade_id = trade_id_of(execution.execution.workflow_id)
            if trade_id is not None:
                closed.add(trade_id)
        return sorted(closed)

    async def _listed(
        self, task_queue: str, condition: str
    ) -> AsyncIterator[WorkflowExecutionInfo]:
        """The approval workflows on ``task_queue`` that meet ``condition``, page by page.

        The raw listing, not ``Client.list_workflows``: the pass needs an id and a start time,
        and the SDK's decoding of every execution's search attributes cost the worker 1.4 s of
        CPU for 10,000 pending approvals (0.17 s raw)."""
        request = ListWorkflowExecutionsRequest(
            namespace=self._client.namespace,
            query=(
                f"WorkflowType = '{APPROVAL_WORKFLOW_TYPE}' AND TaskQueue = '{task_queue}' "
                f"AND {condition}"
            ),
            page_size=LIST_PAGE_SIZE,
        )
        while True:
            page = await self._client.workflow_service.list_workflow_executions(request, retry=True)
            for execution in page.executions:
                yield execution
            activity.heartbeat()
            if not page.next_page_token:
                return
            request.next_page_token = page.next_page_token
            await asyncio.sleep(LIST_PAGE_PAUSE_SECONDS)

    async def _states(self, trade_ids: Sequence[UUID]) -> dict[UUID, WorkflowState]:
        """Ask Temporal about each workflow the listing did not show running: the listing
        (visibility) may lag behind, a describe does not."""
        limit = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

        async def state(trade_id: UUID) -> tuple[UUID, WorkflowState]:
            async with limit:
                handle = self._client.get_workflow_handle(workflow_id_for(trade_id))
                try:
                    description = await handle.describe()
                except RPCError as exc:
                    if exc.status is RPCStatusCode.NOT_FOUND:
                        return trade_id, WorkflowState.MISSING
                    raise
                return trade_id, WorkflowState.of(description.status)

        return dict(await asyncio.gather(*(state(t) for t in trade_ids)))
