"""The approvals API through HTTP, against the real app, Temporal dev server and database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from hitl.models import TradeStatus
from store.tables import ApprovalRow, AuditRow
from tests.api.conftest import Api, auth, start_api
from tests.temporal_fixtures import start_gateway, wait_until


def proposal_body(api: Api, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "trade_id": str(uuid.uuid4()),
        "instrument": "EUR/USD",
        "side": "BUY",
        "risk_pct": "1.5",
        "confidence": "0.8",
        "request_price": str(api.gw.market.mid_price("EUR/USD")),
        "reasoning_summary": "Momentum with confirmation on the 4h chart.",
    }
    body.update(overrides)
    return body


async def create(api: Api, **overrides: Any) -> dict[str, Any]:
    response = await api.http.post(
        "/api/hitl/requests", json=proposal_body(api, **overrides), headers=auth("bot-1")
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def audit_actions(api: Api, trade_id: str) -> list[tuple[str, str, str | None]]:
    async with api.gw.sessions() as session:
        rows = await session.execute(
            select(AuditRow)
            # The approval's trail (its snapshot's entry, target type "snapshot", comes a
            # moment after the decision).
            .where(AuditRow.target_id == trade_id, AuditRow.target_type == "approval")
            .order_by(AuditRow.id)
        )
        return [(a.action, a.actor_id, a.error_code) for a in rows.scalars()]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error_code"] == code
    assert body["message"]
    assert body["correlation_id"] == response.headers["X-Correlation-ID"]
    return body


async def test_full_approval_flow(api: Api) -> None:
    approvals_before = counter("hitl_approvals_total")
    requests_before = counter("hitl_requests_total")
    created = await create(api)
    assert created["status"] == "AWAITING_APPROVAL"
    trade_id = created["trade_id"]
    pending = (await api.http.get("/api/hitl/pending", headers=auth("alice"))).json()["items"]
    assert trade_id in [p["trade_id"] for p in pending]
    response = await api.http.post(
        f"/api/hitl/{trade_id}/approve",
        json={"approved_by": "alice", "comment": "fine"},
        headers=auth("alice"),
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == "ACCEPTED"
    assert result["decision_reason"] == "OPERATOR_APPROVED"
    assert result["trade_id"] == trade_id
    assert result["correlation_id"] == created["correlation_id"]
    assert result["decided_at"]
    assert counter("hitl_approvals_total") == approvals_before + 1
    assert counter("hitl_requests_total") == requests_before + 1
    assert await audit_actions(api, trade_id) == [
        ("approval.requested", "bot-1", None),
        ("approval.decided", "alice", None),
    ]
    detail = (await api.http.get(f"/api/hitl/{trade_id}", headers=auth("bot-1"))).json()
    assert detail["approval"]["status"] == "ACCEPTED"
    assert detail["integrity_ok"] is True
    await wait_until(lambda: _has_snapshot(api, trade_id), timeout=10)
    for step, status in (("fill", "FILLED"), ("close", "CLOSED"), ("settle", "SETTLED")):
        response = await api.http.post(
            f"/api/hitl/{trade_id}/{step}",
            json={"details": {"price": "1.1"}},
            headers=auth("bot-1"),
        )
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status


async def _has_snapshot(api: Api, trade_id: str) -> bool:
    response = await api.http.get(f"/api/hitl/{trade_id}", headers=auth("alice"))
    return response.json()["snapshot"] is not None


async def test_full_rejection_flow(api: Api) -> None:
    before = counter("hitl_rejections_total", reason="OPERATOR_REJECTED")
    trade_id = (await create(api))["trade_id"]
    response = await api.http.post(
        f"/api/hitl/{trade_id}/reject", json={"reason": "news risk"}, headers=auth("bob")
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "REJECTED"
    assert response.json()["decision_reason"] == "OPERATOR_REJECTED"
    assert counter("hitl_rejections_total", reason="OPERATOR_REJECTED") == before + 1
    detail = (await api.http.get(f"/api/hitl/{trade_id}", headers=auth("bob"))).json()
    assert detail["approval"]["comment"] == "news risk"
    # The same operator repeating gets the standing result; another gets 409 with it.
    again = await api.http.post(f"/api/hitl/{trade_id}/reject", json={}, headers=auth("bob"))
    assert again.status_code == 200
    assert again.json()["decided_by"] == "bob"
    other = await api.http.post(f"/api/hitl/{trade_id}/approve", json={}, headers=auth("alice"))
    body = assert_error(other, 409, "SEC-012")
    assert body["decision"]["decided_by"] == "bob"
    # Lifecycle reports on a rejected trade are invalid transitions.
    fill = await api.http.post(f"/api/hitl/{trade_id}/fill", headers=auth("bot-1"))
    assert_error(fill, 409, "SEC-030")


async def test_missing_or_invalid_token_is_401(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = await api.http.get("/api/hitl/pending", headers=headers)
        assert_error(response, 401, "SEC-001")
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_property_5_unauthorized_operators_are_rejected(api: Api) -> None:
    trade_id = (await create(api))["trade_id"]
    refusals = [
        ("carol", {}, "approve"),  # an operator not in HITL_ALLOWED_OPERATORS
        ("bot-1", {}, "approve"),  # a bot trying to decide
        ("admin", {}, "reject"),  # an admin is not an operator
        ("alice", {"approved_by": "bob"}, "approve"),  # the body claims someone else
        ("alice", {"rejected_by": "bob"}, "reject"),
    ]
    for principal, body, action in refusals:
        response = await api.http.post(
            f"/api/hitl/{trade_id}/{action}", json=body, headers=auth(principal)
        )
        assert_error(response, 403, "SEC-090")
    async with api.gw.sessions() as session:
        row = (
            await session.execute(
                select(ApprovalRow).where(ApprovalRow.trade_id == uuid.UUID(trade_id))
            )
        ).scalar_one()
        assert row.status == TradeStatus.AWAITING_APPROVAL.value
    refused = [a for a in await audit_actions(api, trade_id) if a[2] == "SEC-090"]
    assert sorted(actor for _, actor, _ in refused) == ["admin", "alice", "alice", "bot-1", "carol"]
    # Only bots create requests.
    response = await api.http.post(
        "/api/hitl/requests", json=proposal_body(api), headers=auth("alice")
    )
    assert_error(response, 403, "SEC-090")


async def test_unknown_trade_is_404_and_duplicate_is_409(api: Api) -> None:
    unknown = str(uuid.uuid4())
    assert_error(await api.http.get(f"/api/hitl/{unknown}", headers=auth("alice")), 404, "SEC-010")
    assert_error(
        await api.http.post(f"/api/hitl/{unknown}/approve", json={}, headers=auth("alice")),
        404,
        "SEC-010",
    )
    body = proposal_body(api)
    first = await api.http.post("/api/hitl/requests", json=body, headers=auth("bot-1"))
    assert first.status_code == 201
    second = await api.http.post("/api/hitl/requests", json=body, headers=auth("bot-1"))
    assert_error(second, 409, "SEC-011")


async def test_invalid_bodies_are_422_naming_the_fields(api: Api) -> None:
    cases = [
        ({"request_price": "-1"}, "request_price"),
        ({"request_price": "1.123456789"}, "request_price"),
        ({"side": "HOLD"}, "side"),
        ({"confidence": "1.5"}, "confidence"),
        ({"surprise": "field"}, "surprise"),
        ({"trade_id": "not-a-uuid"}, "trade_id"),
    ]
    for overrides, field in cases:
        response = await api.http.post(
            "/api/hitl/requests", json=proposal_body(api, **overrides), headers=auth("bot-1")
        )
        body = assert_error(response, 422, "SEC-003")
        assert field in body["message"]
    response = await api.http.post(
        "/api/hitl/requests", content=b"{not json", headers=auth("bot-1")
    )
    assert_error(response, 422, "SEC-003")
    bad_path = await api.http.post("/api/hitl/123/approve", json={}, headers=auth("alice"))
    assert_error(bad_path, 422, "SEC-003")


async def test_slippage_is_409_sec_050_and_the_request_ends_rejected(api: Api) -> None:
    created = await create(api)
    api.gw.market.set_price(
        "EUR/USD", Decimal(proposal_body(api)["request_price"]) * Decimal("1.02")
    )
    try:
        response = await api.http.post(
            f"/api/hitl/{created['trade_id']}/approve", json={}, headers=auth("alice")
        )
        body = assert_error(response, 409, "SEC-050")
        assert body["decision"]["status"] == "REJECTED"
        assert body["decision"]["decision_reason"] == "SLIPPAGE_EXCEEDED"
    finally:
        api.gw.market.set_price("EUR/USD", api.gw.market.mid_price("BASE"))


async def test_property_14_pending_approvals_are_ordered_by_expiry(api: Api) -> None:
    created = [await create(api) for _ in range(4)]
    response = await api.http.get("/api/hitl/pending", headers=auth("alice"))
    assert response.status_code == 200
    pending = response.json()["items"]
    expiries = [datetime.fromisoformat(p["expires_at"]) for p in pending]
    assert expiries == sorted(expiries)
    ours = [p for p in pending if p["trade_id"] in {c["trade_id"] for c in created}]
    assert len(ours) == 4
    for item in ours:
        assert 0 < item["seconds_remaining"] <= 300
        assert item["integrity_ok"] is True
        assert set(item) >= {
            "trade_id",
            "instrument",
            "side",
            "risk_pct",
            "confidence",
            "request_price",
            "expires_at",
            "seconds_remaining",
            "reasoning_summary",
            "correlation_id",
        }


async def test_tampered_row_is_flagged_in_the_pending_list(api: Api) -> None:
    trade_id = (await create(api))["trade_id"]
    async with api.gw.sessions.begin() as session:
        row = (
            await session.execute(
                select(ApprovalRow).where(ApprovalRow.trade_id == uuid.UUID(trade_id))
            )
        ).scalar_one()
        row.risk_pct = Decimal("0.01")
    pending = (await api.http.get("/api/hitl/pending", headers=auth("alice"))).json()["items"]
    [flagged] = [p for p in pending if p["trade_id"] == trade_id]
    assert flagged["integrity_ok"] is False


async def test_correlation_id_is_taken_from_the_header_and_reaches_the_audit_log(api: Api) -> None:
    response = await api.http.post(
        "/api/hitl/requests",
        json=proposal_body(api),
        headers={**auth("bot-1"), "X-Correlation-ID": "bot-run-42"},
    )
    assert response.status_code == 201
    assert response.headers["X-Correlation-ID"] == "bot-run-42"
    assert response.json()["correlation_id"] == "bot-run-42"
    async with api.gw.sessions() as session:
        entries = await session.execute(
            select(AuditRow.correlation_id).where(AuditRow.target_id == response.json()["trade_id"])
        )
        assert list(entries.scalars()) == ["bot-run-42"]


@pytest.fixture
async def expiring_api(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Api]:
    gw = await start_gateway(dev_env, sqlite_sessions, timeout_seconds=1)  # the worker's policy
    async with gw.worker:
        async for client in start_api(gw, sqlite_url, timeout_seconds=1):
            yield client


async def test_expired_request_is_410(expiring_api: Api) -> None:
    trade_id = (await create(expiring_api))["trade_id"]
    await asyncio.sleep(1.5)
    response = await expiring_api.http.post(
        f"/api/hitl/{trade_id}/approve", json={}, headers=auth("alice")
    )
    body = assert_error(response, 410, "SEC-013")
    await wait_until(lambda: _expired(expiring_api, trade_id))
    assert body["message"]


async def _expired(api: Api, trade_id: str) -> bool:
    detail = (await api.http.get(f"/api/hitl/{trade_id}", headers=auth("alice"))).json()
    return bool(detail["approval"]["decision_reason"] == "HITL_TIMEOUT")


@pytest.fixture
async def limited_api(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Api]:
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        async for client in start_api(gw, sqlite_url, rate_limit="3/minute"):
            yield client


async def test_rate_limit_is_429_with_retry_after(limited_api: Api) -> None:
    statuses = []
    for _ in range(4):
        response = await limited_api.http.get("/api/hitl/pending", headers=auth("alice"))
        statuses.append(response.status_code)
    assert statuses == [200, 200, 200, 429]
    assert_error(response, 429, "SEC-002")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    # The limit is per principal: bob is unaffected.
    other = await limited_api.http.get("/api/hitl/pending", headers=auth("bob"))
    assert other.status_code == 200


@pytest.fixture
async def workerless_api(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Api]:
    # No workflow cache, hence no sticky queue: a new worker takes over at once instead of
    # after the server's sticky schedule-to-start timeout.
    gw = await start_gateway(dev_env, sqlite_sessions, max_cached_workflows=0)
    async for client in start_api(gw, sqlite_url, decision_timeout_seconds=1.0):
        yield client


async def test_worker_unreachable_is_503_in_bounded_time_and_nothing_lands_later(
    workerless_api: Api,
) -> None:
    api = workerless_api
    async with api.gw.worker:
        trade_id = (await create(api))["trade_id"]
    # The worker is gone: the decision times out with 503 instead of hanging...
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await api.http.post(f"/api/hitl/{trade_id}/approve", json={}, headers=auth("alice"))
    assert_error(response, 503, "SEC-070")
    assert loop.time() - started < 5
    # ...and when a worker returns, the abandoned decision does not land: bob's decision is
    # the one that counts.
    async with api.gw.new_worker(max_cached_workflows=0):
        for _ in range(10):  # the new worker's first poll may take longer than the 1 s budget
            retry = await api.http.post(
                f"/api/hitl/{trade_id}/approve", json={}, headers=auth("bob")
            )
            if retry.status_code != 503:
                break
        assert retry.status_code == 200, retry.text
        assert retry.json()["decided_by"] == "bob"


async def test_health_and_readiness(api: Api, workerless_api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    # A just-started worker shows among the pollers once its first poll reaches the server.
    await wait_until(lambda: _ready(api))
    unready = await workerless_api.http.get("/readyz")
    assert unready.status_code == 503
    assert unready.json()["checks"]["worker"] != "ok"
    metrics = await api.http.get("/metrics")
    assert "hitl_requests_total" in metrics.text


async def _ready(api: Api) -> bool:
    return (await api.http.get("/readyz")).status_code == 200


async def test_unknown_route_and_method_use_the_error_body(api: Api) -> None:
    assert_error(await api.http.get("/nope"), 404, "SEC-004")
    assert_error(await api.http.delete("/api/hitl/pending", headers=auth("alice")), 405, "SEC-005")
