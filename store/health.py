"""What the health endpoints ask the database: does it answer, how many approvals wait, and how
many notices to the operators are still to go."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select, text

from hitl.models import TradeStatus
from store.engine import AsyncEngine, AsyncSession
from store.tables import ApprovalRow, NoticeRow


async def ping(engine: AsyncEngine) -> None:
    """One round trip to the database; raises whatever the driver raises when it cannot."""
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def pending_count(session: AsyncSession) -> int:
    """How many approvals await a decision (the pending gauge every replica agrees on)."""
    count = await session.execute(
        select(func.count())
        .select_from(ApprovalRow)
        .where(ApprovalRow.status == TradeStatus.AWAITING_APPROVAL.value)
    )
    return int(count.scalar_one())


@dataclass(frozen=True, slots=True)
class NoticeBacklog:
    """The operators' notices not yet sent or abandoned (``store/notice_queue.py``)."""

    pending: int
    failing: int
    """Of them, those that failed at least once (a notifier down, retrying)."""
    oldest_queued_at: datetime | None


async def notice_backlog(session: AsyncSession) -> NoticeBacklog:
    """The notice queue's backlog, in one read of its partial index's rows."""
    row = (
        await session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(case((NoticeRow.attempts > 0, 1), else_=0)), 0),
                func.min(NoticeRow.created_at),
            ).where(NoticeRow.done_at.is_(None))
        )
    ).one()
    return NoticeBacklog(pending=int(row[0]), failing=int(row[1]), oldest_queued_at=row[2])
