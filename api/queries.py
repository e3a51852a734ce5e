"""Reads the API serves straight from the database (writes go through the workflow), shaped as
the HTTP API's bodies."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from uuid import UUID

from api.schemas import ApprovalDetail, PendingApproval
from store.approvals import approval_record
from store.approvals import pending_approvals as stored_pending
from store.engine import AsyncSession


async def pending_approvals(session: AsyncSession) -> list[PendingApproval]:
    """Approvals awaiting a decision, soonest deadline first, each with its hash checked."""
    now = datetime.now(UTC)
    return [
        PendingApproval(
            **asdict(record),
            seconds_remaining=max(0.0, (record.expires_at - now).total_seconds()),
        )
        for record in await stored_pending(session)
    ]


async def approval_detail(session: AsyncSession, trade_id: UUID) -> ApprovalDetail | None:
    """The full record of one approval, or None if there is none."""
    record = await approval_record(session, trade_id)
    if record is None:
        return None
    return ApprovalDetail(
        approval=record.approval, integrity_ok=record.integrity_ok, snapshot=record.snapshot
    )
