"""A database that cannot be reached is an outage (the API answers 503 SEC-070), not a bug (500)."""

from __future__ import annotations

import socket

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from store.engine import create_engine, is_outage


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_postgresql_is_an_outage() -> None:
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/test")
    try:
        with pytest.raises(ConnectionRefusedError) as caught:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        assert is_outage(caught.value)
    finally:
        await engine.dispose()


async def test_a_bad_statement_is_not_an_outage(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT * FROM no_such_table"))
        assert not is_outage(caught.value)
    finally:
        await engine.dispose()


async def test_a_postgresql_statement_error_is_not_an_outage(empty_postgres_url: str) -> None:
    engine = create_engine(empty_postgres_url)
    try:
        with pytest.raises(DBAPIError) as caught:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT * FROM no_such_table"))
        assert not is_outage(caught.value)
    finally:
        await engine.dispose()
