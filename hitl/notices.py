"""Which notices an approval's change owes the operators: the rule the store applies, in the
transaction that commits the change, when it queues a notice (``store/notice_queue.py``).

A notice is queued with the change it tells, so a change is never committed without its notice
nor a notice sent for a change that did not commit; the worker's dispatcher sends it
(``activities/notice_dispatch.py``). The rule is the one the workflow applied when it sent its
notices itself (approvals started before ``NOTICE_OUTBOX`` still do).
"""

from __future__ import annotations

from enum import StrEnum

from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason


class NoticeKind(StrEnum):
    """A notice about an approval, named after the notifier's method that sends it."""

    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_DECIDED = "approval_decided"
    APPROVAL_EXPIRED = "approval_expired"


def notice_due(
    kind: NoticeKind, outcome: ApprovalRequest, *, channel: DecisionChannel | None = None
) -> bool:
    """Whether the change that left the approval as ``outcome`` owes the operators ``kind``.

    - a request: while it awaits a decision (one rejected at once, the Guardian being locked
      when it was stored, never awaited anyone);
    - an expiry: when the timeout is what was recorded (a Guardian lock or an integrity
      rejection may have come first);
    - a decision, or a first of two approvals (four eyes): unless a Guardian lock decided it
      (its summary tells) or it was made on Discord, whose bot edits its own message; an
      outcome that is not the command's (an integrity rejection, recorded by the system) is
      told wherever the command came from. ``channel`` is the command's.
    """
    if kind is NoticeKind.APPROVAL_REQUESTED:
        return not outcome.is_decided
    if kind is NoticeKind.APPROVAL_EXPIRED:
        return outcome.decision_reason is DecisionReason.HITL_TIMEOUT
    if outcome.decision_reason is DecisionReason.GUARDIAN_LOCK:
        return False
    shown_by = outcome.decision_channel if outcome.is_decided else channel
    return shown_by is not DecisionChannel.DISCORD
