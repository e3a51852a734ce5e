"""Database activities: approvals, their audit trail, the events outbox and snapshots.

Each activity writes its state change, its audit entry and its outbox event in one transaction,
and is idempotent: Temporal may run it twice, and the second run finds the first one's work and
returns it unchanged (metrics are counted only by the run that wrote).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog
from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from hitl import metrics
from hitl.errors import ErrorCode
from hitl.hashing import RowHasher
from hitl.lifecycle import validate_transition
from hitl.messages import (
    SYSTEM_ACTOR,
    DecisionRecorded,
    PostTradeSnapshot,
    RecordAuditInput,
    RecordDecisionInput,
    RecordRequestInput,
    RecordSnapshotInput,
    RecordTransitionInput,
)
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from hitl.slippage import snapshot_figures
from store.tables import (
    ApprovalRow,
    AuditRow,
    EventRow,
    GuardianStateRow,
    PostTradeSnapshotRow,
    approval_from_row,
    approval_to_row_values,
    snapshot_from_row,
)

log = structlog.get_logger(__name__)

TARGET_TYPE = "approval"


def _now() -> datetime:
    return datetime.now(UTC)


def write_audit(
    session: AsyncSession,
    *,
    actor_id: str,
    action: str,
    trade_id: UUID | str,
    correlation_id: str,
    previous_state: str | None,
    new_state: str | None,
    payload: dict[str, Any],
    idempotency_key: str,
    error_code: str | None = None,
    target_type: str = TARGET_TYPE,
) -> None:
    """Add one audit entry to the session's transaction."""
    session.add(
        AuditRow(
            actor_id=actor_id,
            action=action,
            target_type=target_type,
            target_id=str(trade_id),
            previous_state=previous_state,
            new_state=new_state,
            payload=payload,
            correlation_id=correlation_id,
            error_code=error_code,
            created_at=_now(),
            idempotency_key=idempotency_key,
        )
    )


# Any constant: the key of the PostgreSQL advisory lock that orders outbox commits.
_EVENT_ORDER_LOCK = 0x48495454


async def _event(
    session: AsyncSession, *, event_type: str, approval: ApprovalRequest, key: str
) -> None:
    """Add the outbox event of this transaction's change.

    Streams read the outbox by increasing id, so ids must become visible in order: on
    PostgreSQL a transaction-scoped advisory lock, taken just before the event's insert and held
    until commit, keeps a later id from committing before an earlier one. SQLite has one writer
    at a time anyway.
    """
    if session.bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EVENT_ORDER_LOCK}
        )
    session.add(
        EventRow(
            event_type=event_type,
            trade_id=approval.trade_id,
            payload=approval.to_dict(),
            correlation_id=approval.correlation_id,
            created_at=_now(),
            idempotency_key=key,
        )
    )


def _hashed(approval: ApprovalRequest) -> ApprovalRequest:
    return approval.model_copy(update={"row_hash": RowHasher.compute(approval)})


def _same_content(a: ApprovalRequest, b: ApprovalRequest) -> bool:
    return RowHasher.canonical_json(a) == RowHasher.canonical_json(b)


def _altered(trade_id: UUID, *, correlation_id: str, actor: str, action: str) -> ApplicationError:
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
    return ApplicationError(
        f"{ErrorCode.INTEGRITY_FAILURE.code}: stored approval {trade_id} was altered",
        type=ErrorCode.INTEGRITY_FAILURE.code,
        non_retryable=True,
    )


def _not_found(trade_id: UUID) -> ApplicationError:
    return ApplicationError(
        f"{ErrorCode.NOT_FOUND.code}: no stored approval for trade {trade_id}",
        type=ErrorCode.NOT_FOUND.code,
        non_retryable=True,
    )


_DECISION_FIELDS = (
    "status",
    "decided_at",
    "decided_by",
    "decision_channel",
    "decision_reason",
    "comment",
)


def _same_request(found: ApprovalRequest, expected: ApprovalRequest) -> bool:
    """Equal but for the decision: the same approval, decided since or not."""
    decision = {name: getattr(found, name) for name in _DECISION_FIELDS}
    return _same_content(found, expected.model_copy(update=decision))


def guardian_rejection(
    approval: ApprovalRequest, *, at: datetime, locked_by: str, reason: str | None
) -> ApprovalRequest:
    """``approval`` rejected because the Guardian is locked (not yet hashed)."""
    return approval.model_copy(
        update={
            "status": TradeStatus.REJECTED,
            "decided_at": at,
            "decided_by": SYSTEM_ACTOR,
            "decision_channel": DecisionChannel.SYSTEM,
            "decision_reason": DecisionReason.GUARDIAN_LOCK,
            "comment": f"Guardian locked by {locked_by}: {reason or 'no reason given'}",
        }
    )


async def guardian_state(session: AsyncSession, *, for_update: bool = False) -> GuardianStateRow:
    """The Guardian row, locked for sharing (decisions) or for update (lock and unlock), so that
    a decision and a lock never interleave on PostgreSQL; SQLite has one writer anyway."""
    query = select(GuardianStateRow).where(GuardianStateRow.id == 1)
    query = query.with_for_update(read=not for_update)
    return (await session.execute(query)).scalar_one()


async def write_guardian_rejection(
    session: AsyncSession,
    row: ApprovalRow,
    approval: ApprovalRequest,
    *,
    guardian: GuardianStateRow,
    at: datetime,
) -> ApprovalRequest:
    """Reject ``approval`` (stored in ``row``) for the Guardian: row, audit entry, event."""
    rejected = _hashed(
        guardian_rejection(
            approval, at=at, locked_by=guardian.changed_by or SYSTEM_ACTOR, reason=guardian.reason
        )
    )
    for name, value in approval_to_row_values(rejected).items():
        setattr(row, name, value)
    write_audit(
        session,
        actor_id=guardian.changed_by or SYSTEM_ACTOR,
        action="approval.decided",
        trade_id=approval.trade_id,
        correlation_id=approval.correlation_id,
        previous_state=TradeStatus.AWAITING_APPROVAL.value,
        new_state=TradeStatus.REJECTED.value,
        payload={"approval": rejected.to_dict(), "guardian_version": guardian.version},
        error_code=ErrorCode.GUARDIAN_LOCKED.code,
        idempotency_key=f"{approval.trade_id}:decided",
    )
    await _event(
        session, event_type="hitl.decided", approval=rejected, key=f"{approval.trade_id}:decided"
    )
    return rejected


def count_guardian_rejections(count: int) -> None:
    """Metrics for approvals the Guardian rejected."""
    metrics.BLOCKED_BY_GUARDIAN.inc(count)
    metrics.REJECTIONS.labels(reason=DecisionReason.GUARDIAN_LOCK.value).inc(count)


def _count_decision(approval: ApprovalRequest) -> None:
    if approval.status is TradeStatus.ACCEPTED:
        metrics.APPROVALS.inc()
    elif approval.decision_reason is not None:
        metrics.REJECTIONS.labels(reason=approval.decision_reason.value).inc()
    human = approval.decision_channel is not DecisionChannel.SYSTEM
    if human and approval.decided_at is not None:
        latency = (approval.decided_at - approval.requested_at).total_seconds()
        metrics.RESPONSE_LATENCY.observe(max(latency, 0.0))


class PersistenceActivities:
    """The approval store, as activities; built in ``worker.py`` with its session factory."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def _load(self, session: AsyncSession, trade_id: UUID) -> ApprovalRow | None:
        query = select(ApprovalRow).where(ApprovalRow.trade_id == trade_id).with_for_update()
        return (await session.execute(query)).scalar_one_or_none()

    @activity.defn(name="record_request")
    async def record_request(self, data: RecordRequestInput) -> ApprovalRequest:
        """Store a new approval as AWAITING_APPROVAL with its hash, audit entry and
        ``hitl.created`` event; a second run returns the stored record."""
        approval = _hashed(data.approval)
        async with self._sessions.begin() as session:
            existing = await self._load(session, approval.trade_id)
            if existing is not None:
                # A retry of a run that committed: the row must still be the one it wrote (or
                # that, rejected since by a Guardian lock).
                found = self._read_row(existing)
                if (
                    found is None
                    or not RowHasher.verify(found)
                    or not _same_request(found, approval)
                ):
                    raise _altered(
                        approval.trade_id,
                        correlation_id=approval.correlation_id,
                        actor=data.requested_by,
                        action="approval.requested",
                    )
                return found
            guardian = await guardian_state(session)
            row = ApprovalRow(**approval_to_row_values(approval))
            session.add(row)
            write_audit(
                session,
                actor_id=data.requested_by,
                action="approval.requested",
                trade_id=approval.trade_id,
                correlation_id=approval.correlation_id,
                previous_state=TradeStatus.PENDING.value,
                new_state=approval.status.value,
                payload=approval.to_dict(),
                idempotency_key=f"{approval.trade_id}:requested",
            )
            await _event(
                session,
                event_type="hitl.created",
                approval=approval,
                key=f"{approval.trade_id}:hitl.created",
            )
            if guardian.locked:
                # The lock committed after the API let this request in: it is recorded, and
                # rejected at once, like every approval that was pending when the lock came.
                approval = await write_guardian_rejection(
                    session, row, approval, guardian=guardian, at=approval.requested_at
                )
        metrics.REQUESTS.inc()
        if approval.is_decided:
            count_guardian_rejections(1)
        log.info(
            "approval recorded",
            correlation_id=approval.correlation_id,
            actor=data.requested_by,
            action="approval.requested",
            result="AWAITING_APPROVAL",
            trade_id=str(approval.trade_id),
        )
        return approval

    @activity.defn(name="record_decision")
    async def record_decision(self, data: RecordDecisionInput) -> DecisionRecorded:
        """End the approval phase (decision, expiry, rejection by the system).

        The stored row must match both its own hash and the workflow's copy; otherwise the
        approval is rejected with INTEGRITY_FAILURE (SEC-080), the row restored from the
        workflow's copy, and what was found kept in the audit entry.
        """
        trade_id = data.expected.trade_id
        async with self._sessions.begin() as session:
            row = await self._load(session, trade_id)
            if row is None:
                raise _not_found(trade_id)
            found = self._read_row(row)
            if (
                found is not None
                and found.is_decided
                and found.decided_at == data.decided.decided_at
            ):
                # A retry of a run that committed: hand back what it wrote, if the row still
                # holds exactly that; a row altered since is never passed on.
                written = (data.decided, self._integrity_rejection(data))
                if not RowHasher.verify(found) or not any(
                    _same_content(found, record) for record in written
                ):
                    raise _altered(
                        trade_id,
                        correlation_id=data.expected.correlation_id,
                        actor="system",
                        action="approval.decided",
                    )
                return DecisionRecorded(
                    approval=found,
                    integrity_failure=found.decision_reason is DecisionReason.INTEGRITY_FAILURE,
                )
            if (
                found is not None
                and found.decision_reason is DecisionReason.GUARDIAN_LOCK
                and RowHasher.verify(found)
                and _same_request(found, data.expected)
            ):
                # A Guardian lock rejected it in bulk; the workflow adopts that decision.
                return DecisionRecorded(approval=found, guardian_blocked=True)
            intact = (
                found is not None
                and RowHasher.verify(found)
                and _same_content(found, data.expected)
            )
            guardian_rejected: ApprovalRequest | None = None
            if intact and data.decided.status is TradeStatus.ACCEPTED:
                guardian = await guardian_state(session)
                if guardian.locked:
                    # The lock was acknowledged before this acceptance could commit: it never
                    # will. The approval ends rejected instead.
                    guardian_rejected = await write_guardian_rejection(
                        session,
                        row,
                        data.expected,
                        guardian=guardian,
                        at=data.decided.decided_at or _now(),
                    )
            if guardian_rejected is None:
                decided = _hashed(data.decided if intact else self._integrity_rejection(data))
                payload = {**data.audit_payload, "approval": decided.to_dict()}
                error_code = data.error_code
                if not intact:
                    error_code = ErrorCode.INTEGRITY_FAILURE.code
                    payload["found_row"] = self._row_dump(found, row)
                for name, value in approval_to_row_values(decided).items():
                    setattr(row, name, value)
                write_audit(
                    session,
                    actor_id=decided.decided_by or "system",
                    action="approval.decided" if intact else "approval.integrity_failure",
                    trade_id=trade_id,
                    correlation_id=decided.correlation_id,
                    previous_state=TradeStatus.AWAITING_APPROVAL.value,
                    new_state=decided.status.value,
                    payload=payload,
                    error_code=error_code,
                    idempotency_key=f"{trade_id}:decided",
                )
                event_type = data.event_type if intact else "hitl.decided"
                await _event(
                    session, event_type=event_type, approval=decided, key=f"{trade_id}:decided"
                )
        if guardian_rejected is not None:
            count_guardian_rejections(1)
            log.warning(
                "acceptance refused: the Guardian is locked",
                correlation_id=guardian_rejected.correlation_id,
                actor=data.decided.decided_by,
                action="approval.decided",
                result="REJECTED",
                error_code=ErrorCode.GUARDIAN_LOCKED.code,
                trade_id=str(trade_id),
            )
            return DecisionRecorded(approval=guardian_rejected, guardian_blocked=True)
        _count_decision(decided)
        if not intact:
            log.critical(
                "stored approval failed its integrity check; rejected",
                correlation_id=decided.correlation_id,
                actor="system",
                action="approval.integrity_failure",
                result="REJECTED",
                error_code=ErrorCode.INTEGRITY_FAILURE.code,
                trade_id=str(trade_id),
            )
        else:
            log.info(
                "decision recorded",
                correlation_id=decided.correlation_id,
                actor=decided.decided_by,
                action="approval.decided",
                result=decided.status.value,
                decision_reason=decided.decision_reason,
                trade_id=str(trade_id),
            )
        return DecisionRecorded(approval=decided, integrity_failure=not intact)

    @staticmethod
    def _read_row(row: ApprovalRow) -> ApprovalRequest | None:
        try:
            return approval_from_row(row)
        except ValidationError:
            return None

    @staticmethod
    def _row_dump(found: ApprovalRequest | None, row: ApprovalRow) -> dict[str, Any]:
        if found is not None:
            return found.to_dict()
        return {name: str(getattr(row, name)) for name in ApprovalRequest.model_fields}

    @staticmethod
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

    @activity.defn(name="record_transition")
    async def record_transition(self, data: RecordTransitionInput) -> ApprovalRequest:
        """Move an accepted trade along its lifecycle, with audit entry and event."""
        expected = data.expected
        trade_id = expected.trade_id
        async with self._sessions.begin() as session:
            row = await self._load(session, trade_id)
            if row is None:
                raise _not_found(trade_id)
            found = self._read_row(row)
            # A retry of a run that committed finds the target status, and otherwise the
            # workflow's copy; anything else was altered behind the gateway's back.
            retried = found is not None and found.status is data.target
            reference = expected.model_copy(update={"status": data.target}) if retried else expected
            if found is None or not RowHasher.verify(found) or not _same_content(found, reference):
                raise _altered(
                    trade_id,
                    correlation_id=data.correlation_id,
                    actor=data.actor,
                    action="trade.transition",
                )
            if retried:
                return found
            ok, code = validate_transition(found.status, data.target)
            if not ok:
                raise ApplicationError(
                    f"{code}: {found.status} cannot become {data.target}",
                    type=code,
                    non_retryable=True,
                )
            moved = _hashed(found.model_copy(update={"status": data.target}))
            for name, value in approval_to_row_values(moved).items():
                setattr(row, name, value)
            write_audit(
                session,
                actor_id=data.actor,
                action="trade.transitioned",
                trade_id=trade_id,
                correlation_id=data.correlation_id,
                previous_state=found.status.value,
                new_state=data.target.value,
                payload={"details": data.details, "approval": moved.to_dict()},
                idempotency_key=f"{trade_id}:{data.target.value}",
            )
            await _event(
                session,
                event_type="hitl.lifecycle",
                approval=moved,
                key=f"{trade_id}:lifecycle:{data.target.value}",
            )
        log.info(
            "trade moved",
            correlation_id=data.correlation_id,
            actor=data.actor,
            action="trade.transitioned",
            result=data.target.value,
            trade_id=str(trade_id),
        )
        return moved

    @activity.defn(name="record_audit")
    async def record_audit(self, data: RecordAuditInput) -> None:
        """Write one audit entry (refusals that change nothing else); once per key."""
        async with self._sessions.begin() as session:
            exists = await session.execute(
                select(AuditRow.id).where(AuditRow.idempotency_key == data.idempotency_key)
            )
            if exists.scalar_one_or_none() is not None:
                return
            write_audit(
                session,
                actor_id=data.actor_id,
                action=data.action,
                trade_id=data.trade_id,
                correlation_id=data.correlation_id,
                previous_state=data.previous_state.value if data.previous_state else None,
                new_state=data.new_state.value if data.new_state else None,
                payload=data.payload,
                idempotency_key=data.idempotency_key,
                error_code=data.error_code,
            )

    @activity.defn(name="record_snapshot")
    async def record_snapshot(self, data: RecordSnapshotInput) -> PostTradeSnapshot:
        """Store the post-trade snapshot of an accepted approval; once per approval."""
        approval, quote = data.approval, data.quote
        async with self._sessions.begin() as session:
            approval_id = (
                await session.execute(
                    select(ApprovalRow.id).where(ApprovalRow.trade_id == approval.trade_id)
                )
            ).scalar_one_or_none()
            if approval_id is None:
                raise _not_found(approval.trade_id)
            existing = (
                await session.execute(
                    select(PostTradeSnapshotRow).where(
                        PostTradeSnapshotRow.approval_id == approval_id
                    )
                )
            ).scalar_one_or_none()
            if existing is None:
                figures = snapshot_figures(
                    bid=quote.bid, ask=quote.ask, request_price=approval.request_price
                )
                existing = PostTradeSnapshotRow(
                    approval_id=approval_id,
                    bid=quote.bid,
                    ask=quote.ask,
                    spread=figures.spread,
                    mid_price=figures.mid_price,
                    response_latency_ms=quote.response_latency_ms,
                    price_deviation_pct=figures.price_deviation_pct,
                    correlation_id=approval.correlation_id,
                    created_at=_now(),
                )
                session.add(existing)
                await session.flush()
                # Hand back what the columns kept (8 places), as a retry would read it.
                await session.refresh(existing)
        return snapshot_from_row(existing, trade_id=approval.trade_id)
