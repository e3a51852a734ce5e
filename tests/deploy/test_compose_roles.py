"""The compose stack's database roles (issue 15 item 5, docs/audit.md "Database roles").

Checked without a Docker engine: docker-compose.yml runs deploy/postgres/roles.sql when the
PostgreSQL volume is first initialised, with the passwords it reads; the migrations connect as
``hitl_owner``, every other service of ours as ``hitl_app``. Then the real processes — the
Temporal dev server, a worker and the API — run on a fresh database prepared exactly that way
(roles.sql through psql, migrations as the owner, the services as the app role): requests,
decisions, a lifecycle, a Guardian lock and the continuous audit check all work, ``hitl audit
verify`` passes as the app role, and the app role is refused every way to unguard the record.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from migrations.runner import upgrade_to_head
from tests.chaos.harness import REPO, TOKENS, ChaosStack
from tests.conftest import create_postgres_database, drop_postgres_database
from tests.temporal_fixtures import wait_until

COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ROLES_SQL = REPO / "deploy" / "postgres" / "roles.sql"
INIT_DIR = "/docker-entrypoint-initdb.d/"
APP_SERVICES = ("api", "worker", "discord-bot")
_GETENV = re.compile(r"^\\getenv\s+(\w+)\s+(\w+)\s*$", re.MULTILINE)
_REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")

REFUSED = (
    "ALTER TABLE audit_log DISABLE TRIGGER USER",
    "ALTER TABLE audit_log DISABLE TRIGGER ALL",
    "ALTER TABLE audit_log ADD COLUMN note text",
    "DROP TABLE audit_log",
    "DROP TABLE hitl_approvals",
    "TRUNCATE audit_log",
    "TRUNCATE hitl_approvals",
    "UPDATE audit_log SET actor_id = 'mallory'",
    "DELETE FROM audit_log",
    "DELETE FROM hitl_approvals",
    "DELETE FROM audit_chain_head",
    "DROP TRIGGER trg_audit_log_no_update ON audit_log",
    "SET session_replication_role = replica",
)
"""What the app role must be refused: every way to change or unguard the record."""


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    return {str(k): str(v) for k, v in environment.items() if k != "<<"}


def _role_passwords() -> dict[str, str]:
    """The variable each psql variable of roles.sql is read from (``\\getenv``)."""
    return dict(_GETENV.findall(ROLES_SQL.read_text(encoding="utf-8")))


def _database_url(service: Mapping[str, Any]) -> Any:
    return make_url(_REQUIRED.sub(lambda m: m[1], _environment(service)["DATABASE_URL"]))


# --- docker-compose.yml, statically -----------------------------------------------------------


def test_postgres_runs_roles_sql_once_with_the_passwords_it_reads() -> None:
    postgres = _compose()["services"]["postgres"]
    mounts = [str(volume) for volume in postgres["volumes"]]
    scripts = [m for m in mounts if m.startswith("./deploy/postgres/roles.sql:")]
    assert scripts, f"roles.sql is not mounted: {mounts}"
    target = scripts[0].split(":")[1]
    assert target.startswith(INIT_DIR) and target.endswith(".sql"), target
    assert scripts[0].endswith(":ro")
    environment = _environment(postgres)
    for variable in _role_passwords().values():
        # Required, from the environment: roles.sql refuses to create a role without one.
        assert environment.get(variable) == f"${{{variable}:?set {variable}}}", variable
    # The image runs the init scripts in POSTGRES_DB: the database the gateway uses.
    assert environment["POSTGRES_DB"] == _database_url(_compose()["services"]["api"]).database


def test_migrations_run_as_the_owner_and_the_services_as_the_app_role() -> None:
    services = _compose()["services"]
    passwords = {"hitl_owner": "HITL_OWNER_DB_PASSWORD", "hitl_app": "HITL_APP_DB_PASSWORD"}
    assert set(passwords.values()) == set(_role_passwords().values())
    superuser = _environment(services["postgres"])["POSTGRES_USER"]
    migrate = _database_url(services["migrate"])
    assert migrate.username == "hitl_owner"
    assert migrate.password == passwords["hitl_owner"]
    for name in APP_SERVICES:
        url = _database_url(services[name])
        assert url.username == "hitl_app", f"{name} connects as {url.username}"
        assert url.password == passwords["hitl_app"], name
        assert url.username != superuser
        assert url.database == migrate.database


def test_the_workers_data_folder_is_a_volume_it_may_write() -> None:
    compose = _compose()
    worker = compose["services"]["worker"]
    folder = _environment(worker)["HITL_DATA_DIR"]
    volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in worker["volumes"]}
    assert folder in volumes, "audit-checkpoints.jsonl would die with the container"
    assert volumes[folder] in compose["volumes"], "a named volume, not a host path"
    # The image's user owns the folder, so the new volume is created writable for it.
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(rf"install -d -o 10001 -g 10001 .*{re.escape(folder)}", dockerfile)
    assert "USER 10001:10001" in dockerfile


# --- the real processes as the app role ---------------------------------------------------------


async def _psql(url: Any, script: Path, environment: Mapping[str, str]) -> None:
    """``script`` through psql as the postgres image's entrypoint runs an init script."""
    process = await asyncio.create_subprocess_exec(
        "psql",
        "-v",
        "ON_ERROR_STOP=1",
        "-q",
        "-h",
        url.host or "127.0.0.1",
        "-p",
        str(url.port or 5432),
        "-U",
        url.username or "postgres",
        "-d",
        url.database or "",
        "-f",
        str(script),
        env={**os.environ, **environment},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await process.communicate()
    assert process.returncode == 0, err.decode()


def _as(url: str, service: Mapping[str, Any], passwords: Mapping[str, str]) -> str:
    """``url``'s server and database with the role and password ``service`` connects with."""
    wanted = _database_url(service)
    return (
        make_url(url)
        .set(username=wanted.username, password=passwords[str(wanted.password)])
        .render_as_string(hide_password=False)
    )


def _body(trade_id: uuid.UUID) -> dict[str, str]:
    return {
        "trade_id": str(trade_id),
        "instrument": "EUR/USD",
        "side": "BUY",
        "risk_pct": "1.0",
        "confidence": "0.75",
        "request_price": "1.16120",
        "reasoning_summary": "roles check",
    }


async def _post(http: httpx.AsyncClient, path: str, principal: str, body: Any) -> httpx.Response:
    return await http.post(
        path, json=body, headers={"Authorization": f"Bearer {TOKENS[principal]}"}
    )


@pytest.mark.postgres
@pytest.mark.timeout(300)
@pytest.mark.skipif(shutil.which("psql") is None, reason="roles.sql is a psql script")
async def test_the_stack_works_as_the_app_role_which_cannot_unguard_the_record(
    tmp_path: Path,
) -> None:
    compose = _compose()["services"]
    passwords = {variable: f"pw-{variable.lower()}" for variable in _role_passwords().values()}
    url = await create_postgres_database()
    stack = None
    try:
        await _psql(make_url(url), ROLES_SQL, passwords)
        await asyncio.to_thread(upgrade_to_head, _as(url, compose["migrate"], passwords))
        app_url = _as(url, compose["worker"], passwords)
        stack = ChaosStack(tmp_path, app_url)
        await stack.start()
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
            accepted, rejected = uuid.uuid4(), uuid.uuid4()
            for trade in (accepted, rejected):
                answer = await _post(http, "/api/hitl/requests", "bot-1", _body(trade))
                assert answer.status_code == 201, answer.text
            answer = await _post(http, f"/api/hitl/{accepted}/approve", "alice", {})
            assert answer.json()["status"] == "ACCEPTED", answer.text
            answer = await _post(http, f"/api/hitl/{rejected}/reject", "alice", {"reason": "no"})
            assert answer.json()["status"] == "REJECTED", answer.text
            # A refused decision is audited by the API itself.
            answer = await _post(http, f"/api/hitl/{rejected}/approve", "alice", {})
            assert answer.status_code == 409, answer.text

            async def status_of(trade: uuid.UUID) -> str:
                answer = await http.get(
                    f"/api/hitl/{trade}", headers={"Authorization": f"Bearer {TOKENS['bot-1']}"}
                )
                return str(answer.json()["status"])

            # The post-trade snapshot is written after the decision's answer.
            for step, status in (("fill", "FILLED"), ("close", "CLOSED"), ("settle", "SETTLED")):
                answer = await _post(http, f"/api/hitl/{accepted}/{step}", "bot-1", {})
                assert answer.status_code == 200, answer.text
                assert await status_of(accepted) == status
            for action, body in (("lock", {"reason": "drill"}), ("unlock", None)):
                answer = await _post(http, f"/api/guardian/{action}", "admin", body)
                assert answer.status_code == 200, answer.text
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text

        # The auditor's check, as the app role: reading everything is allowed.
        checked = await asyncio.to_thread(
            subprocess.run,
            [str(Path(sys.executable).parent / "hitl"), "audit", "verify"],
            cwd=REPO,
            env=stack.env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "2 approvals" in checked.stdout, checked.stdout

        app = await asyncpg.connect(
            make_url(app_url).set(drivername="postgresql").render_as_string(hide_password=False)
        )
        try:
            # The worker's continuous check recorded its outcome (its one UPDATE-able row).
            await wait_until(
                lambda: app.fetchval("SELECT count(*) FROM audit_verification"),
                timeout=120,
            )
            for statement in REFUSED:
                with pytest.raises(asyncpg.PostgresError) as refused:
                    await app.execute(statement)
                assert isinstance(
                    refused.value, asyncpg.InsufficientPrivilegeError | asyncpg.RaiseError
                ), (statement, refused.value)
        finally:
            await app.close()
        for name in ("api", "worker"):
            log = (tmp_path / f"{name}.log").read_text(encoding="utf-8", errors="replace")
            assert "permission denied" not in log.lower(), f"{name}: {log[-3000:]}"
    finally:
        if stack is not None:
            stack.stop()
        await drop_postgres_database(url)
