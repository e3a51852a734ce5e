"""The events outbox: written in the transaction of the change it tells, read as a stream by
increasing id, woken by PostgreSQL NOTIFY (SQLite polls briefly)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event to add to the outbox: its type, the approval as it now stands, its key."""

    event_type: str
    approval: ApprovalRequest
    key: str


async def add_event(
    session: AsyncSession, *, event_type: str, approval: ApprovalRequest, key: str
) -> None:
    """Add the outbox event of this transaction's change (:func:`add_events` of one)."""
    await add_events(session, [OutboxEvent(event_type, approval, key)])


async def add_events(session: AsyncSession, events: Sequence[OutboxEvent]) -> None:
    """Add the outbox events of this transaction's changes, in order.

    Streams read the outbox by increasing id, so ids must become visible in order: on
    PostgreSQL a transaction-scoped advisory lock, taken just before the events' insert and held
    until commit, keeps a later id from committing before an earlier one. SQLite has one writer
    at a time anyway.
    """
    if not events:
        return
    if session.bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EVENT_ORDER_LOCK}
        )
    now = datetime.now(UTC)
    session.add_all(
        EventRow(
            event_type=event.event_type,
            trade_id=event.approval.trade_id,
            payload=event.approval.to_dict(),
            correlation_id=event.approval.correlation_id,
            created_at=now,
            idempotency_key=event.key,
        )
        for event in events
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


class ApprovalWatch:
    """Lets any number of requests wait for news of their approvals (``?wait=`` on the API),
    with one reader of the outbox per process however many wait.

    A waiter registers its trade id (``watch``), then reads the approval, then waits on the
    handle: every event committed for that trade after the registration wakes it, so a change
    that lands between its read and its wait is never missed. The reader runs only while someone
    waits, woken by the ``EventWaker`` (NOTIFY on PostgreSQL, polling on SQLite), and costs one
    query per wake-up, never one per waiter.
    """

    def __init__(self, sessions: Sessions, waker: EventWaker) -> None:
        self._sessions = sessions
        self._waker = waker
        self._waiters: dict[UUID, set[asyncio.Event]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None

    @property
    def waiting(self) -> int:
        """How many waiters are registered now."""
        return sum(len(waiters) for waiters in self._waiters.values())

    @contextlib.asynccontextmanager
    async def watch(self, trade_id: UUID) -> AsyncIterator[ApprovalNews]:
        """Register for news of ``trade_id`` until the block ends; read the approval inside it."""
        changed = asyncio.Event()
        self._waiters.setdefault(trade_id, set()).add(changed)
        try:
            await self._ensure_reading()
            yield ApprovalNews(changed)
        finally:
            waiters = self._waiters.get(trade_id)
            if waiters is not None:
                waiters.discard(changed)
                if not waiters:
                    del self._waiters[trade_id]
            if not self._waiters:
                self._stop_reading()

    async def _ensure_reading(self) -> None:
        # The reader's starting cursor is read after the registration: an event at or below it
        # was committed before the waiter reads the approval, so that read already shows it.
        if self._reader is None or self._reader.done():
            self._started = asyncio.get_running_loop().create_future()
            self._reader = asyncio.create_task(self._read(self._started))
        assert self._started is not None
        await asyncio.shield(self._started)

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self._reader = None
        self._started = None

    async def close(self) -> None:
        """Stop the reader (at shutdown)."""
        reader = self._reader
        self._stop_reading()
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read(self, started: asyncio.Future[None]) -> None:
        try:
            cursor = await latest_event_id(self._sessions)
        except asyncio.CancelledError:
            started.cancel()
            raise
        except Exception as exc:
            # The waiters that await the start get the failure; the next one starts afresh.
            started.set_exception(exc)
            return
        started.set_result(None)
        while True:
            try:
                news = await _news_after(self._sessions, cursor)
            except Exception as exc:  # the database's failures are as many as its drivers'
                log.warning(
                    "approval watch cannot read the outbox",
                    actor="api",
                    action="events.watch",
                    result="retrying",
                    error=str(exc),
                )
                await asyncio.sleep(POLL_SECONDS)
                continue
            for _, trade_id in news:
                for changed in self._waiters.get(trade_id, ()):
                    changed.set()
            if news:
                cursor = news[-1][0]
                continue
            await self._waker.wait()


class ApprovalNews:
    """A waiter's handle on one approval's news (see ``ApprovalWatch.watch``)."""

    def __init__(self, changed: asyncio.Event) -> None:
        self._changed = changed

    async def changed(self, within: float) -> bool:
        """Wait at most ``within`` seconds for an event of the approval; True if one came
        since the last call (read the approval again then), False when the time ran out."""
        try:
            await asyncio.wait_for(self._changed.wait(), max(within, 0.0))
        except TimeoutError:
            return False
        self._changed.clear()
        return True


async def _news_after(sessions: Sessions, cursor: int) -> list[tuple[int, UUID]]:
    """``(id, trade_id)`` of the events after ``cursor``, oldest first (no payloads)."""
    async with sessions() as session:
        rows = await session.execute(
            select(EventRow.id, EventRow.trade_id)
            .where(EventRow.id > cursor)
            .order_by(EventRow.id)
            .limit(BATCH)
        )
        return [(int(row.id), row.trade_id) for row in rows]
