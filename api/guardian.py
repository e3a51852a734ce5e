"""Reading the Guardian, and refusing HITL operations while it is locked."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hitl import metrics
from hitl.errors import ErrorCode, HITLError
from hitl.messages import GuardianStatus
from store.tables import GuardianStateRow, guardian_status_from_row


async def read_guardian(session: AsyncSession) -> GuardianStatus:
    """The Guardian's state, from its one row."""
    row = (
        await session.execute(select(GuardianStateRow).where(GuardianStateRow.id == 1))
    ).scalar_one()
    return guardian_status_from_row(row)


async def refuse_if_locked(session: AsyncSession) -> None:
    """SEC-020, counted in blocked_by_guardian_total, while the Guardian is locked.

    A convenience at the door: the guarantee itself is in the database, where an acceptance
    and a lock never both commit out of order.
    """
    status = await read_guardian(session)
    if status.locked:
        metrics.BLOCKED_BY_GUARDIAN.inc()
        raise HITLError(
            ErrorCode.GUARDIAN_LOCKED,
            f"the Guardian is locked since {status.since:%Y-%m-%d %H:%M:%S} UTC by "
            f"{status.changed_by}: {status.reason}",
        )
