"""Four eyes through HTTP (issue 17 item 2): the real app, a Temporal dev server and SQLite.

The threshold is the worker's policy (``four_eyes_risk_pct``); the API's own settings do not
carry it, and nothing a caller sends can change it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from store.tables import ApprovalRow, AuditRow, approval_from_row
from tests.api.conftest import Api, auth, start_api
from tests.temporal_fixtures import start_gateway

THRESHOLD = Decimal("2.0")


@pytest.fixture
async def api4(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Api]:
    """The app on SQLite with a worker that asks two operators above 2 % risk."""
    gw = await start_gateway(dev_env, sqlite_sessions, four_eyes_risk_pct=THRESHOLD)
    async with gw.worker:
        async for client in start_api(gw, sqlite_url):
            yield client


async def create(api: Api, risk: str = "2.5", **extra: Any) -> str:
    body = {
        "trade_id": str(uuid.uuid4()),
        "instrument": "EUR/USD",
        "side": "BUY",
        "risk_pct": risk,
        "confidence": "0.8",
        "request_price": str(api.gw.market.mid_price("EUR/USD")),
        "reasoning_summary": "Breakout retest on the 4h chart, volume confirming.",
        **extra,
    }
    response = await api.http.post("/api/hitl/requests", json=body, headers=auth("bot-1"))
    assert response.status_code == 201, response.text
    return str(response.json()["trade_id"])


async def approve(api: Api, trade_id: str, operator: str, path: str = "/api/hitl") -> Any:
    return await api.http.post(
        f"{path}/{trade_id}/approve", json={"comment": "checked"}, headers=auth(operator)
    )


async def audit(api: Api, trade_id: str) -> list[tuple[str, str, str | None]]:
    async with api.gw.sessions() as session:
        rows = await session.execute(
            select(AuditRow).where(AuditRow.target_id == trade_id).order_by(AuditRow.id)
        )
        return [(a.action, a.actor_id, a.error_code) for a in rows.scalars()]


async def test_first_approval_answers_202_and_a_second_operator_accepts(api4: Api) -> None:
    trade_id = await create(api4)

    first = await approve(api4, trade_id, "alice")
    assert first.status_code == 202, first.text
    body = first.json()
    assert body["status"] == "AWAITING_APPROVAL"
    assert body["approvers"] == ["alice"]
    assert body["approvals_required"] == 2
    assert body["decided_by"] is None

    detail = (await api4.http.get(f"/api/hitl/{trade_id}", headers=auth("bob"))).json()
    assert detail["status"] == "AWAITING_APPROVAL"
    assert detail["approvers"] == ["alice"]
    assert detail["integrity_ok"] is True
    pending = (await api4.http.get("/api/hitl/pending", headers=auth("bob"))).json()["items"]
    assert trade_id in [p["trade_id"] for p in pending]

    # The second operator approves through the operators' page: the WEB channel.
    second = await approve(api4, trade_id, "bob", path="/approvals")
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "ACCEPTED"
    assert second.json()["decided_by"] == "bob"
    assert second.json()["approvers"] == ["alice", "bob"]

    detail = (await api4.http.get(f"/api/hitl/{trade_id}", headers=auth("bot-1"))).json()
    assert detail["approvers"] == ["alice", "bob"]
    assert detail["approval"]["decision_channel"] == "WEB"
    actions = [(action, actor) for action, actor, _ in await audit(api4, trade_id)]
    assert ("approval.approved_once", "alice") in actions
    assert ("approval.decided", "bob") in actions


async def test_the_same_operator_again_gets_409_sec_014_and_is_audited(api4: Api) -> None:
    trade_id = await create(api4)
    assert (await approve(api4, trade_id, "alice")).status_code == 202

    again = await approve(api4, trade_id, "alice")
    assert again.status_code == 409, again.text
    assert again.json()["error_code"] == "SEC-014"
    assert "different operator" in again.json()["message"]
    assert ("approval.approve_refused", "alice", "SEC-014") in await audit(api4, trade_id)
    async with api4.gw.sessions() as session:
        row = (
            await session.execute(
                select(ApprovalRow).where(ApprovalRow.trade_id == uuid.UUID(trade_id))
            )
        ).scalar_one()
        stored = approval_from_row(row)
    assert (stored.status.value, stored.approvers) == ("AWAITING_APPROVAL", ("alice",))


async def test_a_rejection_after_one_approval_ends_it(api4: Api) -> None:
    trade_id = await create(api4)
    assert (await approve(api4, trade_id, "alice")).status_code == 202
    rejected = await api4.http.post(
        f"/api/hitl/{trade_id}/reject", json={"reason": "exposure"}, headers=auth("bob")
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["status"] == "REJECTED"
    assert rejected.json()["approvers"] == ["alice"]
    late = await approve(api4, trade_id, "bob")
    assert late.status_code == 409
    assert late.json()["error_code"] == "SEC-012"


async def test_two_operators_racing_accept_exactly_once(api4: Api) -> None:
    trade_id = await create(api4)
    answers = await asyncio.gather(approve(api4, trade_id, "alice"), approve(api4, trade_id, "bob"))
    assert sorted(a.status_code for a in answers) == [200, 202], [a.text for a in answers]
    accepted = next(a.json() for a in answers if a.status_code == 200)
    assert accepted["status"] == "ACCEPTED"
    assert sorted(accepted["approvers"]) == ["alice", "bob"]


async def test_below_the_threshold_one_approval_accepts_with_200(api4: Api) -> None:
    trade_id = await create(api4, risk="1.5")
    answer = await approve(api4, trade_id, "alice")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ACCEPTED"
    assert answer.json()["approvers"] == []
    assert answer.json()["approvals_required"] == 1


async def test_without_the_setting_one_approval_accepts_any_risk(api: Api) -> None:
    trade_id = await create(api, risk="9.5")
    answer = await approve(api, trade_id, "alice")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "ACCEPTED"
