"""Failed logins are audited once per client address and minute, with their count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.failed_logins import ACTION, FailedLogins
from store.engine import session_factory
from store.tables import AuditRow

START = datetime(2026, 12, 2, 9, 30, 5, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


async def _entries(engine: AsyncEngine) -> list[AuditRow]:
    async with session_factory(engine)() as session:
        rows = await session.execute(
            select(AuditRow).where(AuditRow.action == ACTION).order_by(AuditRow.id)
        )
        return list(rows.scalars())


async def test_a_flood_becomes_one_entry_per_address_and_minute(engine: AsyncEngine) -> None:
    clock = Clock()
    failed = FailedLogins(session_factory(engine), clock=clock)
    for _ in range(400):
        failed.note("192.0.2.1")
    failed.note("2001:db8::7")
    assert await failed.flush() == 0  # the minute is not over yet
    assert await _entries(engine) == []

    clock.now = START + timedelta(seconds=40)  # 09:30:45, still the same minute
    failed.note("192.0.2.1")
    clock.now = START + timedelta(minutes=1)  # 09:31:05
    failed.note("192.0.2.1")
    assert await failed.flush() == 2
    entries = await _entries(engine)
    assert {(e.actor_id, e.payload["count"]) for e in entries} == {
        ("192.0.2.1", 401),
        ("2001:db8::7", 1),
    }
    assert all(e.error_code == "SEC-001" for e in entries)
    assert all(e.payload["minute"] == "2026-12-02T09:30:00+00:00" for e in entries)

    await failed.stop()  # what the current minute counted is written at shutdown
    later = await _entries(engine)
    assert [(e.actor_id, e.payload["count"], e.payload["minute"]) for e in later[2:]] == [
        ("192.0.2.1", 1, "2026-12-02T09:31:00+00:00")
    ]
    assert await failed.flush(everything=True) == 0
