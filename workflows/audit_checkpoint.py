"""AuditCheckpointWorkflow: the worker verifies the audit chain continuously (issue 15 item 6).

One workflow per task queue asks an activity to verify what was appended since its last check,
on start and every ``HITL_AUDIT_VERIFY_SECONDS``. Each activity result — the chain head it
reached — lands in this workflow's history, which the database's writer cannot rewrite: the
workflow hands its last verified head to the next check, so a tail deleted from the database
(and the head row rewound with it) is found. The activity also appends the head to the
checkpoint file and raises the alarm on a break.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.audit import AuditActivities
    from hitl.audit_chain import AuditCheckInput, AuditCheckpointInput, ChainHead

VERIFY_TIMEOUT = timedelta(minutes=30)
"""A full first check of a large record takes minutes (about 50,000 entries a second)."""
VERIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5), maximum_interval=timedelta(minutes=5)
)
CHECKS_BEFORE_CONTINUE = 100
"""Checks before the history starts afresh (each adds a handful of events)."""


def checkpoint_workflow_id(task_queue: str) -> str:
    """The one checkpoint workflow of a task queue."""
    return f"audit-checkpoint-{task_queue}"


@workflow.defn(name="AuditCheckpointWorkflow")
class AuditCheckpointWorkflow:
    """Verifies the audit chain periodically, keeping the last verified head in its history."""

    def __init__(self) -> None:
        self._wake = False
        self._verified: ChainHead | None = None

    @workflow.run
    async def run(self, data: AuditCheckpointInput) -> None:
        """Check, sleep (or wake on ``check_now``), repeat; continue as new now and then."""
        self._verified = data.verified
        interval = timedelta(seconds=data.interval_seconds)
        for _ in range(CHECKS_BEFORE_CONTINUE):
            self._wake = False
            result = await workflow.execute_activity_method(
                AuditActivities.verify_audit_chain,
                AuditCheckInput(start=self._verified),
                start_to_close_timeout=VERIFY_TIMEOUT,
                retry_policy=VERIFY_RETRY,
            )
            if result.intact:
                self._verified = result.head
            # A break keeps the last good head: every later check reports the break again
            # until the record is repaired, and the alert names it each time.
            # A quiet interval ends in TimeoutError: that is the next check's turn, not a failure
            # (uncaught, it failed every workflow task from then on and checking stopped).
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(lambda: self._wake, timeout=interval)
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            AuditCheckpointInput(verified=self._verified, interval_seconds=data.interval_seconds)
        )

    @workflow.signal
    def check_now(self) -> None:
        """Verify at once (the worker sends it when it starts)."""
        self._wake = True

    @workflow.query
    def last_verified(self) -> ChainHead | None:
        """The last head verified intact."""
        return self._verified
