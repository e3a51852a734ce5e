"""The one audit writer on PostgreSQL and SQLite: every field kept, keys unique, ``once`` skips."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from store.audit import GUARDIAN_TARGET, AuditEntry, audit_payload, record_audit, write_audit
from store.engine import session_factory
from store.tables import AuditRow


async def test_entry_is_written_with_every_field(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    trade_id = uuid.uuid4()
    entry = AuditEntry(
        actor_id="alice",
        action="approval.refused",
        target_id=trade_id,
        correlation_id="corr-1",
        payload={"decision": "approve", "n": 1},
        previous_state="AWAITING_APPROVAL",
        new_state=None,
        error_code="SEC-090",
    )
    assert await record_audit(sessions, entry)
    async with sessions() as session:
        [row] = (await session.execute(select(AuditRow))).scalars()
    assert (row.actor_id, row.action, row.target_type, row.target_id) == (
        "alice",
        "approval.refused",
        "approval",
        str(trade_id),
    )
    assert (row.previous_state, row.new_state, row.error_code) == (
        "AWAITING_APPROVAL",
        None,
        "SEC-090",
    )
    assert row.payload == {"decision": "approve", "n": 1}
    assert row.correlation_id == "corr-1"
    assert row.idempotency_key is None
    assert row.created_at.tzinfo is not None


async def test_once_skips_a_stored_key_and_plain_writes_refuse_it(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    first = AuditEntry(
        actor_id="system",
        action="notification.sent",
        target_id="guardian",
        target_type=GUARDIAN_TARGET,
        correlation_id="corr-2",
        payload={"message_id": "1"},
        idempotency_key="guardian:locked:1",
    )
    second = AuditEntry(
        actor_id="system",
        action="notification.sent",
        target_id="guardian",
        target_type=GUARDIAN_TARGET,
        correlation_id="corr-2",
        payload={"message_id": "2"},
        idempotency_key="guardian:locked:1",
    )
    assert await audit_payload(sessions, "guardian:locked:1") is None
    assert await record_audit(sessions, first, once=True)
    assert not await record_audit(sessions, second, once=True)
    assert await audit_payload(sessions, "guardian:locked:1") == {"message_id": "1"}
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            await write_audit(session, second)
    async with sessions() as session:
        rows = list((await session.execute(select(AuditRow))).scalars())
    assert [row.payload for row in rows] == [{"message_id": "1"}]
