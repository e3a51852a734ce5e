"""Abuse limits on the real app (issue 17 items 4 to 7): body size, pagination, free text,
rate limits before and after authentication, failed logins audited, tokens that end."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from api.failed_logins import ACTION as LOGIN_FAILED
from hitl.principals import Role, hash_token
from store.tables import ApiTokenRow, AuditRow
from store.tokens import issue_token, revoke_tokens
from tests.api.conftest import Api, Served, auth, serve_api, start_api
from tests.api.test_approvals_api import assert_error, proposal_body
from tests.temporal_fixtures import start_gateway


async def test_a_body_over_64_kib_is_refused_with_413_before_parsing(api: Api) -> None:
    body = proposal_body(api, reasoning_summary="x" * (70 * 1024))
    response = await api.http.post("/api/hitl/requests", json=body, headers=auth("bot-1"))
    assert_error(response, 413, "SEC-006")
    # Not JSON at all: were it parsed, it would be a 422.
    garbage = await api.http.post(
        "/api/hitl/requests",
        content=b"{" * (65 * 1024),
        headers={**auth("bot-1"), "Content-Type": "application/json"},
    )
    assert_error(garbage, 413, "SEC-006")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reasoning_summary", "Breakout \u202eetacidnys\u202c confirmed"),
        ("reasoning_summary", "line\x1b[2Jclear"),
        ("reasoning_summary", "x" * 2001),
    ],
)
async def test_unsafe_or_oversized_reasoning_is_refused(api: Api, field: str, value: str) -> None:
    body = proposal_body(api, **{field: value})
    response = await api.http.post("/api/hitl/requests", json=body, headers=auth("bot-1"))
    assert_error(response, 422, "SEC-003")


async def test_unsafe_comment_and_oversized_details_are_refused(api: Api) -> None:
    created = await api.http.post(
        "/api/hitl/requests", json=proposal_body(api), headers=auth("bot-1")
    )
    trade_id = created.json()["trade_id"]
    comment = await api.http.post(
        f"/api/hitl/{trade_id}/approve",
        json={"comment": "ok\u2066hidden\u2069"},
        headers=auth("alice"),
    )
    assert_error(comment, 422, "SEC-003")
    approved = await api.http.post(
        f"/api/hitl/{trade_id}/approve", json={"comment": "ok"}, headers=auth("alice")
    )
    assert approved.status_code == 200, approved.text
    fill = await api.http.post(
        f"/api/hitl/{trade_id}/fill",
        json={"details": {"notes": "y" * 9000}},
        headers=auth("bot-1"),
    )
    assert_error(fill, 422, "SEC-003")


async def test_pending_pages_round_trip(api: Api) -> None:
    created = set()
    for _ in range(5):
        response = await api.http.post(
            "/api/hitl/requests", json=proposal_body(api), headers=auth("bot-1")
        )
        created.add(response.json()["trade_id"])
    seen: list[str] = []
    deadlines: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = await api.http.get("/api/hitl/pending", params=params, headers=auth("alice"))
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen.extend(item["trade_id"] for item in page["items"])
        deadlines.extend(item["expires_at"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(created)  # each once: nothing repeated, nothing skipped
    assert deadlines == sorted(deadlines)
    default = (await api.http.get("/api/hitl/pending", headers=auth("alice"))).json()
    assert len(default["items"]) == 5 and default["next_cursor"] is None
    for params in ({"limit": 0}, {"limit": 501}, {"cursor": "not-a-cursor"}):
        response = await api.http.get("/api/hitl/pending", params=params, headers=auth("alice"))
        assert_error(response, 422, "SEC-003")


@pytest.fixture
async def address_limited_api(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Api]:
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        async for client in start_api(gw, sqlite_url, address_rate_limit="20/minute"):
            yield client


async def test_bad_tokens_are_limited_per_address_before_any_lookup(
    address_limited_api: Api,
) -> None:
    api = address_limited_api
    statuses = []
    for n in range(40):
        response = await api.http.get(
            "/api/hitl/pending", headers={"Authorization": f"Bearer guess-{n}"}
        )
        statuses.append(response.status_code)
    assert statuses[:20] == [401] * 20
    assert statuses[20:] == [429] * 20
    assert_error(response, 429, "SEC-002")
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    # The address is limited, whatever the token: a good one waits as well.
    good = await api.http.get("/api/hitl/pending", headers=auth("alice"))
    assert good.status_code == 429
    # Another address is not.
    transport = httpx.ASGITransport(app=api.app, client=("192.0.2.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as elsewhere:
        other = await elsewhere.get("/api/hitl/pending", headers=auth("alice"))
    assert other.status_code == 200


async def test_failed_logins_are_audited_per_address_and_minute(api: Api) -> None:
    for n in range(25):
        response = await api.http.get(
            "/api/guardian/status", headers={"Authorization": f"Bearer x{n}"}
        )
        assert response.status_code == 401
    services = api.app.state.services
    await services.failed_logins.flush(everything=True)
    async with api.gw.sessions() as session:
        rows = list(
            (
                await session.execute(select(AuditRow).where(AuditRow.action == LOGIN_FAILED))
            ).scalars()
        )
    assert sum(row.payload["count"] for row in rows) == 25
    assert len(rows) <= 2  # one per minute (two if the minute turned meanwhile)
    assert {row.actor_id for row in rows} == {"127.0.0.1"}


async def test_an_expired_token_gets_401_everywhere(api: Api) -> None:
    sessions = api.gw.sessions
    token = await issue_token(
        sessions,
        principal="dana",
        role=Role.OPERATOR,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert (await api.http.get("/api/guardian/status", headers=headers)).status_code == 200
    async with sessions.begin() as session:
        await session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.token_hash == hash_token(token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    for path in ("/api/guardian/status", "/api/hitl/pending", f"/api/hitl/{uuid.uuid4()}"):
        assert_error(await api.http.get(path, headers=headers), 401, "SEC-001")


@pytest.fixture
async def served(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Served]:
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        async for served in serve_api(gw, sqlite_url):
            yield served


async def _ready(ws: Any, token: str) -> None:
    await ws.send(json.dumps({"type": "auth", "token": token}))
    ready = json.loads(await ws.recv())
    assert ready["type"] == "stream.ready", ready


async def _closed_with(ws: Any, code: int, within: float) -> dict[str, Any]:
    async with asyncio.timeout(within):
        error: dict[str, Any] = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code
    return error


async def test_revoking_a_token_closes_its_open_stream_within_5_s(served: Served) -> None:
    sessions = served.gw.sessions
    token = await issue_token(sessions, principal="erin", role=Role.OPERATOR)
    async with websockets.connect(f"{served.ws_url}/ws/hitl") as ws:
        await _ready(ws, token)
        await revoke_tokens(sessions, principal="erin")
        error = await _closed_with(ws, 4401, within=5)
    assert error["error_code"] == "SEC-001"


async def test_an_expiring_token_closes_its_open_stream_within_5_s(served: Served) -> None:
    sessions = served.gw.sessions
    token = await issue_token(
        sessions,
        principal="erin",
        role=Role.OPERATOR,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    async with websockets.connect(f"{served.ws_url}/ws/hitl") as ws:
        await _ready(ws, token)
        # The token's end comes one second from now, while the stream is open.
        async with sessions.begin() as session:
            await session.execute(
                update(ApiTokenRow)
                .where(ApiTokenRow.token_hash == hash_token(token))
                .values(expires_at=datetime.now(UTC) + timedelta(seconds=1))
            )
        error = await _closed_with(ws, 4401, within=6)  # 1 s of life, then within 5 s
    assert error["error_code"] == "SEC-001"


async def test_a_token_in_the_url_is_refused(served: Served) -> None:
    async with websockets.connect(f"{served.ws_url}/ws/hitl?token=alice-token") as ws:
        error = await _closed_with(ws, 4401, within=5)
    assert error["error_code"] == "SEC-001"
    assert "URL" in error["message"]


async def test_streams_per_principal_are_capped_and_big_messages_close(served: Served) -> None:
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(5):
            ws = await stack.enter_async_context(
                websockets.connect(f"{served.ws_url}/ws/hitl", additional_headers=auth("alice"))
            )
            assert json.loads(await ws.recv())["type"] == "stream.ready"
        sixth = await stack.enter_async_context(
            websockets.connect(f"{served.ws_url}/ws/hitl", additional_headers=auth("alice"))
        )
        error = await _closed_with(sixth, 4429, within=5)
        assert error["error_code"] == "SEC-002"
        # bob has places of his own.
        bobs = await stack.enter_async_context(
            websockets.connect(f"{served.ws_url}/ws/hitl", additional_headers=auth("bob"))
        )
        assert json.loads(await bobs.recv())["type"] == "stream.ready"
        await bobs.send("z" * 5000)
        async with asyncio.timeout(5):
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await bobs.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_a_bot_streams_only_its_own_approvals(served: Served) -> None:
    async with (
        httpx.AsyncClient(base_url=served.base_url) as http,
        websockets.connect(f"{served.ws_url}/ws/hitl", additional_headers=auth("bot-2")) as mine,
        websockets.connect(f"{served.ws_url}/ws/hitl", additional_headers=auth("alice")) as all_,
        websockets.connect(f"{served.ws_url}/ws/hitl", additional_headers=auth("guardian")) as g,
    ):
        error = await _closed_with(g, 4403, within=5)
        assert error["error_code"] == "SEC-090"
        for ws in (mine, all_):
            assert json.loads(await ws.recv())["type"] == "stream.ready"
        ids = []
        for bot in ("bot-1", "bot-2", "bot-1"):
            body = {
                "trade_id": str(uuid.uuid4()),
                "instrument": "EUR/USD",
                "side": "BUY",
                "risk_pct": "1",
                "confidence": "0.5",
                "request_price": str(served.gw.market.mid_price("EUR/USD")),
                "reasoning_summary": "r",
            }
            response = await http.post("/api/hitl/requests", json=body, headers=auth(bot))
            assert response.status_code == 201, response.text
            ids.append(body["trade_id"])
        async with asyncio.timeout(15):
            seen_all = [json.loads(await all_.recv())["trade_id"] for _ in range(3)]
            seen_mine = json.loads(await mine.recv())["trade_id"]
        assert seen_all == ids
        assert seen_mine == ids[1]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.5):
                await mine.recv()
        # Replay from the start is scoped the same way.
        async with websockets.connect(
            f"{served.ws_url}/ws/hitl?after=0", additional_headers=auth("bot-2")
        ) as replay:
            assert json.loads(await replay.recv())["type"] == "stream.ready"
            async with asyncio.timeout(5):
                replayed = json.loads(await replay.recv())
            assert replayed["trade_id"] == ids[1]
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1.5):
                    await replay.recv()
