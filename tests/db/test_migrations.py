"""Migrations: up, down and up again on both databases, leaving the ``store.tables`` schema."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import CheckConstraint, inspect, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from migrations.runner import downgrade_to_base, upgrade_to_head
from store.engine import create_engine
from store.tables import Base

REPO = Path(__file__).resolve().parents[2]

PG_GUARDS = {
    "hitl_refuse_delete",
    "trg_hitl_approvals_no_delete",
    "trg_hitl_approvals_no_truncate",
    "trg_audit_log_no_delete",
    "trg_audit_log_no_update",
    "trg_audit_log_no_truncate",
    "trg_audit_chain_head_no_delete",
    "trg_audit_chain_head_no_truncate",
    # Not a guard, but a trigger all the same: wakes event streams (migration 0002).
    "hitl_notify_event",
    "trg_hitl_events_notify",
}
SQLITE_GUARDS = {
    "trg_hitl_approvals_no_delete",
    "trg_audit_log_no_delete",
    "trg_audit_log_no_update",
    "trg_audit_chain_head_no_delete",
}

T = TypeVar("T")
HEAD = "0008"


@pytest.fixture(params=["empty_postgres_url", "empty_sqlite_url"], ids=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (never migrated)."""
    url: str = request.getfixturevalue(request.param)
    return url


async def _on(url: str, inspect_schema: Callable[[Connection], T]) -> T:
    # A fresh unpooled engine each time: nothing cached survives a migration, and no connection
    # is left open to block the fixture's DROP DATABASE.
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(inspect_schema)
    finally:
        await engine.dispose()


def _table_names(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _schema_diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _guards(conn: Connection) -> set[str]:
    """Names of the SEC-080 triggers and functions, which Alembic's comparison cannot see."""
    if conn.dialect.name == "postgresql":
        triggers = conn.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"))
        functions = conn.execute(
            text(
                "SELECT proname FROM pg_proc "
                "WHERE proname IN ('hitl_refuse_delete', 'hitl_notify_event')"
            )
        )
        return set(triggers.scalars()) | set(functions.scalars())
    rows = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
    return set(rows.scalars())


def _version(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _expected_guards(url: str) -> set[str]:
    return PG_GUARDS if url.startswith("postgresql") else SQLITE_GUARDS


async def _assert_at_head(url: str) -> None:
    assert await _on(url, _table_names) == {*Base.metadata.tables, "alembic_version"}
    assert await _on(url, _schema_diff) == []
    assert await _on(url, _guards) == _expected_guards(url)
    assert await _on(url, _version) == HEAD


async def _assert_at_base(url: str) -> None:
    assert await _on(url, _table_names) == {"alembic_version"}
    assert await _on(url, _guards) == set()
    assert await _on(url, _version) is None


async def test_upgrade_downgrade_upgrade_round_trip(empty_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_url)
    await _assert_at_head(empty_url)

    await asyncio.to_thread(downgrade_to_base, empty_url)
    await _assert_at_base(empty_url)

    await asyncio.to_thread(upgrade_to_head, empty_url)
    await _assert_at_head(empty_url)


async def test_upgrade_to_head_twice_is_a_no_op(empty_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, empty_url)
    await asyncio.to_thread(upgrade_to_head, empty_url)
    await _assert_at_head(empty_url)


def _check_constraints(conn: Connection) -> dict[str, set[str | None]]:
    inspector = inspect(conn)
    return {
        table: {ck["name"] for ck in inspector.get_check_constraints(table)}
        for table in Base.metadata.tables
    }


def _partial_indexes(conn: Connection) -> dict[str, bool]:
    """Index name -> whether it has a WHERE clause."""
    inspector = inspect(conn)
    where_key = f"{conn.dialect.name}_where"
    return {
        str(index["name"]): index.get("dialect_options", {}).get(where_key) is not None
        for table in Base.metadata.tables
        for index in inspector.get_indexes(table)
    }


async def test_schema_details_alembic_does_not_compare(engine: AsyncEngine) -> None:
    """CHECK constraints and partial-index predicates are outside ``compare_metadata``."""
    expected_checks = {
        table.name: {c.name for c in table.constraints if isinstance(c, CheckConstraint)}
        for table in Base.metadata.tables.values()
    }
    expected_partial = {
        str(index.name): bool(index.dialect_options[engine.dialect.name]["where"] is not None)
        for table in Base.metadata.tables.values()
        for index in table.indexes
    }
    async with engine.connect() as conn:
        assert await conn.run_sync(_check_constraints) == expected_checks
        partial = await conn.run_sync(_partial_indexes)
    # PostgreSQL also reports the indexes behind UNIQUE constraints; the metadata lists only Index.
    assert {name: partial[name] for name in expected_partial} == expected_partial
    assert {name for name, is_partial in partial.items() if is_partial} == {
        "idx_hitl_pending",
        "idx_deep_link_unused",
        "idx_notices_pending",
    }


def _run(args: list[str], *, cwd: Path, env: dict[str, str]) -> None:
    # Outside the repository on purpose: neither entry point may depend on the working directory.
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def _environment(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    # The child runs elsewhere, so it finds the project through the path, installed or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(overrides)
    return env


async def test_cli_migrates_the_settings_database_and_creates_its_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    env = _environment(HITL_DATA_DIR=str(data_dir))
    await asyncio.to_thread(_run, ["-m", "migrations.runner", "upgrade"], cwd=tmp_path, env=env)
    url = f"sqlite+aiosqlite:///{data_dir / 'hitl.db'}"
    await _assert_at_head(url)

    await asyncio.to_thread(_run, ["-m", "migrations.runner", "downgrade"], cwd=tmp_path, env=env)
    await _assert_at_base(url)


async def test_alembic_command_line_takes_the_url_from_x_argument(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    args = ["-m", "alembic", "-c", str(REPO / "alembic.ini"), "-x", f"url={url}", "upgrade", "head"]
    await asyncio.to_thread(_run, args, cwd=tmp_path, env=_environment())
    await _assert_at_head(url)
