"""Notices about an approval that change nothing in it (a reminder, an escalation): an audit entry
and an outbox event, written together, once."""

from __future__ import annotations

from typing import Any

from hitl.messages import SYSTEM_ACTOR
from hitl.models import ApprovalRequest
from store.audit import AuditEntry, write_audit
from store.engine import Sessions
from store.events import add_event


async def record_notice(
    sessions: Sessions,
    *,
    approval: ApprovalRequest,
    action: str,
    event_type: str,
    key: str,
    payload: dict[str, Any],
) -> bool:
    """Audit ``action`` on ``approval`` and publish ``event_type`` (the approval as it stands)
    in one transaction; False, writing nothing, when ``key`` was already recorded (a retry).

    The audit entry is appended first: its head lock comes before the outbox's (store/audit.py).
    """
    async with sessions.begin() as session:
        entry = AuditEntry(
            actor_id=SYSTEM_ACTOR,
            action=action,
            target_id=approval.trade_id,
            correlation_id=approval.correlation_id,
            payload=payload,
            idempotency_key=key,
        )
        if not await write_audit(session, entry, once=True):
            return False
        await add_event(session, event_type=event_type, approval=approval, key=key)
    return True
