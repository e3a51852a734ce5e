"""Database plumbing shared by every process: column types that behave alike on PostgreSQL and
SQLite, and the async engine factory."""

from __future__ import annotations

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


def session_factory(
    engine: AsyncEngine, *, writer: bool = False
) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit.

    ``writer`` sessions (the worker's activities) read and then write in one transaction: on
    SQLite they begin IMMEDIATE, holding the write lock from their first read, so nothing commits
    between what they read and what they write (PostgreSQL gets the same from row locks). Read
    sessions begin DEFERRED: a request that reads and then waits on a workflow must not hold the
    lock the workflow's activities need.
    """
    bind = engine.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"}) if writer else engine
    return async_sessionmaker(bind, expire_on_commit=False)


def read_session(sessions: async_sessionmaker[AsyncSession]) -> AsyncSession:
    """A session of ``sessions`` for reading only: on SQLite it begins DEFERRED even when
    ``sessions`` are writers, so that a long read (the reconciler's, of every open row) never
    holds the write lock the decisions need."""
    bind: AsyncEngine = sessions.kw["bind"]
    return sessions(bind=bind.execution_options(**{_SQLITE_BEGIN: "DEFERRED"}))
