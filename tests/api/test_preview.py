"""The operators' slippage preview over HTTP (issue 18 item 6), against the real app, Temporal dev
server, worker and database.

The worker and the API quote one paper market, each built from the same settings by
``market_from_settings`` as in production; with no volatility its price stays where the first
proposal put it, so a preview's "exceeds" can be checked against what the decision then does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from activities.market_providers import market_from_settings
from hitl.slippage import SlippageGuard
from tests.api.conftest import Api, api_settings, auth, start_api
from tests.api.test_approvals_api import assert_error, proposal_body
from tests.temporal_fixtures import start_gateway

ANCHOR = Decimal("1.1612")


@pytest.fixture
async def paper_api(
    monkeypatch: pytest.MonkeyPatch,
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Api]:
    """The app and its worker on the paper market, which stands still."""
    monkeypatch.setenv("HITL_MARKET_VOLATILITY", "0")
    monkeypatch.delenv("HITL_MARKET", raising=False)
    monkeypatch.delenv("MARKET_DATA_URL", raising=False)
    settings = api_settings(database_url=sqlite_url, temporal_address="-", task_queue="-")
    worker_market = market_from_settings(settings, sessions=sqlite_sessions)
    gw = await start_gateway(dev_env, sqlite_sessions, provider=worker_market)
    async with gw.worker:
        async for api in start_api(gw, sqlite_url):
            yield api


async def request(api: Api, price: Decimal, side: str = "BUY") -> str:
    body = proposal_body(api, request_price=str(price), side=side)
    response = await api.http.post("/api/hitl/requests", json=body, headers=auth("bot-1"))
    assert response.status_code == 201, response.text
    trade_id: str = body["trade_id"]
    return trade_id


async def previews(api: Api) -> dict[str, Any]:
    response = await api.http.get("/api/hitl/pending/previews", headers=auth("alice"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_preview_shows_the_market_now_and_what_the_decision_will_do(
    paper_api: Api,
) -> None:
    api = paper_api
    fresh = await request(api, ANCHOR)  # the first proposal anchors EUR/USD here
    stale = await request(api, ANCHOR * Decimal("0.98"))  # priced 2 % under the market
    selling = await request(api, ANCHOR, side="SELL")
    page = await previews(api)
    assert page["unavailable"] == []
    shown = {item["trade_id"]: item for item in page["items"]}
    assert list(shown) == [fresh, stale, selling], "soonest deadline first"
    for trade_id, item in shown.items():
        current = Decimal(item["current_price"])
        request_price = Decimal(item["request_price"])
        # Within the paper market's spread of the anchor: it stands still.
        assert abs(current - ANCHOR) / ANCHOR < Decimal("0.001"), item
        within, deviation = SlippageGuard(Decimal("0.5")).validate(request_price, current)
        assert Decimal(item["deviation_pct"]).copy_abs() == deviation
        assert item["exceeds"] is (not within)
        assert Decimal(item["max_slippage_pct"]) == Decimal("0.5")
        one = await api.http.get(f"/api/hitl/{trade_id}/preview", headers=auth("bob"))
        assert one.status_code == 200, one.text
        assert one.json()["current_price"] == item["current_price"]
    assert shown[fresh]["exceeds"] is False
    assert Decimal(shown[fresh]["deviation_pct"]) > 0, "a buy pays the ask, above the mid"
    assert shown[stale]["exceeds"] is True
    assert Decimal(shown[stale]["deviation_pct"]) > 2
    assert Decimal(shown[selling]["current_price"]) < Decimal(shown[fresh]["current_price"])

    # The decisions then do what the preview said.
    approved = await api.http.post(f"/api/hitl/{fresh}/approve", json={}, headers=auth("alice"))
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "ACCEPTED"
    slipped = await api.http.post(f"/api/hitl/{stale}/approve", json={}, headers=auth("alice"))
    body = assert_error(slipped, 409, "SEC-050")
    assert body["decision"]["decision_reason"] == "SLIPPAGE_EXCEEDED"

    # Decided approvals have nothing left to preview.
    assert [item["trade_id"] for item in (await previews(api))["items"]] == [selling]
    decided = await api.http.get(f"/api/hitl/{fresh}/preview", headers=auth("alice"))
    assert_error(decided, 409, "SEC-012")


async def test_only_operators_preview(paper_api: Api) -> None:
    api = paper_api
    trade_id = await request(api, ANCHOR)
    for who in ("bot-1", "admin", "guardian"):
        one = await api.http.get(f"/api/hitl/{trade_id}/preview", headers=auth(who))
        assert_error(one, 403, "SEC-090")
        every = await api.http.get("/api/hitl/pending/previews", headers=auth(who))
        assert_error(every, 403, "SEC-090")
    assert_error(await api.http.get(f"/api/hitl/{trade_id}/preview"), 401, "SEC-001")
    unknown = "00000000-0000-4000-8000-000000000000"
    assert_error(
        await api.http.get(f"/api/hitl/{unknown}/preview", headers=auth("alice")), 404, "SEC-010"
    )


async def test_without_a_market_the_preview_is_503_and_the_rest_works(
    monkeypatch: pytest.MonkeyPatch,
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    # HITL_MARKET=http without MARKET_DATA_URL: the worker would refuse to start (SEC-040); the
    # API starts, says why it cannot preview, and serves everything else.
    monkeypatch.setenv("HITL_MARKET", "http")
    monkeypatch.delenv("MARKET_DATA_URL", raising=False)
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        async for api in start_api(gw, sqlite_url):
            body = proposal_body(api)
            created = await api.http.post("/api/hitl/requests", json=body, headers=auth("bot-1"))
            assert created.status_code == 201, created.text
            one = await api.http.get(f"/api/hitl/{body['trade_id']}/preview", headers=auth("alice"))
            error = assert_error(one, 503, "SEC-060")
            assert "MARKET_DATA_URL" in error["message"]
            page = await previews(api)
            assert page["items"] == []
            [missing] = page["unavailable"]
            assert missing["trade_id"] == body["trade_id"]
            assert missing["error_code"] == "SEC-060"
