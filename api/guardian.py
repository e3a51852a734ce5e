"""Refusing HITL operations at the API's door while the Guardian is locked."""

from __future__ import annotations

from hitl import metrics
from hitl.errors import ErrorCode, HITLError
from store.engine import AsyncSession
from store.guardian import read_guardian


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
