"""Telling operators: a notifier interface, the console notifier, and the activities using it.

The console notifier is the embedded default (no Discord token); Discord's notifier implements
the same interface.
"""

from __future__ import annotations

from typing import Protocol

import structlog
from temporalio import activity

from hitl.messages import (
    GuardianCascadeSummary,
    NotifyInput,
    ReminderInput,
    ReminderKind,
    SecurityAlertInput,
)
from hitl.models import ApprovalRequest
from store.engine import Sessions
from store.notices import record_notice

log = structlog.get_logger(__name__)


class Notifier(Protocol):
    """Where operators hear about approvals."""

    async def approval_requested(self, approval: ApprovalRequest) -> None:
        """A new approval awaits a decision."""

    async def approval_expired(self, approval: ApprovalRequest) -> None:
        """An approval timed out and was rejected."""

    async def approval_decided(self, approval: ApprovalRequest) -> None:
        """An approval was decided outside the notifier's own channel (API, page)."""

    async def approval_reminder(self, approval: ApprovalRequest, kind: ReminderKind) -> None:
        """An approval is still undecided at the policy's reminder (or escalation) point."""

    async def security_alert(self, alert: SecurityAlertInput) -> None:
        """Something failed an integrity check."""

    async def guardian_cascade(self, summary: GuardianCascadeSummary) -> None:
        """The Guardian locked and rejected every pending approval: one summary, not one each."""


class ConsoleNotifier:
    """Writes notifications to the structured log: the notifier when Discord is not set up."""

    async def approval_requested(self, approval: ApprovalRequest) -> None:
        """Log the new approval with everything an operator needs to decide."""
        log.info(
            "approval awaiting decision",
            correlation_id=approval.correlation_id,
            actor="system",
            action="notify.approval_requested",
            result="sent",
            trade_id=str(approval.trade_id),
            instrument=approval.instrument,
            side=approval.side.value,
            risk_pct=str(approval.risk_pct),
            confidence=str(approval.confidence),
            request_price=str(approval.request_price),
            expires_at=approval.expires_at.isoformat(),
            reasoning_summary=approval.reasoning_summary,
        )

    async def approval_expired(self, approval: ApprovalRequest) -> None:
        """Log the timeout with the trade's details."""
        log.warning(
            "approval expired without a decision",
            correlation_id=approval.correlation_id,
            actor="system",
            action="notify.approval_expired",
            result="sent",
            trade_id=str(approval.trade_id),
            instrument=approval.instrument,
            side=approval.side.value,
            decision_reason=approval.decision_reason,
        )

    async def security_alert(self, alert: SecurityAlertInput) -> None:
        """Log the alert at CRITICAL."""
        log.critical(
            "security alert",
            correlation_id=alert.correlation_id,
            actor="system",
            action="notify.security_alert",
            result="sent",
            error_code=alert.error_code,
            trade_id=str(alert.trade_id),
            detail=alert.message,
        )

    async def approval_decided(self, approval: ApprovalRequest) -> None:
        """Log the decision, or a first of two approvals (four eyes)."""
        log.info(
            "approval decided" if approval.is_decided else "first of two approvals recorded",
            correlation_id=approval.correlation_id,
            actor=approval.decided_by,
            action="notify.approval_decided",
            result=approval.status.value,
            trade_id=str(approval.trade_id),
            decision_reason=approval.decision_reason,
            channel=approval.decision_channel,
        )

    async def approval_reminder(self, approval: ApprovalRequest, kind: ReminderKind) -> None:
        """Log the reminder (a warning for an escalation)."""
        emit = log.warning if kind is ReminderKind.ESCALATION else log.info
        emit(
            f"approval still awaiting a decision ({kind.value})",
            correlation_id=approval.correlation_id,
            actor="system",
            action=f"notify.approval_{kind.value}",
            result="sent",
            trade_id=str(approval.trade_id),
            instrument=approval.instrument,
            side=approval.side.value,
            expires_at=approval.expires_at.isoformat(),
        )

    async def guardian_cascade(self, summary: GuardianCascadeSummary) -> None:
        """Log the cascade summary."""
        log.warning(
            "guardian lock rejected pending approvals",
            correlation_id=summary.correlation_id,
            actor=summary.locked_by,
            action="notify.guardian_cascade",
            result="sent",
            reason=summary.reason,
            rejected=summary.rejected,
        )


class NotificationActivities:
    """Notification activities; built in ``worker.py`` with the configured notifier (and the
    database, where reminders are recorded)."""

    def __init__(self, notifier: Notifier, sessions: Sessions | None = None) -> None:
        self._notifier = notifier
        self._sessions = sessions

    @activity.defn(name="notify_approval_requested")
    async def notify_approval_requested(self, data: NotifyInput) -> None:
        """Tell operators a new approval awaits them."""
        await self._notifier.approval_requested(data.approval)

    @activity.defn(name="notify_approval_expired")
    async def notify_approval_expired(self, data: NotifyInput) -> None:
        """Tell operators an approval timed out."""
        await self._notifier.approval_expired(data.approval)

    @activity.defn(name="notify_approval_decided")
    async def notify_approval_decided(self, data: NotifyInput) -> None:
        """Tell operators how an approval was decided (so no button waits on it)."""
        await self._notifier.approval_decided(data.approval)

    @activity.defn(name="notify_approval_reminder")
    async def notify_approval_reminder(self, data: ReminderInput) -> None:
        """Remind (or escalate to) the operators: recorded once in the audit trail and the
        event stream (``hitl.reminded``, ``hitl.escalated``, which the page shows), then sent;
        a retry after a failed send records nothing again."""
        if self._sessions is None:
            raise RuntimeError("reminders need the database: build with sessions")
        approval = data.approval
        await record_notice(
            self._sessions,
            approval=approval,
            action=data.kind.audit_action,
            event_type=data.kind.event_type,
            key=f"{approval.trade_id}:{data.kind.value}",
            payload={"at_percent": str(data.at_percent), "due_at": data.due_at.isoformat()},
        )
        await self._notifier.approval_reminder(approval, data.kind)

    @activity.defn(name="notify_security_alert")
    async def notify_security_alert(self, data: SecurityAlertInput) -> None:
        """Raise a security alert."""
        await self._notifier.security_alert(data)

    @activity.defn(name="notify_guardian_cascade")
    async def notify_guardian_cascade(self, data: GuardianCascadeSummary) -> None:
        """Send the one summary of a Guardian cascade."""
        await self._notifier.guardian_cascade(data)
