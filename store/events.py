"""The events outbox: written in the transaction of the change it tells, read as a stream by
increasing id, woken by PostgreSQL NOTIFY (SQLite polls briefly)."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from pydantic import BaseModel
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from hitl.models import ApprovalRequest
from store.engine import AsyncSession, Sessions
from store.tables import EventRow

log = structlog.get_logger(__name__)

EVENT_CHANNEL = "hitl_events"
"""The NOTIFY channel of migration 0002's trigger."""
POLL_SECONDS = 0.5
BATCH = 500

# Any constant: the key of the PostgreSQL advisory lock that orders outbox commits.
_EVENT_ORDER_LOCK = 0x48495454


async def add_event(
    session: AsyncSession, *, event_type: str, approval: ApprovalRequest, key: str
) -> None:
    """Add the outbox event of this transaction's change.

    Streams read the outbox by increasing id, so ids must become visible in order: on
    PostgreSQL a transaction-scoped advisory lock, taken just before the event's insert and held
    until commit, keeps a later id from committing before an earlier one. SQLite has one writer
    at a time anyway.
    """
    if session.bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EVENT_ORDER_LOCK}
        )
    session.add(
        EventRow(
            event_type=event_type,
            trade_id=approval.trade_id,
            payload=approval.to_dict(),
            correlation_id=approval.correlation_id,
            created_at=datetime.now(UTC),
            idempotency_key=key,
        )
    )


class StreamEvent(BaseModel):
    """One outbox event as streamed: ``id`` is the cursor to resume after."""

    id: int
    type: str
    trade_id: UUID
    correlation_id: str
    created_at: datetime
    approval: dict[str, Any]


async def events_after(sessions: Sessions, cursor: int, *, limit: int = BATCH) -> list[StreamEvent]:
    """Events with an id above ``cursor``, oldest first."""
    async with sessions() as session:
        rows = await session.execute(
            select(EventRow).where(EventRow.id > cursor).order_by(EventRow.id).limit(limit)
        )
        return [
            StreamEvent(
                id=row.id,
                type=row.event_type,
                trade_id=row.trade_id,
                correlation_id=row.correlation_id,
                created_at=row.created_at,
                approval=row.payload,
            )
            for row in rows.scalars()
        ]


async def latest_event_id(sessions: Sessions) -> int:
    """The id of the newest event (0 if none): where a client that wants only news starts."""
    async with sessions() as session:
        row = await session.execute(select(EventRow.id).order_by(EventRow.id.desc()).limit(1))
        return int(row.scalar_one_or_none() or 0)


class EventWaker:
    """Wakes every stream when a new event is committed.

    On PostgreSQL one LISTEN connection per process turns NOTIFYs into wake-ups; on SQLite
    (one process, no NOTIFY) streams simply look again every half second.
    """

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._condition = asyncio.Condition()
        self._connection: Any = None

    @property
    def listens(self) -> bool:
        """Whether wake-ups come from NOTIFY (else streams poll)."""
        return self._connection is not None

    async def start(self) -> None:
        """Open the LISTEN connection on PostgreSQL; a failure falls back to polling."""
        url = make_url(self._url)
        if url.get_backend_name() != "postgresql":
            return
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            self._connection = await asyncpg.connect(dsn)
            await self._connection.add_listener(EVENT_CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning(
                "event stream falls back to polling",
                actor="api",
                action="events.listen",
                result="polling",
                error=str(exc),
            )
            self._connection = None

    async def stop(self) -> None:
        """Close the LISTEN connection."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None

    def _notified(self, *_: object) -> None:
        asyncio.get_running_loop().create_task(self._wake_all())

    async def _wake_all(self) -> None:
        async with self._condition:
            self._condition.notify_all()

    async def wait(self) -> None:
        """Return when there may be new events (NOTIFY, or the polling interval elapsed)."""
        async with self._condition:
            with contextlib.suppress(TimeoutError):
                # Even with NOTIFY, look again now and then: a lost notification costs at most
                # this long, never an event.
                timeout = 5.0 if self.listens else POLL_SECONDS
                await asyncio.wait_for(self._condition.wait(), timeout)
