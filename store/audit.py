"""The audit trail's one writer, and the one read of it that the notifier makes.

Every audit entry — a state change written beside its row, a refusal at the API's door or a
Discord button, a Discord message posted — goes through :func:`write_audit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from store.tables import AuditRow

APPROVAL_TARGET = "approval"
GUARDIAN_TARGET = "guardian"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One line of the audit trail: who did what to which target, from which state to which."""

    actor_id: str
    action: str
    target_id: UUID | str
    """A trade id, or ``"guardian"``."""
    correlation_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    previous_state: str | None = None
    new_state: str | None = None
    error_code: str | None = None
    """The SEC code of a refusal or failure."""
    idempotency_key: str | None = None
    """Unique when set: the same entry is never written twice."""
    target_type: str = APPROVAL_TARGET


async def write_audit(session: AsyncSession, entry: AuditEntry, *, once: bool = False) -> bool:
    """Insert ``entry`` in the session's transaction; returns whether a row was written.

    With ``once`` an entry whose idempotency key is already stored is skipped (a retried
    activity, a message already recorded); without it such a duplicate fails the transaction
    (IntegrityError), as a second write of one state change must.
    """
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    statement = insert(AuditRow).values(
        actor_id=entry.actor_id,
        action=entry.action,
        target_type=entry.target_type,
        target_id=str(entry.target_id),
        previous_state=entry.previous_state,
        new_state=entry.new_state,
        payload=entry.payload,
        correlation_id=entry.correlation_id,
        error_code=entry.error_code,
        created_at=datetime.now(UTC),
        idempotency_key=entry.idempotency_key,
    )
    if once:
        statement = statement.on_conflict_do_nothing(index_elements=[AuditRow.idempotency_key])
    result = await session.execute(statement)
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def record_audit(
    sessions: async_sessionmaker[AsyncSession], entry: AuditEntry, *, once: bool = False
) -> bool:
    """:func:`write_audit` in a transaction of its own (refusals, notices: nothing else changes)."""
    async with sessions.begin() as session:
        return await write_audit(session, entry, once=once)


async def audit_payload(
    sessions: async_sessionmaker[AsyncSession], idempotency_key: str
) -> dict[str, Any] | None:
    """The payload of the entry recorded under ``idempotency_key``, or None."""
    async with sessions() as session:
        payload: dict[str, Any] | None = (
            await session.execute(
                select(AuditRow.payload).where(AuditRow.idempotency_key == idempotency_key)
            )
        ).scalar_one_or_none()
    return payload
