"""Guardian activities: engage and release the kill-switch, and tell the rejected approvals."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import UUID

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.persistence import (
    count_guardian_rejections,
    guardian_state,
    write_audit,
    write_guardian_rejection,
)
from hitl.errors import ErrorCode
from hitl.hashing import RowHasher
from hitl.messages import (
    GuardianCommand,
    GuardianFanOut,
    GuardianLockResult,
    GuardianStatus,
    workflow_id_for,
)
from hitl.models import DecisionReason, TradeStatus
from store.tables import (
    ApprovalRow,
    GuardianStateRow,
    approval_from_row,
    guardian_status_from_row,
)

log = structlog.get_logger(__name__)

SIGNAL_CONCURRENCY = 100
"""Signals in flight at once during a fan-out (about 2 s for 1,000 on the dev server)."""


class GuardianActivities:
    """The Guardian's I/O; built in ``worker.py`` with sessions and the Temporal client."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], client: Client) -> None:
        self._sessions = sessions
        self._client = client

    @activity.defn(name="engage_guardian_lock")
    async def engage_guardian_lock(self, command: GuardianCommand) -> GuardianLockResult:
        """Lock, and reject every pending approval, in one transaction: when this commits the
        lock is acknowledged and nothing is left waiting. Running it again returns the
        approvals the standing lock rejected, so a retried fan-out misses none."""
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            guardian = await guardian_state(session, for_update=True)
            if guardian.locked:
                return GuardianLockResult(
                    status=guardian_status_from_row(guardian),
                    rejected=await self._rejected_by(session, guardian),
                )
            guardian.locked = True
            guardian.reason = command.reason
            guardian.since = now
            guardian.changed_by = command.by
            guardian.version += 1
            write_audit(
                session,
                actor_id=command.by,
                action="guardian.locked",
                trade_id="guardian",
                target_type="guardian",
                correlation_id=command.correlation_id,
                previous_state="UNLOCKED",
                new_state="LOCKED",
                payload={"reason": command.reason, "version": guardian.version},
                idempotency_key=f"guardian:{guardian.version}",
            )
            pending = await session.execute(
                select(ApprovalRow)
                .where(ApprovalRow.status == TradeStatus.AWAITING_APPROVAL.value)
                .order_by(ApprovalRow.id)
                .with_for_update()
            )
            rejected: list[UUID] = []
            for row in pending.scalars():
                approval = approval_from_row(row)
                if not RowHasher.verify(approval):
                    # Left to its workflow, which checks it against its own copy (SEC-080).
                    continue
                await write_guardian_rejection(session, row, approval, guardian=guardian, at=now)
                rejected.append(approval.trade_id)
            status = guardian_status_from_row(guardian)
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
        return GuardianLockResult(status=status, rejected=rejected)

    @staticmethod
    async def _rejected_by(session: AsyncSession, guardian: GuardianStateRow) -> list[UUID]:
        rows = await session.execute(
            select(ApprovalRow.trade_id)
            .where(
                ApprovalRow.decision_reason == DecisionReason.GUARDIAN_LOCK.value,
                ApprovalRow.decided_at >= guardian.since,
            )
            .order_by(ApprovalRow.id)
        )
        return list(rows.scalars())

    @activity.defn(name="release_guardian_lock")
    async def release_guardian_lock(self, command: GuardianCommand) -> GuardianStatus:
        """Unlock; approvals are accepted again from the moment this commits."""
        async with self._sessions.begin() as session:
            guardian = await guardian_state(session, for_update=True)
            if guardian.locked:
                guardian.locked = False
                guardian.reason = command.reason or None
                guardian.since = datetime.now(UTC)
                guardian.changed_by = command.by
                guardian.version += 1
                write_audit(
                    session,
                    actor_id=command.by,
                    action="guardian.unlocked",
                    trade_id="guardian",
                    target_type="guardian",
                    correlation_id=command.correlation_id,
                    previous_state="LOCKED",
                    new_state="UNLOCKED",
                    payload={"reason": command.reason, "version": guardian.version},
                    idempotency_key=f"guardian:{guardian.version}",
                )
            status = guardian_status_from_row(guardian)
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
        """Signal each rejected approval's workflow so it adopts its rejection and ends; the
        heartbeat records progress so a retry resumes where this attempt stopped."""
        details = activity.info().heartbeat_details
        start = int(details[0]) if details else 0
        semaphore = asyncio.Semaphore(SIGNAL_CONCURRENCY)

        async def signal(trade_id: UUID) -> None:
            async with semaphore:
                handle = self._client.get_workflow_handle(workflow_id_for(trade_id))
                try:
                    await handle.signal("guardian_locked", fan_out.notice)
                except RPCError as exc:
                    if exc.status is not RPCStatusCode.NOT_FOUND:  # ended already: fine
                        raise

        batch = SIGNAL_CONCURRENCY * 5
        for offset in range(start, len(fan_out.trade_ids), batch):
            await asyncio.gather(*(signal(t) for t in fan_out.trade_ids[offset : offset + batch]))
            activity.heartbeat(offset + batch)
        return len(fan_out.trade_ids)
