"""Database activities: approvals, their audit trail, the events outbox and snapshots.

The work is ``store/approvals.py``'s; these wrappers turn its refusals into non-retryable
Temporal failures and count the metrics, once: only the run that wrote counts (Temporal may run an
activity twice, and the second run finds the first one's work).
"""

from __future__ import annotations

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from hitl import metrics
from hitl.errors import ErrorCode, HITLError
from hitl.messages import (
    DecisionRecorded,
    PostTradeSnapshot,
    RecordAuditInput,
    RecordDecisionInput,
    RecordRequestInput,
    RecordSnapshotInput,
    RecordTransitionInput,
)
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from store import approvals
from store.audit import AuditEntry, record_audit
from store.engine import Sessions

log = structlog.get_logger(__name__)


def _failure(exc: HITLError) -> ApplicationError:
    """The store's refusal as a Temporal failure typed with its SEC code: retrying cannot help."""
    return ApplicationError(str(exc), type=exc.error.code, non_retryable=True)


def count_guardian_rejections(count: int) -> None:
    """Metrics for approvals the Guardian rejected."""
    metrics.BLOCKED_BY_GUARDIAN.inc(count)
    metrics.REJECTIONS.labels(reason=DecisionReason.GUARDIAN_LOCK.value).inc(count)


def _count_decision(approval: ApprovalRequest) -> None:
    if approval.status is TradeStatus.ACCEPTED:
        metrics.APPROVALS.inc()
    elif approval.decision_reason is not None:
        metrics.REJECTIONS.labels(reason=approval.decision_reason.value).inc()
        if approval.decision_reason is DecisionReason.HITL_TIMEOUT:
            metrics.REJECTIONS_TIMEOUT.inc()
    human = approval.decision_channel is not DecisionChannel.SYSTEM
    if human and approval.decided_at is not None:
        latency = (approval.decided_at - approval.requested_at).total_seconds()
        metrics.RESPONSE_LATENCY.observe(max(latency, 0.0))


class PersistenceActivities:
    """The approval store, as activities; built in ``worker.py`` with its session factory."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    @activity.defn(name="record_request")
    async def record_request(self, data: RecordRequestInput) -> ApprovalRequest:
        """Store a new approval as AWAITING_APPROVAL with its hash, audit entry and
        ``hitl.created`` event; a second run returns the stored record."""
        try:
            recorded = await approvals.record_request(self._sessions, data)
        except HITLError as exc:
            raise _failure(exc) from None
        approval = recorded.value
        if not recorded.written:
            return approval
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
        """End the approval phase (decision, expiry, rejection by the system), or record a first
        of the two approvals an approval needs above the four-eyes risk level (``decided``
        still AWAITING_APPROVAL, with its approvers).

        The stored row must match both its own hash and the workflow's copy; otherwise the
        approval is rejected with INTEGRITY_FAILURE (SEC-080), the row restored from the
        workflow's copy, and what was found kept in the audit entry.
        """
        try:
            recorded = await approvals.record_decision(self._sessions, data)
        except HITLError as exc:
            raise _failure(exc) from None
        result = recorded.value
        if not recorded.written:
            return result
        decided = result.approval
        trade_id = str(decided.trade_id)
        if result.guardian_blocked:
            count_guardian_rejections(1)
            log.warning(
                "acceptance refused: the Guardian is locked",
                correlation_id=decided.correlation_id,
                actor=data.decided.decided_by,
                action="approval.decided",
                result="REJECTED",
                error_code=ErrorCode.GUARDIAN_LOCKED.code,
                trade_id=trade_id,
            )
            return result
        if not decided.is_decided:
            # A first of two approvals (four eyes): nothing is decided yet.
            log.info(
                "approval recorded; a second operator must approve",
                correlation_id=decided.correlation_id,
                actor=decided.approvers[-1] if decided.approvers else None,
                action="approval.approved_once",
                result=decided.status.value,
                approvers=list(decided.approvers),
                trade_id=trade_id,
            )
            return result
        _count_decision(decided)
        if result.integrity_failure:
            log.critical(
                "stored approval failed its integrity check; rejected",
                correlation_id=decided.correlation_id,
                actor="system",
                action="approval.integrity_failure",
                result="REJECTED",
                error_code=ErrorCode.INTEGRITY_FAILURE.code,
                trade_id=trade_id,
            )
        else:
            log.info(
                "decision recorded",
                correlation_id=decided.correlation_id,
                actor=decided.decided_by,
                action="approval.decided",
                result=decided.status.value,
                decision_reason=decided.decision_reason,
                trade_id=trade_id,
            )
        return result

    @activity.defn(name="record_transition")
    async def record_transition(self, data: RecordTransitionInput) -> ApprovalRequest:
        """Move an accepted trade along its lifecycle, with audit entry and event."""
        try:
            recorded = await approvals.record_transition(self._sessions, data)
        except HITLError as exc:
            raise _failure(exc) from None
        if recorded.written:
            log.info(
                "trade moved",
                correlation_id=data.correlation_id,
                actor=data.actor,
                action="trade.transitioned",
                result=data.target.value,
                trade_id=str(data.expected.trade_id),
            )
        return recorded.value

    @activity.defn(name="record_audit")
    async def record_audit(self, data: RecordAuditInput) -> None:
        """Write one audit entry (refusals that change nothing else); once per key."""
        await record_audit(
            self._sessions,
            AuditEntry(
                actor_id=data.actor_id,
                action=data.action,
                target_id=data.trade_id,
                correlation_id=data.correlation_id,
                previous_state=data.previous_state.value if data.previous_state else None,
                new_state=data.new_state.value if data.new_state else None,
                payload=data.payload,
                idempotency_key=data.idempotency_key,
                error_code=data.error_code,
            ),
            once=True,
        )

    @activity.defn(name="record_snapshot")
    async def record_snapshot(self, data: RecordSnapshotInput) -> PostTradeSnapshot:
        """Store the post-trade snapshot of an accepted approval; once per approval."""
        try:
            return await approvals.record_snapshot(self._sessions, data)
        except HITLError as exc:
            raise _failure(exc) from None
