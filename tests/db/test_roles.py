"""deploy/postgres/roles.sql: the services' role may read, insert and update what the gateway
changes, and nothing else — it cannot ALTER, DROP or TRUNCATE a table, disable the audit
triggers, or delete evidence; migrations run as the owner role (issue 15 item 5)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from migrations.runner import upgrade_to_head
from store.engine import create_engine, session_factory
from tests.conftest import create_postgres_database, drop_postgres_database
from tests.store.test_audit_record import build_record

ROLES_SQL = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "roles.sql"

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("psql") is None, reason="roles.sql is a psql script"),
]

REFUSED = (
    "ALTER TABLE audit_log DISABLE TRIGGER USER",
    "ALTER TABLE audit_log DROP COLUMN chain",
    "DROP TABLE audit_log",
    "TRUNCATE audit_log",
    "DELETE FROM audit_log",
    "UPDATE audit_log SET actor_id = 'mallory'",
    "DELETE FROM hitl_approvals",
    "DROP TRIGGER trg_audit_log_no_update ON audit_log",
    "CREATE TABLE shadow (id int)",
)


def _as(url: str, role: str) -> str:
    return make_url(url).set(username=role, password="pw").render_as_string(hide_password=False)


async def _psql(url: str) -> None:
    parsed = make_url(url)
    process = await asyncio.create_subprocess_exec(
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-h",
        parsed.host or "127.0.0.1",
        "-p",
        str(parsed.port or 5432),
        "-U",
        parsed.username or "postgres",
        "-d",
        parsed.database or "",
        "-f",
        str(ROLES_SQL),
        env={**os.environ, "HITL_OWNER_DB_PASSWORD": "pw", "HITL_APP_DB_PASSWORD": "pw"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await process.communicate()
    assert process.returncode == 0, err.decode()


async def test_the_app_role_writes_the_record_but_cannot_unguard_it() -> None:
    url = await create_postgres_database()
    try:
        await _psql(url)
        await _psql(url)  # run again: idempotent
        await asyncio.to_thread(upgrade_to_head, _as(url, "hitl_owner"))
        engine = create_engine(_as(url, "hitl_app"))
        try:
            # Everything the gateway does in a day, as the app role.
            await build_record(session_factory(engine, writer=True))
        finally:
            await engine.dispose()
        app = await asyncpg.connect(
            make_url(_as(url, "hitl_app"))
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        try:
            assert await app.fetchval("SELECT count(*) FROM audit_log") == 10
            for statement in REFUSED:
                with pytest.raises(asyncpg.PostgresError) as refused:
                    await app.execute(statement)
                assert isinstance(
                    refused.value,
                    asyncpg.InsufficientPrivilegeError | asyncpg.RaiseError,
                ), statement
        finally:
            await app.close()
    finally:
        await drop_postgres_database(url)
