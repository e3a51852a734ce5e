"""The Guardian's one row: read it, lock and unlock it, and reject what is pending when it locks.

Every write takes the row lock first (for update: lock and unlock; for sharing: decisions), so a
decision and a lock never interleave on PostgreSQL; SQLite has one writer anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import select

from hitl.decisions import guardian_rejection
from hitl.errors import ErrorCode
from hitl.messages import SYSTEM_ACTOR, GuardianCommand, GuardianLockResult, GuardianStatus
from hitl.models import ApprovalRequest, DecisionReason, TradeStatus
from store.audit import GUARDIAN_TARGET, AuditEntry, write_audit
from store.engine import AsyncSession, Sessions
from store.events import add_event
from store.integrity import approval_intact, seal_approval, seal_guardian
from store.tables import (
    ApprovalRow,
    GuardianStateRow,
    approval_from_row,
    guardian_status_from_row,
    sealed,
)


async def guardian_state(session: AsyncSession, *, for_update: bool = False) -> GuardianStateRow:
    """The Guardian row, locked for sharing (decisions) or for update (lock and unlock), so that
    a decision and a lock never interleave on PostgreSQL; SQLite has one writer anyway."""
    query = select(GuardianStateRow).where(GuardianStateRow.id == 1)
    query = query.with_for_update(read=not for_update)
    return (await session.execute(query)).scalar_one()


async def read_guardian(session: AsyncSession) -> GuardianStatus:
    """The Guardian's state, from its one row (a plain read: it locks nothing)."""
    row = (
        await session.execute(select(GuardianStateRow).where(GuardianStateRow.id == 1))
    ).scalar_one()
    return guardian_status_from_row(row)


async def write_guardian_rejection(
    session: AsyncSession,
    row: ApprovalRow,
    approval: ApprovalRequest,
    *,
    guardian: GuardianStateRow,
    at: datetime,
) -> ApprovalRequest:
    """Reject ``approval`` (stored in ``row``) for the Guardian: row, audit entry, event."""
    rejected = sealed(
        guardian_rejection(
            approval, at=at, locked_by=guardian.changed_by or SYSTEM_ACTOR, reason=guardian.reason
        )
    )
    mac = seal_approval(row, rejected)
    await write_audit(
        session,
        AuditEntry(
            actor_id=guardian.changed_by or SYSTEM_ACTOR,
            action="approval.decided",
            target_id=approval.trade_id,
            correlation_id=approval.correlation_id,
            previous_state=TradeStatus.AWAITING_APPROVAL.value,
            new_state=TradeStatus.REJECTED.value,
            payload={"approval": rejected.to_dict(), "guardian_version": guardian.version},
            error_code=ErrorCode.GUARDIAN_LOCKED.code,
            idempotency_key=f"{approval.trade_id}:decided",
            record_mac=mac,
        ),
    )
    await add_event(
        session, event_type="hitl.decided", approval=rejected, key=f"{approval.trade_id}:decided"
    )
    return rejected


@dataclass(frozen=True, slots=True)
class LockOutcome:
    """What :func:`lock_guardian` did."""

    result: GuardianLockResult
    engaged: bool
    """True when this call locked; False when the lock already stood (a retry)."""


async def lock_guardian(sessions: Sessions, command: GuardianCommand) -> LockOutcome:
    """Lock, and reject every pending approval, in one transaction: when this commits the lock is
    acknowledged and nothing is left waiting. Called again while locked, it returns the approvals
    the standing lock rejected, so a retried fan-out misses none."""
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        guardian = await guardian_state(session, for_update=True)
        if guardian.locked:
            return LockOutcome(
                GuardianLockResult(
                    status=guardian_status_from_row(guardian),
                    rejected=await _rejected_by(session, guardian),
                ),
                engaged=False,
            )
        guardian.locked = True
        guardian.reason = command.reason
        guardian.since = now
        guardian.changed_by = command.by
        guardian.version += 1
        # The pending rows are locked before the audit chain's head (write_audit): a decision
        # holds its approval's row and then takes the head, so the other order could deadlock.
        pending = (
            (
                await session.execute(
                    select(ApprovalRow)
                    .where(ApprovalRow.status == TradeStatus.AWAITING_APPROVAL.value)
                    .order_by(ApprovalRow.id)
                    .with_for_update()
                )
            )
            .scalars()
            .all()
        )
        await write_audit(
            session,
            AuditEntry(
                actor_id=command.by,
                action="guardian.locked",
                target_id=GUARDIAN_TARGET,
                target_type=GUARDIAN_TARGET,
                correlation_id=command.correlation_id,
                previous_state="UNLOCKED",
                new_state="LOCKED",
                payload={"reason": command.reason, "version": guardian.version},
                idempotency_key=f"guardian:{guardian.version}",
                record_mac=seal_guardian(guardian),
            ),
        )
        rejected: list[UUID] = []
        for row in pending:
            approval = approval_from_row(row)
            if not await approval_intact(session, row, approval):
                # Left to its workflow, which checks it against its own copy (SEC-080).
                continue
            await write_guardian_rejection(session, row, approval, guardian=guardian, at=now)
            rejected.append(approval.trade_id)
        status = guardian_status_from_row(guardian)
    return LockOutcome(GuardianLockResult(status=status, rejected=rejected), engaged=True)


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


async def unlock_guardian(sessions: Sessions, command: GuardianCommand) -> GuardianStatus:
    """Unlock (nothing changes if unlocked); approvals are accepted again once this commits."""
    async with sessions.begin() as session:
        guardian = await guardian_state(session, for_update=True)
        if guardian.locked:
            guardian.locked = False
            guardian.reason = command.reason or None
            guardian.since = datetime.now(UTC)
            guardian.changed_by = command.by
            guardian.version += 1
            await write_audit(
                session,
                AuditEntry(
                    actor_id=command.by,
                    action="guardian.unlocked",
                    target_id=GUARDIAN_TARGET,
                    target_type=GUARDIAN_TARGET,
                    correlation_id=command.correlation_id,
                    previous_state="LOCKED",
                    new_state="UNLOCKED",
                    payload={"reason": command.reason, "version": guardian.version},
                    idempotency_key=f"guardian:{guardian.version}",
                    record_mac=seal_guardian(guardian),
                ),
            )
        return guardian_status_from_row(guardian)
