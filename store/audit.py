"""The audit trail's one writer, the chain it extends, and the MACs of the rows it records.

Every audit entry — a state change written beside its row, a refusal at the API's door or a
Discord button, a Discord message posted — goes through :func:`write_audit`, which gives it its
place in the keyed hash chain (``seq``, MAC, chain value; docs/audit.md) and moves the chain head
in the same transaction. The head row's lock serialises appends: on PostgreSQL the ``UPDATE``
below is a row lock held to commit, on SQLite it takes the database's write lock.

Lock order: a transaction takes the head lock *after* the rows it changes (approvals, the
Guardian row) and *before* the events outbox's lock, so appends never deadlock with each other.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import JSON, Insert, Table, Text, bindparam, cast, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hitl.audit_chain import (
    APPROVAL_TARGET as APPROVAL_TARGET,  # the target types, for the store's callers
)
from hitl.audit_chain import (
    AUDIT_CONTENT_FIELDS,
    ChainHead,
    audit_content,
    next_link,
)
from hitl.audit_chain import SNAPSHOT_TARGET as SNAPSHOT_TARGET
from hitl.record_mac import canonical_json_text
from store.integrity import record_keys
from store.tables import AuditRow, AuditVerificationRow

GUARDIAN_TARGET = "guardian"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One line of the audit trail: who did what to which target, from which state to which."""

    actor_id: str
    action: str
    target_id: UUID | str
    """A trade id (of an approval or its snapshot), or ``"guardian"``."""
    correlation_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    previous_state: str | None = None
    new_state: str | None = None
    error_code: str | None = None
    """The SEC code of a refusal or failure."""
    idempotency_key: str | None = None
    """Unique when set: the same entry is never written twice."""
    target_type: str = APPROVAL_TARGET
    record_mac: str | None = None
    """The MAC of the row as this entry leaves it (an approval's or the Guardian's state
    change, a snapshot recorded): the verifier checks the row against its last such entry."""


_LOCK_HEAD = text("UPDATE audit_chain_head SET seq = seq WHERE id = 1 RETURNING seq, chain")
_MOVE_HEAD = text("UPDATE audit_chain_head SET seq = :seq, chain = :chain WHERE id = 1")
"""Plain statements, not the ORM's ``update()``: an ORM UPDATE through a session first looks
for the objects it changes among every object the session holds (3 ms of CPU per entry)."""


async def _lock_head(session: AsyncSession) -> ChainHead:
    # A no-op UPDATE rather than SELECT ... FOR UPDATE: it also takes SQLite's write lock.
    row = (await session.execute(_LOCK_HEAD)).one()
    return ChainHead(int(row[0]), str(row[1]))


def _insert(dialect: str) -> Insert:
    """The audit row's INSERT, built once per dialect so SQLAlchemy compiles it once: every
    column a bound parameter, the payload given as its exact text (the JSON type would
    re-serialise it; PostgreSQL's ``json`` keeps the text it is given verbatim)."""
    statement = _INSERTS.get(dialect)
    if statement is None:
        text_value = bindparam("payload_text", type_=Text())
        payload = cast(text_value, JSON) if dialect == "postgresql" else text_value
        statement = _INSERTS[dialect] = insert(_AUDIT_TABLE).values(
            {name: payload if name == "payload" else bindparam(name) for name in _COLUMNS}
        )
    return statement


_COLUMNS = (*AUDIT_CONTENT_FIELDS, "seq", "mac_key_id", "mac", "chain")
"""Every column an append writes: the content its MAC covers, then its place in the chain."""
_INSERTS: dict[str, Insert] = {}
_AUDIT_TABLE = typing.cast(Table, AuditRow.__table__)
"""The table itself (not the ORM class): a list of rows is then one executemany, not the ORM's
bulk path."""


async def _append(session: AsyncSession, head: ChainHead, entries: Sequence[AuditEntry]) -> None:
    """Chain ``entries`` after ``head`` (held locked by the caller), in order: one INSERT for
    all of them, and the head moved once to the last."""
    keys = record_keys()
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for entry in entries:
        values: dict[str, Any] = {
            "actor_id": entry.actor_id,
            "action": entry.action,
            "target_type": entry.target_type,
            "target_id": str(entry.target_id),
            "previous_state": entry.previous_state,
            "new_state": entry.new_state,
            # Stored as its canonical JSON text, which the verifier then MACs without parsing.
            "payload": canonical_json_text(entry.payload),
            "correlation_id": entry.correlation_id,
            "error_code": entry.error_code,
            "created_at": now,
            "idempotency_key": entry.idempotency_key,
            "record_mac": entry.record_mac,
        }
        link = next_link(keys, head, audit_content(values))
        head = ChainHead(link.seq, link.chain)
        values["payload_text"] = values.pop("payload")
        values |= {"seq": link.seq, "mac_key_id": link.key_id, "mac": link.mac, "chain": link.chain}
        rows.append(values)
    await session.execute(_insert(session.bind.dialect.name), rows)
    await session.execute(_MOVE_HEAD, {"seq": head.seq, "chain": head.chain})


async def write_audit(session: AsyncSession, entry: AuditEntry, *, once: bool = False) -> bool:
    """Append ``entry`` to the chain in the session's transaction; whether a row was written.

    With ``once`` an entry whose idempotency key is already stored is skipped (a retried
    activity, a message already recorded); the check runs under the head lock, so two racing
    writers of one key append it once. Without ``once`` such a duplicate fails the transaction
    (IntegrityError), as a second write of one state change must.
    """
    head = await _lock_head(session)
    if once and entry.idempotency_key is not None:
        exists = await session.execute(
            select(AuditRow.id).where(AuditRow.idempotency_key == entry.idempotency_key)
        )
        if exists.first() is not None:
            return False
    await _append(session, head, [entry])
    return True


async def write_audits(session: AsyncSession, entries: Sequence[AuditEntry]) -> None:
    """Append ``entries``, in order, under one take of the head lock (a Guardian cascade's
    batch): the chain is the same as ``write_audit`` one by one would make, at a fraction of
    the statements. A duplicate idempotency key fails the transaction, as in ``write_audit``."""
    if entries:
        await _append(session, await _lock_head(session), entries)


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


# --- the continuous check's outcome (the worker writes it, /readyz reads it) ------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VerificationStatus:
    """The last continuous check: when, how far, and what it found (None: intact)."""

    checked_at: datetime
    seq: int
    problem: str | None

    @property
    def intact(self) -> bool:
        """Whether the last check found nothing."""
        return self.problem is None


async def record_verification(
    sessions: async_sessionmaker[AsyncSession],
    *,
    checked_at: datetime,
    head: ChainHead,
    problem: str | None,
) -> bool:
    """Store the outcome of a check; whether the problem differs from the previous outcome's
    (a new break, or one repaired), which is when operators are alerted."""
    async with sessions.begin() as session:
        row = (
            await session.execute(select(AuditVerificationRow).with_for_update())
        ).scalar_one_or_none()
        if row is None:
            session.add(
                AuditVerificationRow(
                    id=1,
                    checked_at=checked_at,
                    seq=head.seq,
                    chain=head.chain,
                    intact=problem is None,
                    problem=problem,
                )
            )
            return problem is not None
        changed = row.problem != problem
        row.checked_at, row.seq, row.chain = checked_at, head.seq, head.chain
        row.intact, row.problem = problem is None, problem
        return changed


async def verification_status(engine: AsyncEngine) -> VerificationStatus | None:
    """The last continuous check's outcome, or None before the first (``/readyz``)."""
    async with engine.connect() as connection:
        row = (await connection.execute(select(AuditVerificationRow))).first()
    if row is None:
        return None
    return VerificationStatus(checked_at=row.checked_at, seq=row.seq, problem=row.problem)
