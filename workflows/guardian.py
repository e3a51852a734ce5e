"""GuardianWorkflow: the one place locks and unlocks are applied, one at a time, and each lock's
fan-out to the approvals it rejected is carried through to the end, across crashes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import NoReturn

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.guardian import GuardianActivities
    from activities.notifications import NotificationActivities
    from activities.policy import trust_for
    from hitl.errors import ErrorCode
    from hitl.messages import (
        GuardianCarry,
        GuardianCascadeSummary,
        GuardianCommand,
        GuardianFanOut,
        GuardianLockNotice,
        GuardianStatus,
        guardian_workflow_id,
    )
    from hitl.signing import CommandAction, SeenProofs

DB_TIMEOUT = timedelta(seconds=60)
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5)
)
FAN_OUT_TIMEOUT = timedelta(minutes=10)
FAN_OUT_HEARTBEAT = timedelta(seconds=30)
CASCADE_TIMEOUT = timedelta(hours=1)
"""Rejecting and telling every pending approval after a lock (heartbeats catch a stuck one)."""
CASCADE_PATCH = "guardian-cascade-in-batches"
"""Locks write only themselves; the pending approvals are rejected after, in batches."""
NOTIFY_TIMEOUT = timedelta(seconds=30)
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
CONTINUE_AS_NEW_AFTER = 200
"""Operations before the history is started afresh (each lock adds a handful of events)."""
OWN_QUEUE_PATCH = "guardian-own-task-queue"
"""A Guardian started on the approvals' task queue moves to its own (continue-as-new)."""
MOVE_SIGNAL = "move_to_own_queue"
"""Sent by each worker as it starts: a Guardian still on the approvals' queue moves to its own.
Unsigned on purpose: all it can do is continue the workflow as new on the queue it belongs on."""
GUARDIAN_QUEUE_SUFFIX = "-guardian"


def guardian_task_queue(task_queue: str) -> str:
    """The Guardian's own task queue for the gateway on ``task_queue`` (the approvals' queue):
    its workflow and the cascade's activities run there, on a worker of their own, so thousands
    of approvals waiting on ``task_queue`` never delay a lock. The one place the name is made."""
    return f"{task_queue}{GUARDIAN_QUEUE_SUFFIX}"


def approvals_task_queue(workflow_id: str) -> str:
    """The approvals' task queue a Guardian workflow id belongs to (its id names it)."""
    return workflow_id.removeprefix(guardian_workflow_id(""))


def _fail(error: ErrorCode, message: str) -> NoReturn:
    raise ApplicationError(f"{error.code}: {message}", type=error.code, non_retryable=True)


@workflow.defn(name="GuardianWorkflow")
class GuardianWorkflow:
    """Applies Guardian locks and unlocks in order and fans each lock out."""

    @workflow.init
    def __init__(self, carried: GuardianCarry | None = None) -> None:
        # Lock and unlock carry the gateway's proof; one seen before is a replay (an unlock
        # captured and sent again after a new lock must not release it).
        self._seen = SeenProofs(carried.seen if carried is not None else None)
        self._lock = asyncio.Lock()
        # (fan-out, summary, whether the pending are rejected in batches after the lock)
        self._fan_outs: list[tuple[GuardianFanOut, GuardianCascadeSummary, bool]] = []
        self._operations = 0
        self._move_asked = False

    @workflow.run
    async def run(self, carried: GuardianCarry | None = None) -> None:
        """Work through fan-outs as locks queue them; start afresh now and then."""
        while True:
            await workflow.wait_condition(
                lambda: (
                    bool(self._fan_outs)
                    or self._operations >= CONTINUE_AS_NEW_AFTER
                    or self._move_asked
                )
            )
            while self._fan_outs:
                fan_out, summary, in_batches = self._fan_outs.pop(0)
                if in_batches:
                    # The lock wrote only itself; reject what is pending now, in batches.
                    rejected = await workflow.execute_activity_method(
                        GuardianActivities.cascade_guardian_lock,
                        fan_out.notice,
                        start_to_close_timeout=CASCADE_TIMEOUT,
                        heartbeat_timeout=FAN_OUT_HEARTBEAT,
                        retry_policy=DB_RETRY,
                    )
                    summary = summary.model_copy(update={"rejected": rejected})
                elif fan_out.trade_ids:
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
            # Only histories with the move signal reach the patch (older ones never asked).
            home = self._home() if self._move_asked else None
            self._move_asked = False
            if home is not None and workflow.patched(OWN_QUEUE_PATCH):
                # Started before the Guardian had its own queue: a run's task queue is fixed,
                # so carry on as a new run there (locks wait on the handlers' lock meanwhile).
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() and not self._fan_outs
                )
                workflow.continue_as_new(GuardianCarry(seen=self._seen.entries), task_queue=home)
            if self._operations >= CONTINUE_AS_NEW_AFTER:
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() and not self._fan_outs
                )
                workflow.continue_as_new(GuardianCarry(seen=self._seen.entries))

    @workflow.signal(name=MOVE_SIGNAL)
    def move_to_own_queue(self) -> None:
        """Move to the Guardian's own task queue if this run is elsewhere (see ``MOVE_SIGNAL``)."""
        self._move_asked = True

    @staticmethod
    def _home() -> str | None:
        """The Guardian's own task queue when this run is on another one, else None."""
        info = workflow.info()
        home = guardian_task_queue(approvals_task_queue(info.workflow_id))
        return None if info.task_queue == home else home

    @workflow.update
    async def lock(self, command: GuardianCommand) -> GuardianStatus:
        """Lock: returns once the lock is acknowledged (one short write: from then on no
        decision can succeed); the pending approvals are rejected and told afterwards."""
        self._accepted(command)
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
            # Older histories rejected every pending approval inside the lock's activity and
            # only told them afterwards; newer locks write only themselves (issue 16).
            in_batches = workflow.patched(CASCADE_PATCH)
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
                    in_batches,
                )
            )
            return status

    @workflow.update
    async def unlock(self, command: GuardianCommand) -> GuardianStatus:
        """Unlock."""
        self._accepted(command)
        async with self._lock:
            self._operations += 1
            return await workflow.execute_activity_method(
                GuardianActivities.release_guardian_lock,
                command,
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=DB_RETRY,
            )

    @lock.validator
    def _validate_lock(self, command: GuardianCommand) -> None:
        self._check(command, CommandAction.GUARDIAN_LOCK)

    @unlock.validator
    def _validate_unlock(self, command: GuardianCommand) -> None:
        self._check(command, CommandAction.GUARDIAN_UNLOCK)

    def _check(self, command: GuardianCommand, action: CommandAction) -> None:
        """Refuse (SEC-092/093, nothing in history) what the gateway did not sign for this
        Guardian and action, or a proof already used. Validators do not run on replay, so the
        worker's current keyring may be read here."""
        trust = trust_for(workflow.info().task_queue)
        if trust is None:
            _fail(ErrorCode.CONFIGURATION, "this worker has no commands keyring")
        refused = trust.refusal(
            command.proof,
            workflow_id=workflow.info().workflow_id,
            action=action,
            payload=command,
            claimed_by=command.by,
            seen=self._seen,
        )
        if refused is not None:
            _fail(refused, f"{action.value} refused: not a valid command of the gateway")
        self._accepted(command)

    def _accepted(self, command: GuardianCommand) -> None:
        # In the validator (two copies in one task) and the handler (so replay rebuilds it).
        if command.proof is not None:
            self._seen.remember(command.proof, now=workflow.now())
