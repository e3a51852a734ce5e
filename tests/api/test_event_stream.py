"""``WS /ws/hitl`` over a real uvicorn: events on create, decide and expire, and a resume after
a dropped connection that misses nothing, on SQLite (polling) and PostgreSQL (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from temporalio.testing import WorkflowEnvironment

from migrations.runner import upgrade_to_head
from store.engine import create_engine, session_factory
from tests.api.conftest import Served, auth, serve_api
from tests.conftest import create_postgres_database, drop_postgres_database
from tests.temporal_fixtures import start_gateway


@pytest.fixture(params=["sqlite", "postgresql"])
async def served(
    request: pytest.FixtureRequest, dev_env: WorkflowEnvironment, sqlite_url: str
) -> AsyncIterator[Served]:
    if request.param == "postgresql":
        url = await create_postgres_database()
        await asyncio.to_thread(upgrade_to_head, url)
    else:
        url = sqlite_url
    engine = create_engine(url)
    # The 2 s deadline is the worker's policy (issue 14), not the API's.
    gw = await start_gateway(dev_env, session_factory(engine, writer=True), timeout_seconds=2)
    async with gw.worker:
        async for served in serve_api(gw, url, timeout_seconds=2):
            yield served
    await engine.dispose()
    if request.param == "postgresql":
        await drop_postgres_database(url)


async def create(served: Served, http: httpx.AsyncClient) -> str:
    trade_id = str(uuid.uuid4())
    response = await http.post(
        "/api/hitl/requests",
        json={
            "trade_id": trade_id,
            "instrument": "EUR/USD",
            "side": "SELL",
            "risk_pct": "0.5",
            "confidence": "0.9",
            "request_price": str(served.gw.market.mid_price("EUR/USD")),
            "reasoning_summary": "Mean reversion.",
        },
        headers=auth("bot-1"),
    )
    assert response.status_code == 201, response.text
    return trade_id


async def receive(ws: Any, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        while len(events) < count:
            events.append(json.loads(await ws.recv()))
    return events


async def test_events_on_create_decide_and_expire(served: Served) -> None:
    async with (
        httpx.AsyncClient(base_url=served.base_url) as http,
        websockets.connect(f"{served.ws_url}/ws/hitl", additional_headers=auth("alice")) as ws,
    ):
        ready = json.loads(await ws.recv())
        assert ready["type"] == "stream.ready"
        decided_id = await create(served, http)
        expiring_id = await create(served, http)
        response = await http.post(
            f"/api/hitl/{decided_id}/reject", json={"reason": "no"}, headers=auth("alice")
        )
        assert response.status_code == 200
        events = await receive(ws, 4)  # two created, one decided, one expired (2 s deadline)
        by_type = {(e["type"], e["trade_id"]) for e in events}
        assert by_type == {
            ("hitl.created", decided_id),
            ("hitl.created", expiring_id),
            ("hitl.decided", decided_id),
            ("hitl.expired", expiring_id),
        }
        ids = [e["id"] for e in events]
        assert ids == sorted(ids)
        decided = next(e for e in events if e["type"] == "hitl.decided")
        assert decided["approval"]["status"] == "REJECTED"
        assert decided["approval"]["comment"] == "no"
        assert decided["approval"]["row_hash"]


async def test_resume_after_a_dropped_connection_misses_nothing(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.base_url) as http:
        async with websockets.connect(f"{served.ws_url}/ws/hitl") as ws:
            # A browser cannot set headers: its token is the first message, never the URL.
            await ws.send(json.dumps({"type": "auth", "token": "alice-token"}))
            cursor = json.loads(await ws.recv())["cursor"]
            first = await create(served, http)
            [seen] = await receive(ws, 1)
            assert seen["trade_id"] == first
            cursor = seen["id"]
        # Disconnected: these happen while nobody listens.
        missed = [await create(served, http) for _ in range(3)]
        async with websockets.connect(
            f"{served.ws_url}/ws/hitl?after={cursor}", additional_headers=auth("bob")
        ) as ws:
            assert json.loads(await ws.recv())["cursor"] == cursor
            resumed = await receive(ws, 3)
        assert [e["trade_id"] for e in resumed] == missed
        assert all(e["type"] == "hitl.created" for e in resumed)


async def test_unauthenticated_stream_is_refused_with_sec_001(served: Served) -> None:
    async with websockets.connect(f"{served.ws_url}/ws/hitl") as ws:
        await ws.send(json.dumps({"type": "auth", "token": "wrong"}))
        error = json.loads(await ws.recv())
        assert error["error_code"] == "SEC-001"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4401
