"""Guardian activities: engage and release the kill-switch, and tell the rejected approvals."""

from __future__ import annotations

import asyncio
from uuid import UUID

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.persistence import count_guardian_rejections
from hitl.errors import ErrorCode
from hitl.messages import (
    GuardianCommand,
    GuardianFanOut,
    GuardianLockResult,
    GuardianStatus,
    workflow_id_for,
)
from hitl.signing import CommandAction, CommandSigner
from store.engine import Sessions
from store.guardian import lock_guardian, unlock_guardian

log = structlog.get_logger(__name__)

SIGNAL_CONCURRENCY = 100
"""Signals in flight at once during a fan-out (about 2 s for 1,000 on the dev server)."""


class GuardianActivities:
    """The Guardian's I/O; built in ``worker.py`` with sessions, the Temporal client and the
    signer of the lock notices."""

    def __init__(self, sessions: Sessions, client: Client, signer: CommandSigner) -> None:
        self._sessions = sessions
        self._client = client
        self._signer = signer

    @activity.defn(name="engage_guardian_lock")
    async def engage_guardian_lock(self, command: GuardianCommand) -> GuardianLockResult:
        """Lock, and reject every pending approval, in one transaction: when this commits the
        lock is acknowledged and nothing is left waiting. Running it again returns the
        approvals the standing lock rejected, so a retried fan-out misses none."""
        outcome = await lock_guardian(self._sessions, command)
        if not outcome.engaged:
            return outcome.result
        rejected = outcome.result.rejected
        count_guardian_rejections(len(rejected))
        log.warning(
            "guardian locked",
            correlation_id=command.correlation_id,
            actor=command.by,
            action="guardian.locked",
            result="LOCKED",
            error_code=ErrorCode.GUARDIAN_LOCKED.code,
            reason=command.reason,
            rejected=len(rejected),
        )
        return outcome.result

    @activity.defn(name="release_guardian_lock")
    async def release_guardian_lock(self, command: GuardianCommand) -> GuardianStatus:
        """Unlock; approvals are accepted again from the moment this commits."""
        status = await unlock_guardian(self._sessions, command)
        log.info(
            "guardian unlocked",
            correlation_id=command.correlation_id,
            actor=command.by,
            action="guardian.unlocked",
            result="UNLOCKED",
        )
        return status

    @activity.defn(name="signal_guardian_lock")
    async def signal_guardian_lock(self, fan_out: GuardianFanOut) -> int:
        """Tell each rejected approval's workflow, with a notice signed for it alone (an
        Update, so an unsigned one never reaches its history), so it adopts its rejection and
        ends; the heartbeat records progress so a retry resumes where this attempt stopped.
        (The name is from when this was a signal; histories name it.)"""
        details = activity.info().heartbeat_details
        start = int(details[0]) if details else 0
        semaphore = asyncio.Semaphore(SIGNAL_CONCURRENCY)

        async def signal(trade_id: UUID) -> None:
            async with semaphore:
                workflow_id = workflow_id_for(trade_id)
                notice = self._signer.sign(
                    fan_out.notice, workflow_id=workflow_id, action=CommandAction.LOCK_NOTICE
                )
                handle = self._client.get_workflow_handle(workflow_id)
                try:
                    await handle.execute_update("adopt_guardian_lock", notice)
                except RPCError as exc:
                    if exc.status is not RPCStatusCode.NOT_FOUND:  # ended already: fine
                        raise
                except WorkflowUpdateFailedError as exc:
                    # Refused: ours is signed, so the keyrings differ; retried until fixed.
                    log.error(
                        "lock notice refused",
                        correlation_id=notice.correlation_id,
                        actor="worker",
                        action="guardian.notice",
                        result="refused",
                        trade_id=str(trade_id),
                        error=str(exc.cause),
                    )
                    raise

        batch = SIGNAL_CONCURRENCY * 5
        for offset in range(start, len(fan_out.trade_ids), batch):
            await asyncio.gather(*(signal(t) for t in fan_out.trade_ids[offset : offset + batch]))
            activity.heartbeat(offset + batch)
        return len(fan_out.trade_ids)
