"""The Guardian kill-switch through HTTP: immediate refusal, cascade rejection of everything
pending, no acceptance after the acknowledgement, unlock, and a lock that survives restarts."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from migrations.runner import upgrade_to_head
from store.engine import create_engine, session_factory
from store.tables import ApprovalRow, AuditRow, EventRow
from tests.api.conftest import Api, auth, start_api
from tests.api.test_approvals_api import assert_error, create, proposal_body
from tests.conftest import create_postgres_database, drop_postgres_database
from tests.temporal_fixtures import start_gateway, wait_until

REPO = Path(__file__).resolve().parents[2]


def blocked() -> float:
    return REGISTRY.get_sample_value("blocked_by_guardian_total") or 0.0


async def lock(api: Api, reason: str = "drawdown limit hit", who: str = "admin") -> dict[str, Any]:
    response = await api.http.post("/api/guardian/lock", json={"reason": reason}, headers=auth(who))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    # In force now; the pending are rejected right after, in batches: wait for the last.
    await wait_until(lambda: pending_remaining(api), timeout=30)
    return body


async def pending_remaining(api: Api) -> bool:
    """True once the lock's rejection of the pending approvals is done (or it was unlocked)."""
    response = await api.http.get("/api/guardian/status", headers=auth("bob"))
    assert response.status_code == 200, response.text
    return bool(response.json()["pending_remaining"] == 0)


async def unlock(api: Api) -> None:
    response = await api.http.post("/api/guardian/unlock", json={}, headers=auth("admin"))
    assert response.status_code == 200, response.text
    assert response.json()["locked"] is False


async def rows(api: Api) -> dict[str, ApprovalRow]:
    async with api.gw.sessions() as session:
        result = await session.execute(select(ApprovalRow))
        return {str(row.trade_id): row for row in result.scalars()}


async def test_guardian_lock_cascade_rejects_every_pending_approval(api: Api) -> None:
    """The seed's end-to-end test 20.4."""
    before = blocked()
    pending = [(await create(api))["trade_id"] for _ in range(5)]
    status = await lock(api)
    assert status["locked"] is True
    assert status["reason"] == "drawdown limit hit"
    assert status["changed_by"] == "admin"

    # The lock is in force when acknowledged; the pending are rejected in batches right after
    # (the status says how many are left), with no waiting on their workflows.
    assert await pending_remaining(api)
    stored = await rows(api)
    for trade_id in pending:
        row = stored[trade_id]
        assert (row.status, row.decision_reason, row.decision_channel) == (
            "REJECTED",
            "GUARDIAN_LOCK",
            "SYSTEM",
        )
    await wait_until(lambda: blocked() == before + 5)
    async with api.gw.sessions() as session:
        decided = await session.execute(
            select(EventRow.trade_id).where(EventRow.event_type == "hitl.decided")
        )
        assert {str(t) for t in decided.scalars()} >= set(pending)
        audits = await session.execute(
            select(AuditRow.target_id, AuditRow.error_code).where(
                AuditRow.action == "approval.decided"
            )
        )
        assert {t for t, code in audits if code == "SEC-020"} >= set(pending)
        locked = await session.execute(select(AuditRow).where(AuditRow.action == "guardian.locked"))
        assert [a.actor_id for a in locked.scalars()] == ["admin"]
    # The workflows adopt their rejection and end; one summary goes to the operators.
    for trade_id in pending:
        handle = api.gw.env.client.get_workflow_handle(f"approval-{trade_id}")
        await asyncio.wait_for(handle.result(), 15)
    await wait_until(lambda: len(api.gw.notifier.cascades) == 1)
    assert api.gw.notifier.cascades[0].rejected == 5
    # Deciding one now says why it ended.
    response = await api.http.post(
        f"/api/hitl/{pending[0]}/approve", json={}, headers=auth("alice")
    )
    assert_error(response, 423, "SEC-020")
    await unlock(api)


@pytest.fixture
async def locked(api: Api) -> AsyncIterator[tuple[Api, str]]:
    """The app with one approval that was pending when the Guardian locked."""
    pending = (await create(api))["trade_id"]
    await lock(api)
    yield api, pending
    await unlock(api)


@settings(
    max_examples=15,
    deadline=None,
    # The fixture is shared by the examples on purpose: they all run against one lock.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    operations=st.lists(st.sampled_from(["create", "approve", "reject"]), min_size=1, max_size=4),
    operator=st.sampled_from(["alice", "bob"]),
)
async def test_property_3_guardian_lock_blocks_all_hitl_operations(
    locked: tuple[Api, str], operations: list[str], operator: str
) -> None:
    api, pending = locked
    for operation in operations:
        before = blocked()
        if operation == "create":
            response = await api.http.post(
                "/api/hitl/requests", json=proposal_body(api), headers=auth("bot-1")
            )
        else:
            response = await api.http.post(
                f"/api/hitl/{pending}/{operation}", json={}, headers=auth(operator)
            )
        assert_error(response, 423, "SEC-020")
        assert blocked() == before + 1
    assert len(await rows(api)) == 1  # nothing was created while locked


async def test_unlock_resumes_normal_operation(api: Api) -> None:
    await lock(api)
    await unlock(api)
    trade_id = (await create(api))["trade_id"]
    response = await api.http.post(f"/api/hitl/{trade_id}/approve", json={}, headers=auth("alice"))
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ACCEPTED"


async def test_only_admins_and_the_risk_engine_may_lock(api: Api) -> None:
    for principal in ("alice", "bot-1"):
        response = await api.http.post(
            "/api/guardian/lock", json={"reason": "x"}, headers=auth(principal)
        )
        assert_error(response, 403, "SEC-090")
    status = await api.http.get("/api/guardian/status", headers=auth("alice"))
    assert status.json()["locked"] is False


@pytest.fixture
async def postgres_api(dev_env: WorkflowEnvironment) -> AsyncIterator[Api]:
    """The app on PostgreSQL, where decisions and the lock really run concurrently."""
    url = await create_postgres_database()
    await asyncio.to_thread(upgrade_to_head, url)
    engine = create_engine(url)
    gw = await start_gateway(dev_env, session_factory(engine, writer=True))
    async with gw.worker:
        async for client in start_api(gw, url, rate_limit="1000/second"):
            yield client
    await engine.dispose()
    await drop_postgres_database(url)


async def test_no_approval_ends_accepted_after_the_lock_is_acknowledged(postgres_api: Api) -> None:
    api = postgres_api
    trade_ids = [(await create(api))["trade_id"] for _ in range(12)]

    async def decide(trade_id: str) -> int:
        response = await api.http.post(
            f"/api/hitl/{trade_id}/approve", json={}, headers=auth("alice")
        )
        return response.status_code

    decisions = [asyncio.create_task(decide(t)) for t in trade_ids]
    await asyncio.sleep(0.05)  # some decisions are in flight when the lock comes
    await lock(api)
    statuses = await asyncio.gather(*decisions)
    assert set(statuses) <= {200, 423}
    async with api.gw.sessions() as session:
        lock_entry = (
            await session.execute(select(AuditRow).where(AuditRow.action == "guardian.locked"))
        ).scalar_one()
        accepted = (
            await session.execute(
                select(AuditRow).where(
                    AuditRow.action == "approval.decided", AuditRow.new_state == "ACCEPTED"
                )
            )
        ).scalars()
        # Every acceptance committed before the lock's own entry: none after the ack.
        assert all(entry.id < lock_entry.id for entry in accepted)

    async def decided() -> bool:
        stored = await rows(api)
        return all(stored[t].status in ("ACCEPTED", "REJECTED") for t in trade_ids)

    await wait_until(decided)  # the lock's rejections follow its acknowledgement
    stored = await rows(api)
    assert all(stored[t].status in ("ACCEPTED", "REJECTED") for t in trade_ids)
    assert [s == 200 for s in statuses] == [stored[t].status == "ACCEPTED" for t in trade_ids]


async def test_the_lock_survives_a_worker_and_api_restart(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        async for api in start_api(gw, sqlite_url):
            await lock(api, reason="exchange outage")
    # A new worker and a new API process: still locked.
    async with gw.new_worker():
        async for api in start_api(gw, sqlite_url):
            status = (await api.http.get("/api/guardian/status", headers=auth("bob"))).json()
            assert status["locked"] is True
            assert status["reason"] == "exchange outage"
            response = await api.http.post(
                "/api/hitl/requests", json=proposal_body(api), headers=auth("bot-1")
            )
            assert_error(response, 423, "SEC-020")
            await unlock(api)
            await create(api)


def _tamper_file(database: Path, trade_id: str) -> None:
    """Someone with the database file (not the keys) cuts one pending approval's risk."""
    with sqlite3.connect(database) as connection:
        changed = connection.execute(
            "UPDATE hitl_approvals SET risk_pct = 0.1 WHERE trade_id IN (?, ?)",
            (trade_id, UUID(trade_id).hex),
        ).rowcount
    assert changed == 1


def _audit_verify(database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``hitl audit verify`` as an auditor runs it (``python -m launcher``, the console
    script's module, from the repository root)."""
    return subprocess.run(
        [sys.executable, "-m", "launcher", "audit", "verify", "--url", database_url],
        cwd=REPO,
        env={**os.environ, "HITL_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


async def test_a_tampered_pending_approval_is_rejected_unsealed_with_an_alert(
    api: Api, sqlite_url: str, tmp_path: Path
) -> None:
    """A pending approval altered in the database file is rejected by the lock too (reason
    GUARDIAN_LOCK), with a security alert and an ``approval.integrity_failure`` entry; its row
    is not resealed, so ``hitl audit verify`` still reports the tampering."""
    sound = (await create(api))["trade_id"]
    altered = (await create(api))["trade_id"]
    before = (await rows(api))[altered]
    assert (await asyncio.to_thread(_audit_verify, sqlite_url, tmp_path)).returncode == 0
    _tamper_file(Path(sqlite_url.removeprefix("sqlite+aiosqlite:///")), altered)

    await lock(api)  # returns once nothing is pending any more

    stored = await rows(api)
    row = stored[altered]
    assert (row.status, row.decision_reason, row.decision_channel) == (
        "REJECTED",
        "GUARDIAN_LOCK",
        "SYSTEM",
    )
    assert row.comment is not None and "Guardian locked by admin" in row.comment
    assert "integrity" in row.comment
    # Left as found: the forged value, and the MAC the gateway last wrote (not a new one).
    assert row.risk_pct == Decimal("0.1")
    assert (row.mac, row.mac_key_id, row.row_hash) == (
        before.mac,
        before.mac_key_id,
        before.row_hash,
    )
    assert (stored[sound].status, stored[sound].decision_reason) == ("REJECTED", "GUARDIAN_LOCK")
    async with api.gw.sessions() as session:
        entries = (
            (await session.execute(select(AuditRow).where(AuditRow.target_id == altered)))
            .scalars()
            .all()
        )
    failure = [e for e in entries if e.action == "approval.integrity_failure"]
    assert len(failure) == 1
    assert failure[0].error_code == "SEC-080"
    assert failure[0].actor_id == "admin"
    assert failure[0].new_state == "REJECTED"
    assert failure[0].record_mac == before.mac
    assert '"found_row"' in str(failure[0].payload) or "found_row" in failure[0].payload
    await wait_until(
        lambda: (
            [(str(a.trade_id), a.error_code) for a in api.gw.notifier.alerts]
            == [(altered, "SEC-080")]
        )
    )
    # One summary counts both.
    await wait_until(lambda: len(api.gw.notifier.cascades) == 1)
    assert api.gw.notifier.cascades[0].rejected == 2
    # The auditor's check still names the altered approval.
    verified = await asyncio.to_thread(_audit_verify, sqlite_url, tmp_path)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "approval differs from its trail" in verified.stdout
    assert altered in verified.stdout
    # It cannot be decided while locked, nor after: its workflow (not told, so as not to
    # restore the row while the lock stands) then finds the row altered and ends it SEC-080.
    response = await api.http.post(f"/api/hitl/{altered}/approve", json={}, headers=auth("alice"))
    assert_error(response, 423, "SEC-020")
    await unlock(api)
    response = await api.http.post(f"/api/hitl/{altered}/approve", json={}, headers=auth("alice"))
    assert response.json()["error_code"] == "SEC-080", response.text
    row = (await rows(api))[altered]
    assert (row.status, row.decision_reason) == ("REJECTED", "INTEGRITY_FAILURE")
    async with api.gw.sessions() as session:
        findings = (
            await session.execute(
                select(AuditRow.actor_id, AuditRow.error_code)
                .where(
                    AuditRow.target_id == altered, AuditRow.action == "approval.integrity_failure"
                )
                .order_by(AuditRow.seq)
            )
        ).all()
    # The trail keeps both findings, the Guardian's first.
    assert [tuple(f) for f in findings] == [("admin", "SEC-080"), ("system", "SEC-080")]
