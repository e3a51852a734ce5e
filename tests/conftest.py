"""Shared fixtures: real databases (PostgreSQL and the embedded SQLite), migrated to head.

PostgreSQL is the server at ``HITL_TEST_POSTGRES_URL``; when none answers there, the first test
that needs one starts it (``tests/postgres_server.py``) and the session stops it at the end.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.keys import ensure_keyrings
from hitl.settings import get_settings
from migrations.runner import upgrade_to_head
from store.engine import create_engine
from tests.postgres_server import ensure_postgres, stop_postgres

# These machines are shared and noisy (2 cores, servers and browsers beside the tests): an example
# that is slow to run or to generate is not a failure. Tests still set their own example counts.
hypothesis_settings.register_profile(
    "gateway", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("gateway")

POSTGRES_URL = os.environ.get(
    "HITL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
"""The one variable naming the PostgreSQL server the tests use."""

os.environ.setdefault("HITL_ALLOWED_OPERATORS", "alice,bob")

if not os.environ.get("HITL_KEYS_DIR"):
    # The tests, and every process they start, sign and verify with keyrings made for this run
    # (the RECORD keyring keys the MAC of every stored row and audit entry).
    _KEYS_DIR = Path(tempfile.mkdtemp(prefix="hitl-test-keys-")) / "keys"
    ensure_keyrings(_KEYS_DIR, now=datetime.now(UTC))
    os.environ["HITL_KEYS_DIR"] = str(_KEYS_DIR)

pytest_plugins = ["tests.temporal_fixtures"]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the PostgreSQL server the session started, if it started one."""
    del config
    stop_postgres()


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Every test reads settings anew, after its own monkeypatching of the environment."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def create_postgres_database() -> str:
    """A new, empty PostgreSQL database on the test server; returns its SQLAlchemy URL."""
    name = f"hitl_test_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(ensure_postgres, POSTGRES_URL)
    conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(url: str) -> None:
    """Drop a database made by ``create_postgres_database``."""
    name = make_url(url).database
    conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def empty_postgres_url() -> AsyncIterator[str]:
    """An empty PostgreSQL database, dropped after the test."""
    url = await create_postgres_database()
    yield url
    await drop_postgres_database(url)


@pytest.fixture
def empty_sqlite_url(tmp_path: Path) -> str:
    """An empty embedded SQLite database file."""
    return f"sqlite+aiosqlite:///{tmp_path / 'hitl.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database of each kind, migrated to head."""
    if request.param == "postgresql":
        url = await create_postgres_database()
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'hitl.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    yield url
    if request.param == "postgresql":
        await drop_postgres_database(url)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on ``database_url``, disposed after the test."""
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()
