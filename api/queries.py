"""Reads the API serves straight from the database (writes go through the workflow)."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import structlog
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.schemas import ApprovalDetail, PendingApproval
from hitl.errors import ErrorCode, HITLError
from hitl.hashing import RowHasher
from hitl.models import ApprovalRequest, TradeStatus
from store.tables import ApprovalRow, PostTradeSnapshotRow, approval_from_row, snapshot_from_row

log = structlog.get_logger(__name__)


def _verified(row: ApprovalRow) -> tuple[ApprovalRequest | None, bool]:
    """The record a row holds and whether its hash verifies; SEC-080 logged when not."""
    try:
        approval = approval_from_row(row)
    except ValidationError:
        approval = None
    sound = approval is not None and RowHasher.verify(approval)
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


async def pending_approvals(session: AsyncSession) -> list[PendingApproval]:
    """Approvals awaiting a decision, soonest deadline first, each with its hash checked."""
    rows = await session.execute(
        select(ApprovalRow)
        .where(ApprovalRow.status == TradeStatus.AWAITING_APPROVAL.value)
        .order_by(ApprovalRow.expires_at, ApprovalRow.id)
    )
    now = datetime.now(UTC)
    pending = []
    for row in rows.scalars():
        _, sound = _verified(row)
        pending.append(
            PendingApproval(
                trade_id=row.trade_id,
                instrument=row.instrument,
                side=row.side,
                risk_pct=row.risk_pct,
                confidence=row.confidence,
                request_price=row.request_price,
                requested_at=row.requested_at,
                expires_at=row.expires_at,
                seconds_remaining=max(0.0, (row.expires_at - now).total_seconds()),
                reasoning_summary=row.reasoning_summary,
                correlation_id=row.correlation_id,
                integrity_ok=sound,
            )
        )
    return pending


async def approval_detail(session: AsyncSession, trade_id: UUID) -> ApprovalDetail | None:
    """The full record of one approval, or None if there is none."""
    row = (
        await session.execute(select(ApprovalRow).where(ApprovalRow.trade_id == trade_id))
    ).scalar_one_or_none()
    if row is None:
        return None
    approval, sound = _verified(row)
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
    return ApprovalDetail(approval=approval, integrity_ok=sound, snapshot=snapshot)
