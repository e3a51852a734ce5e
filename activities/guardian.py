"""Guardian activities: engage and release the kill-switch, and tell the rejected approvals."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import UUID

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.notifications import ConsoleNotifier, Notifier
from activities.persistence import count_guardian_rejections
from hitl.errors import ErrorCode
from hitl.messages import (
    GuardianCommand,
    GuardianFanOut,
    GuardianLockNotice,
    GuardianLockResult,
    GuardianStatus,
    SecurityAlertInput,
    workflow_id_for,
)
from hitl.models import ApprovalRequest
from hitl.signing import CommandAction, CommandSigner
from store.engine import Sessions
from store.guardian import (
    REJECT_BATCH,
    lock_guardian,
    reject_pending_batch,
    rejected_by_lock,
    unlock_guardian,
)

log = structlog.get_logger(__name__)

NOTICE_CONCURRENCY = 10
"""Approval messages edited at once after a lock (Discord limits edits per channel)."""
_REJECTING, _TELLING = 0, 1
"""The cascade's two passes, as its heartbeat records them."""
SIGNAL_CONCURRENCY = 100
"""Signals in flight at once during a fan-out (about 2 s for 1,000 on the dev server)."""


def _log_cascade(event: str, notice: GuardianLockNotice, *, result: str, total: int) -> None:
    log.warning(
        event,
        correlation_id=notice.correlation_id,
        actor="worker",
        action="guardian.cascade",
        result=result,
        error_code=ErrorCode.GUARDIAN_LOCKED.code,
        rejected=total,
    )


class GuardianActivities:
    """The Guardian's I/O; built in ``worker.py`` with sessions, the Temporal client and the
    signer of the lock notices."""

    def __init__(
        self,
        sessions: Sessions,
        client: Client,
        signer: CommandSigner,
        notifier: Notifier | None = None,
        *,
        reject_batch: int = REJECT_BATCH,
    ) -> None:
        self._sessions = sessions
        self._reject_batch = reject_batch
        self._client = client
        self._signer = signer
        self._notifier = notifier or ConsoleNotifier()

    @activity.defn(name="engage_guardian_lock")
    async def engage_guardian_lock(self, command: GuardianCommand) -> GuardianLockResult:
        """Lock, in one short transaction: when this commits the lock is acknowledged (no
        decision can succeed after it); the pending approvals are rejected afterwards by
        ``cascade_guardian_lock``. Running it again while locked changes nothing."""
        outcome = await lock_guardian(self._sessions, command)
        if outcome.engaged:
            log.warning(
                "guardian locked",
                correlation_id=command.correlation_id,
                actor=command.by,
                action="guardian.locked",
                result="LOCKED",
                error_code=ErrorCode.GUARDIAN_LOCKED.code,
                reason=command.reason,
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
        (The name is from when this was a signal; histories name it.) Histories from before
        the cascade ran in batches (``cascade_guardian_lock``) call this."""
        details = activity.info().heartbeat_details
        start = int(details[0]) if details else 0
        batch = SIGNAL_CONCURRENCY * 5
        for offset in range(start, len(fan_out.trade_ids), batch):
            await self._tell(fan_out.notice, fan_out.trade_ids[offset : offset + batch])
            activity.heartbeat(offset + batch)
        return len(fan_out.trade_ids)

    @activity.defn(name="cascade_guardian_lock")
    async def cascade_guardian_lock(self, notice: GuardianLockNotice) -> int:
        """After the lock is acknowledged, in two passes: first reject what is still pending,
        ``REJECT_BATCH`` rows per transaction, so that every pending approval is REJECTED as
        soon as the database can write it; then tell the rejected approvals' workflows to adopt
        their rejection and end each one's message, ``TELL_BATCH`` at a time (with thousands
        pending, telling the workflows is the slow part: one workflow task each). The
        heartbeat records the pass and the last row done, so a retry resumes there. Rejecting
        stops at once if the Guardian is unlocked; telling goes on (those rows are rejected).
        Returns how many approvals it rejected (this attempt and the ones before)."""
        details = activity.info().heartbeat_details
        # (pass, last row id, rejected so far); an attempt of the one-pass version left
        # (last row id, rejected so far): it resumes rejecting, and tells all of them after.
        if len(details) == 3:
            step, after_id, total = (int(d) for d in details)
        elif len(details) == 2:
            step, after_id, total = _REJECTING, int(details[0]), int(details[1])
        else:
            step, after_id, total = _REJECTING, 0, 0
        if step == _REJECTING:
            while True:
                batch = await reject_pending_batch(
                    self._sessions, after_id=after_id, limit=self._reject_batch
                )
                if batch.last_id == after_id:
                    break
                for trade_id in batch.tampered:
                    await self._alert_tampered(notice, trade_id)
                count_guardian_rejections(len(batch.rejected) + len(batch.tampered))
                after_id = batch.last_id
                total += len(batch.rejected) + len(batch.tampered)
                progress = (_REJECTING, after_id, total)
                # Tampered rows' workflows are never told; their messages are ended now.
                tampered = set(batch.tampered)
                await self._end_messages(
                    notice, [a for a in batch.decided if a.trade_id in tampered], progress=progress
                )
                activity.heartbeat(*progress)
            _log_cascade(
                "guardian cascade: every pending approval rejected",
                notice,
                result="rejected",
                total=total,
            )
            step, after_id = _TELLING, 0
        while True:
            page = await rejected_by_lock(
                self._sessions, locked_at=notice.locked_at, after_id=after_id
            )
            if not page:
                break
            after_id = page[-1][0]
            progress = (_TELLING, after_id, total)
            approvals = [approval for _, approval in page]
            await self._tell(notice, [approval.trade_id for approval in approvals])
            await self._end_messages(notice, approvals, progress=progress)
            activity.heartbeat(*progress)
        _log_cascade("guardian cascade done", notice, result="done", total=total)
        return total

    async def _end_messages(
        self,
        notice: GuardianLockNotice,
        decided: list[ApprovalRequest],
        *,
        progress: tuple[int, ...],
    ) -> None:
        """Show each rejection on its approval's message (Discord: the message is edited, its
        buttons removed, not deleted); the workflows do not send this notice for a Guardian
        rejection, so one lock does not fan out twice. Best effort: a notifier that fails (a
        Discord outage) is logged and the cascade goes on; the summary still follows."""
        semaphore = asyncio.Semaphore(NOTICE_CONCURRENCY)
        failed = 0

        async def one(approval: ApprovalRequest) -> None:
            nonlocal failed
            async with semaphore:
                try:
                    await self._notifier.approval_decided(approval)
                except Exception:  # one message left showing buttons that no longer work
                    failed += 1
                # Alive while Discord paces the edits; a retry resumes before this batch.
                activity.heartbeat(*progress)

        await asyncio.gather(*(one(a) for a in decided))
        if failed:
            log.warning(
                "approval messages not ended after a Guardian lock",
                correlation_id=notice.correlation_id,
                actor="worker",
                action="guardian.cascade",
                result="notify_failed",
                failed=failed,
            )

    async def _alert_tampered(self, notice: GuardianLockNotice, trade_id: UUID) -> None:
        """The security alert for a pending approval the cascade rejected although (because)
        its row failed its integrity check. Best effort, as the messages are: the batch has
        committed, and a notifier that fails (a Discord outage) must not cost the rest of the
        batch its alerts and messages (a retry resumes after the batch); the audit entry and
        the error line stand."""
        log.error(
            "security alert: a pending approval failed its integrity check; rejected unsealed",
            correlation_id=notice.correlation_id,
            actor="worker",
            action="guardian.cascade",
            result="rejected",
            error_code=ErrorCode.INTEGRITY_FAILURE.code,
            trade_id=str(trade_id),
        )
        alert = SecurityAlertInput(
            trade_id=trade_id,
            error_code=ErrorCode.INTEGRITY_FAILURE.code,
            message=(
                "stored approval failed its integrity check; rejected by the Guardian lock "
                "and left unsealed as found (hitl audit verify reports it)"
            ),
            correlation_id=notice.correlation_id,
            detected_at=datetime.now(UTC),
        )
        try:
            await self._notifier.security_alert(alert)
        except Exception as exc:  # logged above; the operators' channel is away
            log.warning(
                "security alert not delivered to the operators",
                correlation_id=notice.correlation_id,
                actor="worker",
                action="guardian.cascade",
                result="notify_failed",
                trade_id=str(trade_id),
                error=f"{type(exc).__name__}: {exc}",
            )

    async def _tell(self, lock: GuardianLockNotice, trade_ids: list[UUID]) -> None:
        """Send each approval's workflow its own signed lock notice, a bounded number at once."""
        semaphore = asyncio.Semaphore(SIGNAL_CONCURRENCY)

        async def signal(trade_id: UUID) -> None:
            async with semaphore:
                workflow_id = workflow_id_for(trade_id)
                notice = self._signer.sign(
                    lock, workflow_id=workflow_id, action=CommandAction.LOCK_NOTICE
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

        await asyncio.gather(*(signal(t) for t in trade_ids))
