"""Database plumbing shared by every process: column types that behave alike on PostgreSQL and
SQLite, and the async engine factory."""

from __future__ import annotations

import asyncio
import weakref
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeAlias

from sqlalchemy import DateTime, Dialect, Numeric, String, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine as AsyncEngine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.types import TypeDecorator, TypeEngine

from hitl.decimals import MAX_DIGITS, PLACES, canonical_decimal

Sessions: TypeAlias = async_sessionmaker[AsyncSession]


_OUTAGE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53")
"""PostgreSQL's connection exceptions, shutdowns, "cannot connect now" and exhausted resources."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (down, restarting, the network, a
    full pool) rather than a bug: callers answer 503 and let the client retry, never 500."""
    if isinstance(exc, OSError | PoolTimeoutError):
        return True  # asyncpg's refused or reset connections arrive unwrapped
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc.orig, OSError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_OUTAGE_SQLSTATES)


"""A session factory: what every process hands the store's functions."""


class Decimal8(TypeDecorator[Decimal]):
    """NUMERIC(18,8) on PostgreSQL; on SQLite, which has no exact decimal type, a fixed-point
    string, so that all 8 places survive a round trip."""

    impl = Numeric(MAX_DIGITS, PLACES, asdecimal=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(MAX_DIGITS + 2))
        return dialect.type_descriptor(Numeric(MAX_DIGITS, PLACES, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        text = canonical_decimal(Decimal(value))
        return text if dialect.name == "sqlite" else Decimal(text)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(str(value))


class UtcDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE that always hands back timezone-aware UTC datetimes
    (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30})
        engine = create_async_engine(url, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # pysqlite issues BEGIN only at a transaction's first write, so its reads would run
            # outside the transaction that writes: another writer could commit in between.
            # SQLAlchemy's recipe: let SQLAlchemy begin; writers take the write lock at once.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(connection: Any) -> None:
            mode = connection.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
            connection.exec_driver_sql(f"BEGIN {mode}")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


_SQLITE_BEGIN = "hitl_sqlite_begin"


class _QueuedWriterSession(AsyncSession):
    """A writer's session on SQLite: it waits for the process's earlier writers, in the order
    they asked, before it begins.

    SQLite gives its write lock to whichever connection retries first: a writer that finds it
    taken sleeps and tries again, backing off up to 100 ms, so one that asked first may lose to
    every later one, again and again (under load, decisions waited seconds and some timed out;
    issue 19). The worker's writers share one process, so they queue here instead, first come
    first served, and find the lock free when their turn comes; writers of other processes
    (the API's) still meet SQLite's own retries.
    """

    def __init__(self, *args: Any, writers: _WriterQueue, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._writers = writers
        self._queued: asyncio.Lock | None = None

    async def _take_turn(self) -> None:
        if self._queued is None:
            self._queued = await self._writers.take()

    def _end_turn(self) -> None:
        lock, self._queued = self._queued, None
        if lock is not None:
            self._writers.give_back(lock)

    async def __aenter__(self) -> _QueuedWriterSession:
        await self._take_turn()
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        try:
            await super().__aexit__(type_, value, traceback)
        finally:
            self._end_turn()

    def _maker_context_manager(self) -> Any:
        return _QueuedBegin(self)


class _QueuedBegin:
    """``sessions.begin()`` for a queued writer: its turn first, then SQLAlchemy's own."""

    def __init__(self, session: _QueuedWriterSession) -> None:
        self._session = session
        self._inner: Any = None

    async def __aenter__(self) -> _QueuedWriterSession:
        await self._session._take_turn()
        try:
            self._inner = AsyncSession._maker_context_manager(self._session)
            return await self._inner.__aenter__()  # type: ignore[no-any-return]
        except BaseException:
            self._session._end_turn()
            raise

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        try:
            await self._inner.__aexit__(type_, value, traceback)
        finally:
            self._session._end_turn()


class _WriterQueue:
    """One FIFO lock per event loop (``asyncio.Lock`` wakes its waiters in order)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._holders: weakref.WeakKeyDictionary[asyncio.Lock, asyncio.Task[Any]] = (
            weakref.WeakKeyDictionary()
        )

    async def take(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        task = asyncio.current_task()
        if task is not None and self._holders.get(lock) is task:
            # A writer inside a writer would wait for itself for ever (SQLite's own lock made
            # it fail after the busy timeout): a bug, said at once.
            raise RuntimeError("a writer's session opened inside another of the same task")
        await lock.acquire()
        if task is not None:
            self._holders[lock] = task
        return lock

    def give_back(self, lock: asyncio.Lock) -> None:
        self._holders.pop(lock, None)
        lock.release()


def session_factory(
    engine: AsyncEngine, *, writer: bool = False
) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit.

    ``writer`` sessions (the worker's activities) read and then write in one transaction: on
    SQLite they begin IMMEDIATE, holding the write lock from their first read, so nothing commits
    between what they read and what they write (PostgreSQL gets the same from row locks), and
    they take that lock in the order they asked for it (``_QueuedWriterSession``). Read
    sessions begin DEFERRED: a request that reads and then waits on a workflow must not hold the
    lock the workflow's activities need.
    """
    if not writer:
        return async_sessionmaker(engine, expire_on_commit=False)
    bind = engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
    if engine.dialect.name != "sqlite":
        return async_sessionmaker(bind, expire_on_commit=False)
    return async_sessionmaker(
        bind, expire_on_commit=False, class_=_QueuedWriterSession, writers=_WriterQueue()
    )


def read_session(sessions: async_sessionmaker[AsyncSession]) -> AsyncSession:
    """A session of ``sessions``' database for reading only: on SQLite it begins DEFERRED and
    does not queue, even when ``sessions`` are writers, so that a long read (the reconciler's,
    of every open row) never holds the write lock the decisions need, nor waits for it."""
    bind: AsyncEngine = sessions.kw["bind"]
    return AsyncSession(
        bind=bind.execution_options(**{_SQLITE_BEGIN: "DEFERRED"}), expire_on_commit=False
    )
