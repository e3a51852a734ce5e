"""What the paper market reads from the database: each instrument's first proposal."""

from __future__ import annotations

from sqlalchemy import select

from hitl.paper_market import PriceAnchor
from store.engine import Sessions
from store.tables import ApprovalRow


async def first_proposal(sessions: Sessions, instrument: str) -> PriceAnchor | None:
    """The price and time of the first approval ever requested for ``instrument``, if any.

    "First" is the lowest row id, which every process agrees on (two requests in the same
    microsecond still have distinct ids), and a row once written is never re-numbered, so the
    answer never changes once there is one.
    """
    async with sessions() as session:
        row = (
            await session.execute(
                select(ApprovalRow.request_price, ApprovalRow.requested_at)
                .where(ApprovalRow.instrument == instrument)
                .order_by(ApprovalRow.id)
                .limit(1)
            )
        ).first()
    if row is None:
        return None
    return PriceAnchor(price=row.request_price, at=row.requested_at)
