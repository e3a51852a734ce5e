"""GuardianWorkflow: the one place locks and unlocks are applied, one at a time, and each lock's
fan-out to the approvals it rejected is carried through to the end, across crashes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.guardian import GuardianActivities
    from activities.notifications import NotificationActivities
    from hitl.messages import (
        GuardianCascadeSummary,
        GuardianCommand,
        GuardianFanOut,
        GuardianLockNotice,
        GuardianStatus,
    )

DB_TIMEOUT = timedelta(seconds=60)
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5)
)
FAN_OUT_TIMEOUT = timedelta(minutes=10)
FAN_OUT_HEARTBEAT = timedelta(seconds=30)
NOTIFY_TIMEOUT = timedelta(seconds=30)
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
CONTINUE_AS_NEW_AFTER = 200
"""Operations before the history is started afresh (each lock adds a handful of events)."""


@workflow.defn(name="GuardianWorkflow")
class GuardianWorkflow:
    """Applies Guardian locks and unlocks in order and fans each lock out."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._fan_outs: list[tuple[GuardianFanOut, GuardianCascadeSummary]] = []
        self._operations = 0

    @workflow.run
    async def run(self) -> None:
        """Work through fan-outs as locks queue them; start afresh now and then."""
        while True:
            await workflow.wait_condition(
                lambda: bool(self._fan_outs) or self._operations >= CONTINUE_AS_NEW_AFTER
            )
            while self._fan_outs:
                fan_out, summary = self._fan_outs.pop(0)
                if fan_out.trade_ids:
                    await workflow.execute_activity_method(
                        GuardianActivities.signal_guardian_lock,
                        fan_out,
                        start_to_close_timeout=FAN_OUT_TIMEOUT,
                        heartbeat_timeout=FAN_OUT_HEARTBEAT,
                        retry_policy=DB_RETRY,
                    )
                await workflow.execute_activity_method(
                    NotificationActivities.notify_guardian_cascade,
                    summary,
                    start_to_close_timeout=NOTIFY_TIMEOUT,
                    retry_policy=NOTIFY_RETRY,
                )
            if self._operations >= CONTINUE_AS_NEW_AFTER:
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() and not self._fan_outs
                )
                workflow.continue_as_new()

    @workflow.update
    async def lock(self, command: GuardianCommand) -> GuardianStatus:
        """Lock: returns once the lock is acknowledged (committed with every pending approval
        rejected); the approvals' workflows are told afterwards."""
        async with self._lock:
            self._operations += 1
            result = await workflow.execute_activity_method(
                GuardianActivities.engage_guardian_lock,
                command,
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
            )
            status = result.status
            assert status.since is not None, "a lock has a time"
            notice = GuardianLockNotice(
                version=status.version,
                reason=status.reason or "",
                locked_by=status.changed_by or command.by,
                locked_at=status.since,
                correlation_id=command.correlation_id,
            )
            self._fan_outs.append(
                (
                    GuardianFanOut(notice=notice, trade_ids=result.rejected),
                    GuardianCascadeSummary(
                        reason=notice.reason,
                        locked_by=notice.locked_by,
                        locked_at=notice.locked_at,
                        rejected=len(result.rejected),
                        correlation_id=command.correlation_id,
                    ),
                )
            )
            return status

    @workflow.update
    async def unlock(self, command: GuardianCommand) -> GuardianStatus:
        """Unlock."""
        async with self._lock:
            self._operations += 1
            return await workflow.execute_activity_method(
                GuardianActivities.release_guardian_lock,
                command,
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
            )
