"""The Guardian's one row: read it, lock and unlock it, and reject what is pending, in batches,
after it locks.

Every write takes the row lock first (for update: lock and unlock; for sharing: decisions), so a
decision and a lock never interleave on PostgreSQL; SQLite has one writer anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import func, select

from hitl.decisions import guardian_lock_comment, guardian_rejection
from hitl.errors import ErrorCode
from hitl.messages import SYSTEM_ACTOR, GuardianCommand, GuardianLockResult, GuardianStatus
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from store.audit import GUARDIAN_TARGET, AuditEntry, write_audit, write_audits
from store.engine import AsyncSession, Sessions
from store.events import OutboxEvent, add_events
from store.integrity import (
    approval_mac_ok,
    legacy_approval_last_id,
    seal_approval,
    seal_guardian,
)
from store.tables import (
    ApprovalRow,
    GuardianStateRow,
    approval_or_none,
    guardian_status_from_row,
    row_dump,
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


def guardian_rejection_entry(
    row: ApprovalRow,
    approval: ApprovalRequest,
    *,
    guardian: GuardianStateRow,
    at: datetime,
) -> tuple[ApprovalRequest, AuditEntry, OutboxEvent]:
    """Reject ``approval`` (stored in ``row``) for the Guardian: the row is sealed with the
    rejection; returns the rejection, and the audit entry and event the caller writes with it."""
    rejected = sealed(
        guardian_rejection(
            approval, at=at, locked_by=guardian.changed_by or SYSTEM_ACTOR, reason=guardian.reason
        )
    )
    mac = seal_approval(row, rejected)
    entry = AuditEntry(
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
    )
    return rejected, entry, OutboxEvent("hitl.decided", rejected, f"{approval.trade_id}:decided")


async def write_guardian_rejection(
    session: AsyncSession,
    row: ApprovalRow,
    approval: ApprovalRequest,
    *,
    guardian: GuardianStateRow,
    at: datetime,
) -> ApprovalRequest:
    """Reject ``approval`` (stored in ``row``) for the Guardian: row, audit entry, event."""
    rejected, entry, event = guardian_rejection_entry(row, approval, guardian=guardian, at=at)
    await write_audit(session, entry)
    await add_events(session, [event])
    return rejected


TAMPERED_NOTE = "the stored record failed its integrity check (SEC-080); left unsealed as found"


def tampered_guardian_rejection(
    row: ApprovalRow,
    found: ApprovalRequest | None,
    *,
    guardian: GuardianStateRow,
    at: datetime,
) -> tuple[AuditEntry, ApprovalRequest | None]:
    """Reject, for the Guardian, a pending approval whose row fails its MAC, keeping the
    tampering visible: only the decision columns change (REJECTED, GUARDIAN_LOCK, by the
    system); the row hash, the MAC and its key id stay as found, so ``hitl audit verify`` and
    every read keep reporting the row as altered. Nothing is resealed: the gateway cannot tell
    which of the row's values are genuine, and a fresh MAC would make the forgery pass for its
    own record. Returns the audit entry to write, ``approval.integrity_failure`` (SEC-080) with
    the row as found (its ``record_mac`` is the MAC the row still carries), and, when the row
    still makes a record, that record rejected (for its event and its message)."""
    found_row = row_dump(found, row)
    locked_by = guardian.changed_by or SYSTEM_ACTOR
    comment = (
        f"{guardian_lock_comment(locked_by=locked_by, reason=guardian.reason)}; {TAMPERED_NOTE}"
    )
    row.status = TradeStatus.REJECTED.value
    row.decided_at = at
    row.decided_by = SYSTEM_ACTOR
    row.decision_channel = DecisionChannel.SYSTEM.value
    row.decision_reason = DecisionReason.GUARDIAN_LOCK.value
    row.comment = comment
    written = {**found_row, **_decision_dump(row)}
    decided = None
    if found is not None:
        decided = guardian_rejection(
            found, at=at, locked_by=locked_by, reason=guardian.reason
        ).model_copy(update={"comment": comment})
    entry = AuditEntry(
        actor_id=locked_by,
        action="approval.integrity_failure",
        target_id=row.trade_id,
        correlation_id=str(row.correlation_id),
        previous_state=TradeStatus.AWAITING_APPROVAL.value,
        new_state=TradeStatus.REJECTED.value,
        payload={
            "approval": written,
            "found_row": found_row,
            "guardian_version": guardian.version,
            "resealed": False,
        },
        error_code=ErrorCode.INTEGRITY_FAILURE.code,
        # Not the decision's key: the approval's workflow, which holds the genuine copy,
        # still writes its own SEC-080 rejection when it next meets the row.
        idempotency_key=f"{row.trade_id}:guardian-integrity",
        record_mac=row.mac,
    )
    return entry, decided


def _decision_dump(row: ApprovalRow) -> dict[str, Any]:
    return {
        "status": row.status,
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
        "decided_by": row.decided_by,
        "decision_channel": row.decision_channel,
        "decision_reason": row.decision_reason,
        "comment": row.comment,
    }


@dataclass(frozen=True, slots=True)
class LockOutcome:
    """What :func:`lock_guardian` did."""

    result: GuardianLockResult
    engaged: bool
    """True when this call locked; False when the lock already stood (a retry)."""


async def _flip(
    session: AsyncSession,
    guardian: GuardianStateRow,
    *,
    locked: bool,
    command: GuardianCommand,
    at: datetime,
) -> None:
    """Lock or unlock the row (caller holds it FOR UPDATE) and chain its audit entry, sealed
    with the row's new MAC, in the same transaction."""
    before, after = ("UNLOCKED", "LOCKED") if locked else ("LOCKED", "UNLOCKED")
    guardian.locked = locked
    # A lock always names its reason; an unlock may leave it empty (stored as no reason).
    guardian.reason = command.reason if locked else (command.reason or None)
    guardian.since = at
    guardian.changed_by = command.by
    guardian.version += 1
    await write_audit(
        session,
        AuditEntry(
            actor_id=command.by,
            action="guardian.locked" if locked else "guardian.unlocked",
            target_id=GUARDIAN_TARGET,
            target_type=GUARDIAN_TARGET,
            correlation_id=command.correlation_id,
            previous_state=before,
            new_state=after,
            payload={"reason": command.reason, "version": guardian.version},
            idempotency_key=f"guardian:{guardian.version}",
            record_mac=seal_guardian(guardian),
        ),
    )


async def lock_guardian(sessions: Sessions, command: GuardianCommand) -> LockOutcome:
    """Lock in one short transaction (the row, its audit entry): when this commits the lock is
    in force, since every decision and request reads the row in its own transaction. The pending
    approvals are rejected afterwards by :func:`reject_pending_batch`, so the lock's cost does
    not grow with them. Called again while locked, it changes nothing (a retry is harmless)."""
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        guardian = await guardian_state(session, for_update=True)
        if guardian.locked:
            return LockOutcome(
                GuardianLockResult(status=guardian_status_from_row(guardian)), engaged=False
            )
        await _flip(session, guardian, locked=True, command=command, at=now)
        status = guardian_status_from_row(guardian)
    return LockOutcome(GuardianLockResult(status=status), engaged=True)


REJECT_BATCH = 200
"""Pending approvals rejected per transaction after a lock (short transactions, so decisions
and requests are never held up long behind the cascade)."""


@dataclass(frozen=True, slots=True)
class RejectedBatch:
    """What one :func:`reject_pending_batch` did."""

    rejected: list[UUID]
    """Rejected for the Guardian in this batch."""
    tampered: list[UUID]
    """Rejected too, but their row failed its integrity check (SEC-080): written unsealed
    (:func:`tampered_guardian_rejection`), and their workflows are not told (adopting
    would restore the row from the workflow's copy and seal it, hiding the tampering)."""
    last_id: int
    """The highest row id looked at (the next batch starts after it); 0 when none."""
    decided: list[ApprovalRequest] = field(default_factory=list)
    """The approvals as this batch rejected them (those whose row made a record), for the
    operators' notices."""


async def reject_pending_batch(
    sessions: Sessions, *, after_id: int = 0, limit: int = REJECT_BATCH
) -> RejectedBatch:
    """Reject up to ``limit`` approvals still pending under the standing lock (rows after
    ``after_id``), in one transaction; nothing when the Guardian is unlocked (an unlock ends
    the cascade)."""
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        guardian = await guardian_state(session, for_update=False)
        if not guardian.locked:
            return RejectedBatch(rejected=[], tampered=[], last_id=after_id)
        # The pending rows are locked before the audit chain's head (write_audit): a decision
        # holds its approval's row and then takes the head, so the other order could deadlock.
        pending = (
            (
                await session.execute(
                    select(ApprovalRow)
                    .where(
                        ApprovalRow.status == TradeStatus.AWAITING_APPROVAL.value,
                        ApprovalRow.id > after_id,
                    )
                    .order_by(ApprovalRow.id)
                    .limit(limit)
                    .with_for_update()
                )
            )
            .scalars()
            .all()
        )
        rejected: list[UUID] = []
        tampered: list[UUID] = []
        decided: list[ApprovalRequest] = []
        entries: list[AuditEntry] = []
        events: list[OutboxEvent] = []
        legacy = await legacy_approval_last_id(session)
        for row in pending:
            approval = approval_or_none(row)
            if approval is None or not approval_mac_ok(row, approval, legacy_last_id=legacy):
                entry, found = tampered_guardian_rejection(row, approval, guardian=guardian, at=now)
                entries.append(entry)
                tampered.append(row.trade_id)
                if found is not None:
                    events.append(
                        OutboxEvent("hitl.decided", found, f"{row.trade_id}:guardian-integrity")
                    )
                    decided.append(found)
                continue
            rejection, entry, event = guardian_rejection_entry(
                row, approval, guardian=guardian, at=now
            )
            entries.append(entry)
            events.append(event)
            decided.append(rejection)
            rejected.append(approval.trade_id)
        # The whole batch under one take of the chain's head, then its events (the lock order
        # of store/audit.py: rows, head, outbox).
        await write_audits(session, entries)
        await add_events(session, events)
        last_id = pending[-1].id if pending else after_id
    return RejectedBatch(rejected=rejected, tampered=tampered, last_id=last_id, decided=decided)


TELL_BATCH = 500
"""Rejected approvals read per page when their workflows are told after a lock."""


async def rejected_by_lock(
    sessions: Sessions, *, locked_at: datetime, after_id: int = 0, limit: int = TELL_BATCH
) -> list[tuple[int, ApprovalRequest]]:
    """The approvals the lock of ``locked_at`` rejected, in rows after ``after_id`` (at most
    ``limit``, by row id): each with its row id, as the cascade stored it. Their workflows are
    told after every batch is written, so this is read whether the Guardian is still locked or
    not (an unlock does not leave a rejection untold). Rows written unsealed for failing their
    MAC are left out: their workflows are never told."""
    async with sessions() as session:
        rows = await session.execute(
            select(ApprovalRow)
            .where(
                ApprovalRow.id > after_id,
                ApprovalRow.decision_reason == DecisionReason.GUARDIAN_LOCK.value,
                ApprovalRow.decided_at >= locked_at,
            )
            .order_by(ApprovalRow.id)
            .limit(limit)
        )
        legacy = await legacy_approval_last_id(session)
        found: list[tuple[int, ApprovalRequest]] = []
        for row in rows.scalars():
            approval = approval_or_none(row)
            if approval is not None and approval_mac_ok(row, approval, legacy_last_id=legacy):
                found.append((row.id, approval))
        return found


async def pending_remaining(session: AsyncSession) -> int:
    """How many approvals still await a decision while the Guardian is locked (the cascade's
    progress); 0 when unlocked."""
    guardian = await read_guardian(session)
    if not guardian.locked:
        return 0
    count = await session.execute(
        select(func.count())
        .select_from(ApprovalRow)
        .where(ApprovalRow.status == TradeStatus.AWAITING_APPROVAL.value)
    )
    return int(count.scalar_one())


async def unlock_guardian(sessions: Sessions, command: GuardianCommand) -> GuardianStatus:
    """Unlock (nothing changes if unlocked); approvals are accepted again once this commits."""
    async with sessions.begin() as session:
        guardian = await guardian_state(session, for_update=True)
        if guardian.locked:
            await _flip(session, guardian, locked=False, command=command, at=datetime.now(UTC))
        return guardian_status_from_row(guardian)
