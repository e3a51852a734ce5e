"""The benchmarks' databases: a fresh one per run, on SQLite or on a PostgreSQL server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def fresh_database(base_url: str | None, workdir: Path) -> AsyncIterator[str]:
    """A new, empty database: an SQLite file in ``workdir``, or a new database on the
    PostgreSQL server of ``base_url`` (dropped afterwards)."""
    if base_url is None or base_url.startswith("sqlite"):
        yield f"sqlite+aiosqlite:///{workdir / 'hitl.db'}"
        return
    name = f"hitl_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_asyncpg_dsn(base_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        conn = await asyncpg.connect(_asyncpg_dsn(base_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
