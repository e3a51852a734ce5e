"""Approvals: the writes the workflow's activities make (request, decision, lifecycle move,
post-trade snapshot) and the reads the API serves.

Each write puts its state change, its audit entry and its outbox event in one transaction, and is
idempotent: run twice (Temporal retries activities), the second run finds the first one's work
and returns it unchanged, with ``written`` false so that nothing is counted twice. A stored row
that is not what the gateway wrote is never passed on: it raises SEC-080.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar
from uuid import UUID

import structlog
from sqlalchemy import select

from hitl.errors import ErrorCode, HITLError
from hitl.hashing import RowHasher
from hitl.lifecycle import validate_transition
from hitl.messages import (
    SYSTEM_ACTOR,
    DecisionRecorded,
    PostTradeSnapshot,
    RecordDecisionInput,
    RecordRequestInput,
    RecordSnapshotInput,
    RecordTransitionInput,
    ReminderKind,
)
from hitl.models import (
    ApprovalRequest,
    DecisionChannel,
    DecisionReason,
    TradeProposal,
    TradeStatus,
)
from hitl.notices import NoticeKind, notice_due
from hitl.record_mac import RecordKind
from hitl.slippage import snapshot_figures
from store.audit import SNAPSHOT_TARGET, AuditEntry, write_audit
from store.engine import AsyncSession, Sessions
from store.events import add_event
from store.guardian import guardian_state, write_guardian_rejection
from store.integrity import (
    approval_intact,
    approval_mac_ok,
    legacy_approval_last_id,
    seal,
    seal_approval,
)
from store.notice_queue import queue_notice
from store.tables import (
    ApprovalRow,
    AuditRow,
    PostTradeSnapshotRow,
    approval_or_none,
    row_dump,
    sealed,
    snapshot_from_row,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")


# --- writes (the activities') -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorded(Generic[T]):
    """What a write returns: its result, and whether this call wrote it (False: a retry found
    the earlier run's work)."""

    value: T
    written: bool


def _same_content(a: ApprovalRequest, b: ApprovalRequest) -> bool:
    return RowHasher.canonical_json(a) == RowHasher.canonical_json(b)


_DECISION_FIELDS = (
    "status",
    "decided_at",
    "decided_by",
    "decision_channel",
    "decision_reason",
    "comment",
    "approvers",
)


def _same_proposal(found: ApprovalRequest, expected: ApprovalRequest) -> bool:
    """The same proposal, whatever its times: the workflow's first write committed but its
    record in history was lost (the Temporal server killed in between), so the write runs again
    with a new clock. The stored request, with its deadline, stands (found by issue 16's chaos
    suite)."""
    fields = TradeProposal.model_fields
    return RowHasher.canonical_json(
        {name: getattr(found, name) for name in fields}
    ) == RowHasher.canonical_json({name: getattr(expected, name) for name in fields})


def _same_request(found: ApprovalRequest, expected: ApprovalRequest) -> bool:
    """Equal but for the decision: the same approval, decided since or not."""
    decision = {name: getattr(found, name) for name in _DECISION_FIELDS}
    return _same_content(found, expected.model_copy(update=decision))


def _altered(trade_id: UUID, *, correlation_id: str, actor: str, action: str) -> HITLError:
    """The SEC-080 failure for a stored approval that is not what the gateway wrote; logged."""
    log.critical(
        "stored approval failed its integrity check",
        correlation_id=correlation_id,
        actor=actor,
        action=action,
        result="refused",
        error_code=ErrorCode.INTEGRITY_FAILURE.code,
        trade_id=str(trade_id),
    )
    return HITLError(ErrorCode.INTEGRITY_FAILURE, f"stored approval {trade_id} was altered")


def _not_found(trade_id: UUID) -> HITLError:
    return HITLError(ErrorCode.NOT_FOUND, f"no stored approval for trade {trade_id}")


def _integrity_rejection(data: RecordDecisionInput) -> ApprovalRequest:
    return data.expected.model_copy(
        update={
            "status": TradeStatus.REJECTED,
            "decided_at": data.decided.decided_at,
            "decided_by": "system",
            "decision_channel": DecisionChannel.SYSTEM,
            "decision_reason": DecisionReason.INTEGRITY_FAILURE,
            "comment": "stored record failed its integrity check",
        }
    )


async def _load(session: AsyncSession, trade_id: UUID) -> ApprovalRow | None:
    query = select(ApprovalRow).where(ApprovalRow.trade_id == trade_id).with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def record_request(sessions: Sessions, data: RecordRequestInput) -> Recorded[ApprovalRequest]:
    """Store a new approval as AWAITING_APPROVAL with its hash, audit entry and ``hitl.created``
    event; rejected at once if the Guardian is locked. A second run returns the stored record."""
    approval = sealed(data.approval)
    async with sessions.begin() as session:
        existing = await _load(session, approval.trade_id)
        if existing is not None:
            # A retry of a run that committed: the row must still be the one it wrote (or that,
            # rejected since by a Guardian lock).
            found = approval_or_none(existing)
            if (
                found is None
                or not await approval_intact(session, existing, found)
                or not (_same_request(found, approval) or _same_proposal(found, approval))
            ):
                raise _altered(
                    approval.trade_id,
                    correlation_id=approval.correlation_id,
                    actor=data.requested_by,
                    action="approval.requested",
                )
            return Recorded(found, written=False)
        guardian = await guardian_state(session)
        row = ApprovalRow()
        mac = seal_approval(row, approval)
        session.add(row)
        await write_audit(
            session,
            AuditEntry(
                actor_id=data.requested_by,
                action="approval.requested",
                target_id=approval.trade_id,
                correlation_id=approval.correlation_id,
                previous_state=TradeStatus.PENDING.value,
                new_state=approval.status.value,
                payload=approval.to_dict(),
                idempotency_key=f"{approval.trade_id}:requested",
                record_mac=mac,
            ),
        )
        await add_event(
            session,
            event_type="hitl.created",
            approval=approval,
            key=f"{approval.trade_id}:hitl.created",
        )
        if guardian.locked:
            # The lock committed after the API let this request in: it is recorded, and rejected
            # at once, like every approval that was pending when the lock came.
            approval = await write_guardian_rejection(
                session, row, approval, guardian=guardian, at=approval.requested_at
            )
        if data.notify and notice_due(NoticeKind.APPROVAL_REQUESTED, approval):
            await queue_notice(
                session, NoticeKind.APPROVAL_REQUESTED, approval, now=datetime.now(UTC)
            )
    return Recorded(approval, written=True)


async def record_decision(
    sessions: Sessions, data: RecordDecisionInput
) -> Recorded[DecisionRecorded]:
    """End the approval phase (decision, expiry, rejection by the system).

    The stored row must match both its own hash and the workflow's copy; otherwise the approval
    is rejected with INTEGRITY_FAILURE (SEC-080), the row restored from the workflow's copy, and
    what was found kept in the audit entry. An acceptance that meets a locked Guardian ends
    rejected instead (``guardian_blocked``).
    """
    if not data.decided.is_decided:
        return await record_approval(sessions, data)
    trade_id = data.expected.trade_id
    async with sessions.begin() as session:
        row = await _load(session, trade_id)
        if row is None:
            raise _not_found(trade_id)
        found = approval_or_none(row)
        if found is not None and found.is_decided and found.decided_at == data.decided.decided_at:
            # A retry of a run that committed: hand back what it wrote, if the row still holds
            # exactly that; a row altered since is never passed on.
            written = (data.decided, _integrity_rejection(data))
            if not await approval_intact(session, row, found) or not any(
                _same_content(found, record) for record in written
            ):
                raise _altered(
                    trade_id,
                    correlation_id=data.expected.correlation_id,
                    actor="system",
                    action="approval.decided",
                )
            recorded = DecisionRecorded(
                approval=found,
                integrity_failure=found.decision_reason is DecisionReason.INTEGRITY_FAILURE,
            )
            return Recorded(recorded, written=False)
        if (
            found is not None
            and found.decision_reason is DecisionReason.GUARDIAN_LOCK
            and await approval_intact(session, row, found)
            and _same_request(found, data.expected)
        ):
            # A Guardian lock rejected it in bulk; the workflow adopts that decision.
            return Recorded(DecisionRecorded(approval=found, guardian_blocked=True), written=False)
        if (
            found is not None
            and found.is_decided
            and await approval_intact(session, row, found)
            and _same_request(found, data.expected)
        ):
            # Decided already, by this workflow: a decision whose write committed but whose
            # record in the workflow's history was lost (the Temporal server killed in between)
            # is applied again with a new timestamp. The stored decision stands and is adopted,
            # rather than a second one written (issue 16's chaos suite found this).
            return Recorded(DecisionRecorded(approval=found), written=False)
        intact = (
            found is not None
            and await approval_intact(session, row, found)
            and _same_content(found, data.expected)
        )
        if intact and data.decided.status is TradeStatus.ACCEPTED:
            guardian = await guardian_state(session)
            if guardian.locked:
                # The lock was acknowledged before this acceptance could commit: it never will.
                # The approval ends rejected instead.
                rejected = await write_guardian_rejection(
                    session,
                    row,
                    data.expected,
                    guardian=guardian,
                    at=data.decided.decided_at or datetime.now(UTC),
                )
                return Recorded(
                    DecisionRecorded(approval=rejected, guardian_blocked=True), written=True
                )
        decided = sealed(data.decided if intact else _integrity_rejection(data))
        payload = {**data.audit_payload, "approval": decided.to_dict()}
        error_code = data.error_code
        if not intact:
            error_code = ErrorCode.INTEGRITY_FAILURE.code
            payload["found_row"] = row_dump(found, row)
        mac = seal_approval(row, decided)
        await write_audit(
            session,
            AuditEntry(
                actor_id=decided.decided_by or "system",
                action="approval.decided" if intact else "approval.integrity_failure",
                target_id=trade_id,
                correlation_id=decided.correlation_id,
                previous_state=TradeStatus.AWAITING_APPROVAL.value,
                new_state=decided.status.value,
                payload=payload,
                error_code=error_code,
                idempotency_key=f"{trade_id}:decided",
                record_mac=mac,
            ),
        )
        event_type = data.event_type if intact else "hitl.decided"
        await add_event(session, event_type=event_type, approval=decided, key=f"{trade_id}:decided")
        await _queue_owed_notice(session, data, decided)
    return Recorded(DecisionRecorded(approval=decided, integrity_failure=not intact), written=True)


async def _queue_owed_notice(
    session: AsyncSession, data: RecordDecisionInput, outcome: ApprovalRequest
) -> None:
    """Queue the notice ``data`` asks for, if the outcome stored owes it (hitl/notices.py)."""
    if data.notice is not None and notice_due(data.notice, outcome, channel=data.channel):
        await queue_notice(session, data.notice, outcome, now=datetime.now(UTC))


async def record_approval(
    sessions: Sessions, data: RecordDecisionInput
) -> Recorded[DecisionRecorded]:
    """Record one approval of the two an approval needs (four eyes): ``data.decided`` is
    ``data.expected`` with one more approver and still AWAITING_APPROVAL. The row (its approvers
    MAC'd with the rest), an ``approval.approved_once`` audit entry and a ``hitl.approved_once``
    event are written together.

    As for a decision: a row that is not the workflow's copy is rejected with SEC-080, a Guardian
    lock that committed first rejects it (``guardian_blocked``), and a retry finds its own work.
    """
    trade_id = data.expected.trade_id
    approved = sealed(data.decided)
    approver = approved.approvers[-1] if approved.approvers else "system"
    async with sessions.begin() as session:
        row = await _load(session, trade_id)
        if row is None:
            raise _not_found(trade_id)
        found = approval_or_none(row)
        intact = found is not None and await approval_intact(session, row, found)
        if found is not None and intact:
            if _same_content(found, approved):
                # A retry of a run that committed.
                return Recorded(DecisionRecorded(approval=found), written=False)
            if found.decision_reason is DecisionReason.GUARDIAN_LOCK and _same_request(
                found, data.expected
            ):
                return Recorded(
                    DecisionRecorded(approval=found, guardian_blocked=True), written=False
                )
            if found.is_decided and _same_request(found, data.expected):
                # Decided since (a retry of a rejection written for an altered row).
                failed = found.decision_reason is DecisionReason.INTEGRITY_FAILURE
                return Recorded(
                    DecisionRecorded(approval=found, integrity_failure=failed), written=False
                )
        if not (intact and found is not None and _same_content(found, data.expected)):
            # Altered behind the gateway's back: rejected, as a decision would be.
            now = datetime.now(UTC)
            rejection = data.model_copy(
                update={"decided": data.decided.model_copy(update={"decided_at": now})}
            )
            return await _reject_altered(session, row, found, rejection)
        guardian = await guardian_state(session)
        if guardian.locked:
            rejected = await write_guardian_rejection(
                session, row, data.expected, guardian=guardian, at=datetime.now(UTC)
            )
            blocked = DecisionRecorded(approval=rejected, guardian_blocked=True)
            return Recorded(blocked, written=True)
        mac = seal_approval(row, approved)
        await write_audit(
            session,
            AuditEntry(
                actor_id=approver,
                action="approval.approved_once",
                target_id=trade_id,
                correlation_id=approved.correlation_id,
                previous_state=TradeStatus.AWAITING_APPROVAL.value,
                new_state=TradeStatus.AWAITING_APPROVAL.value,
                payload={
                    **data.audit_payload,
                    "approvers": list(approved.approvers),
                    "approval": approved.to_dict(),
                },
                idempotency_key=f"{trade_id}:approved:{len(approved.approvers)}",
                record_mac=mac,
            ),
        )
        await add_event(
            session,
            event_type=data.event_type,
            approval=approved,
            key=f"{trade_id}:approved:{len(approved.approvers)}",
        )
        await _queue_owed_notice(session, data, approved)
    return Recorded(DecisionRecorded(approval=approved), written=True)


async def _reject_altered(
    session: AsyncSession,
    row: ApprovalRow,
    found: ApprovalRequest | None,
    data: RecordDecisionInput,
) -> Recorded[DecisionRecorded]:
    """Reject an approval whose stored row is not the workflow's copy (SEC-080): the row is
    restored from that copy as REJECTED with INTEGRITY_FAILURE, what was found kept in the
    audit entry."""
    trade_id = data.expected.trade_id
    decided = sealed(_integrity_rejection(data))
    payload = {**data.audit_payload, "approval": decided.to_dict()}
    payload["found_row"] = row_dump(found, row)
    mac = seal_approval(row, decided)
    await write_audit(
        session,
        AuditEntry(
            actor_id=SYSTEM_ACTOR,
            action="approval.integrity_failure",
            target_id=trade_id,
            correlation_id=decided.correlation_id,
            previous_state=TradeStatus.AWAITING_APPROVAL.value,
            new_state=decided.status.value,
            payload=payload,
            error_code=ErrorCode.INTEGRITY_FAILURE.code,
            idempotency_key=f"{trade_id}:decided",
            record_mac=mac,
        ),
    )
    await add_event(session, event_type="hitl.decided", approval=decided, key=f"{trade_id}:decided")
    await _queue_owed_notice(session, data, decided)
    return Recorded(DecisionRecorded(approval=decided, integrity_failure=True), written=True)


async def record_transition(
    sessions: Sessions, data: RecordTransitionInput
) -> Recorded[ApprovalRequest]:
    """Move an accepted trade along its lifecycle, with audit entry and event; an invalid move
    raises its lifecycle code."""
    expected = data.expected
    trade_id = expected.trade_id
    async with sessions.begin() as session:
        row = await _load(session, trade_id)
        if row is None:
            raise _not_found(trade_id)
        found = approval_or_none(row)
        # A retry of a run that committed finds the target status, and otherwise the workflow's
        # copy; anything else was altered behind the gateway's back.
        retried = found is not None and found.status is data.target
        reference = expected.model_copy(update={"status": data.target}) if retried else expected
        if (
            found is None
            or not await approval_intact(session, row, found)
            or not _same_content(found, reference)
        ):
            raise _altered(
                trade_id,
                correlation_id=data.correlation_id,
                actor=data.actor,
                action="trade.transition",
            )
        if retried:
            return Recorded(found, written=False)
        ok, code = validate_transition(found.status, data.target)
        if not ok:
            refusal = ErrorCode.from_code(code) if code else ErrorCode.INVALID_TRANSITION
            raise HITLError(refusal, f"{found.status} cannot become {data.target}")
        moved = sealed(found.model_copy(update={"status": data.target}))
        mac = seal_approval(row, moved)
        await write_audit(
            session,
            AuditEntry(
                actor_id=data.actor,
                action="trade.transitioned",
                target_id=trade_id,
                correlation_id=data.correlation_id,
                previous_state=found.status.value,
                new_state=data.target.value,
                payload={"details": data.details, "approval": moved.to_dict()},
                idempotency_key=f"{trade_id}:{data.target.value}",
                record_mac=mac,
            ),
        )
        await add_event(
            session,
            event_type="hitl.lifecycle",
            approval=moved,
            key=f"{trade_id}:lifecycle:{data.target.value}",
        )
    return Recorded(moved, written=True)


async def close_lost_approval(
    sessions: Sessions, trade_id: UUID, *, at: datetime, workflow_state: str
) -> bool:
    """Close an approval whose workflow no longer runs: REJECTED, ``WORKFLOW_LOST``, by the
    system, with its audit entry and ``hitl.decided`` event; returns whether this call wrote it.

    Only a row still AWAITING_APPROVAL is written, re-read under the row lock (the write lock on
    SQLite): another worker's pass, a Guardian lock or a decision may have closed it since the
    reconciler read it. The audit entry's key is the one every decision uses, so the approval
    can never hold two. A row failing its hash is closed too (nothing can trade on it), with
    what was found kept in the entry and SEC-080; a row holding values no record could have is
    left alone (there is no record to close) and counted as an integrity failure by the pass.
    """
    async with sessions.begin() as session:
        row = await _load(session, trade_id)
        if row is None or row.status != TradeStatus.AWAITING_APPROVAL.value:
            return False
        found = approval_or_none(row)
        if found is None:
            return False
        intact = await approval_intact(session, row, found)
        why = f"workflow {workflow_state.lower().replace('_', ' ')}; closed by reconciliation"
        closed = sealed(
            found.model_copy(
                update={
                    "status": TradeStatus.REJECTED,
                    "decided_at": at,
                    "decided_by": SYSTEM_ACTOR,
                    "decision_channel": DecisionChannel.SYSTEM,
                    "decision_reason": DecisionReason.WORKFLOW_LOST,
                    "comment": why if intact else f"{why} (the row failed its integrity check)",
                }
            )
        )
        payload: dict[str, Any] = {"approval": closed.to_dict(), "workflow_state": workflow_state}
        if not intact:
            payload["found_row"] = found.to_dict()
        mac = seal_approval(row, closed)
        await write_audit(
            session,
            AuditEntry(
                actor_id=SYSTEM_ACTOR,
                action="approval.workflow_lost",
                target_id=trade_id,
                correlation_id=closed.correlation_id,
                previous_state=TradeStatus.AWAITING_APPROVAL.value,
                new_state=TradeStatus.REJECTED.value,
                payload=payload,
                error_code=None if intact else ErrorCode.INTEGRITY_FAILURE.code,
                idempotency_key=f"{trade_id}:decided",
                record_mac=mac,
            ),
        )
        await add_event(
            session, event_type="hitl.decided", approval=closed, key=f"{trade_id}:decided"
        )
    return True


async def record_snapshot(sessions: Sessions, data: RecordSnapshotInput) -> PostTradeSnapshot:
    """Store the post-trade snapshot of an accepted approval; once per approval."""
    approval, quote = data.approval, data.quote
    async with sessions.begin() as session:
        approval_id = (
            await session.execute(
                select(ApprovalRow.id).where(ApprovalRow.trade_id == approval.trade_id)
            )
        ).scalar_one_or_none()
        if approval_id is None:
            raise _not_found(approval.trade_id)
        existing = (
            await session.execute(
                select(PostTradeSnapshotRow).where(PostTradeSnapshotRow.approval_id == approval_id)
            )
        ).scalar_one_or_none()
        if existing is None:
            figures = snapshot_figures(
                bid=quote.bid, ask=quote.ask, request_price=approval.request_price
            )
            values: dict[str, Any] = {
                "approval_id": approval_id,
                "bid": quote.bid,
                "ask": quote.ask,
                "spread": figures.spread,
                "mid_price": figures.mid_price,
                "response_latency_ms": quote.response_latency_ms,
                "price_deviation_pct": figures.price_deviation_pct,
                "correlation_id": approval.correlation_id,
                "created_at": datetime.now(UTC),
            }
            sealed_snapshot = seal(RecordKind.SNAPSHOT, values)
            existing = PostTradeSnapshotRow(
                **values, mac=sealed_snapshot.mac, mac_key_id=sealed_snapshot.key_id
            )
            session.add(existing)
            await session.flush()
            # Hand back what the columns kept (8 places), as a retry would read it.
            await session.refresh(existing)
            recorded = snapshot_from_row(existing, trade_id=approval.trade_id)
            # Its own entry, in the same transaction and after the row (the head lock comes
            # last): the verifier checks the snapshot against it, so a snapshot deleted,
            # replaced or inserted without one is found (docs/audit.md).
            await write_audit(
                session,
                AuditEntry(
                    actor_id=SYSTEM_ACTOR,
                    action="snapshot.recorded",
                    target_type=SNAPSHOT_TARGET,
                    target_id=approval.trade_id,
                    correlation_id=approval.correlation_id,
                    payload={"snapshot": recorded.model_dump(mode="json")},
                    idempotency_key=f"{approval.trade_id}:snapshot",
                    record_mac=sealed_snapshot.mac,
                ),
            )
            return recorded
    return snapshot_from_row(existing, trade_id=approval.trade_id)


# --- reads (the API's) ------------------------------------------------------------------------


def _verified(row: ApprovalRow, *, legacy_last_id: int) -> tuple[ApprovalRequest | None, bool]:
    """The record a row holds and whether its MAC verifies; SEC-080 logged when not."""
    approval = approval_or_none(row)
    sound = approval is not None and approval_mac_ok(row, approval, legacy_last_id=legacy_last_id)
    if not sound:
        log.error(
            "stored approval failed its integrity check",
            correlation_id=row.correlation_id,
            actor="api",
            action="approval.read",
            result="flagged",
            error_code=ErrorCode.INTEGRITY_FAILURE.code,
            trade_id=str(row.trade_id),
        )
    return approval, sound


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingRecord:
    """One approval awaiting a decision, as stored: its columns, read even when the record as a
    whole does not verify (``integrity_ok`` false, SEC-080), so operators see it flagged."""

    trade_id: UUID
    instrument: str
    side: str
    risk_pct: Decimal
    confidence: Decimal
    request_price: Decimal
    requested_at: datetime
    expires_at: datetime
    reasoning_summary: str
    correlation_id: str
    integrity_ok: bool
    approvers: list[str]
    """The operators who approved so far, when it needs two (four eyes)."""
    escalated: bool = False
    """An escalation was sent (``HITL_ESCALATE_AT``): the page badges it, also after a reload."""


async def pending_approvals(session: AsyncSession) -> list[PendingRecord]:
    """Approvals awaiting a decision, soonest deadline first, each with its hash checked."""
    rows = await session.execute(
        select(ApprovalRow)
        .where(ApprovalRow.status == TradeStatus.AWAITING_APPROVAL.value)
        .order_by(ApprovalRow.expires_at, ApprovalRow.id)
    )
    pending = []
    legacy = await legacy_approval_last_id(session)
    found = list(rows.scalars())
    escalated = await _escalated(session, [str(row.trade_id) for row in found])
    for row in found:
        _, sound = _verified(row, legacy_last_id=legacy)
        pending.append(
            PendingRecord(
                trade_id=row.trade_id,
                instrument=row.instrument,
                side=row.side,
                risk_pct=row.risk_pct,
                confidence=row.confidence,
                request_price=row.request_price,
                requested_at=row.requested_at,
                expires_at=row.expires_at,
                reasoning_summary=row.reasoning_summary,
                correlation_id=row.correlation_id,
                integrity_ok=sound,
                approvers=list(row.approvers or ()),
                escalated=str(row.trade_id) in escalated,
            )
        )
    return pending


async def _escalated(session: AsyncSession, trade_ids: list[str]) -> set[str]:
    """Those of ``trade_ids`` whose escalation was sent: its audit entry is the record of it
    (``store/notices.py``). Asked in chunks, within every driver's limit on parameters."""
    found: set[str] = set()
    for start in range(0, len(trade_ids), _IN_CHUNK):
        rows = await session.execute(
            select(AuditRow.target_id).where(
                AuditRow.action == ReminderKind.ESCALATION.audit_action,
                AuditRow.target_id.in_(trade_ids[start : start + _IN_CHUNK]),
            )
        )
        found.update(rows.scalars())
    return found


_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ApprovalRecord:
    """One approval as stored, whether its hash verifies, and its post-trade snapshot if any."""

    approval: ApprovalRequest
    integrity_ok: bool
    snapshot: PostTradeSnapshot | None


async def approval_record(session: AsyncSession, trade_id: UUID) -> ApprovalRecord | None:
    """The full record of one approval, or None if there is none; SEC-080 if it is unreadable."""
    row = (
        await session.execute(select(ApprovalRow).where(ApprovalRow.trade_id == trade_id))
    ).scalar_one_or_none()
    if row is None:
        return None
    approval, sound = _verified(row, legacy_last_id=await legacy_approval_last_id(session))
    if approval is None:
        raise HITLError(
            ErrorCode.INTEGRITY_FAILURE, f"the stored approval of {trade_id} cannot be read"
        )
    snapshot_row = (
        await session.execute(
            select(PostTradeSnapshotRow).where(PostTradeSnapshotRow.approval_id == row.id)
        )
    ).scalar_one_or_none()
    snapshot = None
    if snapshot_row is not None:
        snapshot = snapshot_from_row(snapshot_row, trade_id=trade_id)
    return ApprovalRecord(approval=approval, integrity_ok=sound, snapshot=snapshot)


async def verified_approval(sessions: Sessions, trade_id: UUID) -> ApprovalRequest | None:
    """The approval as stored, when its record verifies; None when there is none, when it fails
    its integrity check, or when it cannot be read (SEC-080): nothing trustworthy to show (the
    workflow's own checks raise that alarm)."""
    try:
        async with sessions() as session:
            record = await approval_record(session, trade_id)
    except HITLError:
        return None
    if record is None or not record.integrity_ok:
        return None
    return record.approval
