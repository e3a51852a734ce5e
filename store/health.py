"""What the health endpoints ask the database: does it answer, and how many approvals wait."""

from __future__ import annotations

from sqlalchemy import func, select, text

from hitl.models import TradeStatus
from store.engine import AsyncEngine, AsyncSession
from store.tables import ApprovalRow


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
