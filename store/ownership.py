"""Who requested an approval: the bot principal that owns it (issue 17, object-level access).

The requester is the actor of the approval's ``approval.requested`` audit entry, which
``record_request`` writes in the same transaction as the approval row, under the unique
idempotency key ``<trade_id>:requested``. Reading it back from there keeps one source of truth
(the approval row's columns are covered by its hash and stay as they are).
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from sqlalchemy import select

from store.engine import AsyncSession
from store.tables import AuditRow


def _requested_key(trade_id: UUID) -> str:
    return f"{trade_id}:requested"


async def requester_of(session: AsyncSession, trade_id: UUID) -> str | None:
    """The principal that requested ``trade_id``'s approval, or None when there is none."""
    actor: str | None = (
        await session.execute(
            select(AuditRow.actor_id).where(AuditRow.idempotency_key == _requested_key(trade_id))
        )
    ).scalar_one_or_none()
    return actor


async def requesters_of(session: AsyncSession, trade_ids: Iterable[UUID]) -> dict[UUID, str]:
    """The requester of each of ``trade_ids`` that has an approval (absent ones are left out)."""
    keys = {_requested_key(trade_id): trade_id for trade_id in set(trade_ids)}
    if not keys:
        return {}
    rows = await session.execute(
        select(AuditRow.idempotency_key, AuditRow.actor_id).where(
            AuditRow.idempotency_key.in_(keys)
        )
    )
    return {keys[key]: actor for key, actor in rows.tuples() if key is not None}
