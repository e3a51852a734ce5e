"""Bots wait over HTTP (issue 18 item 4): ``?wait=N`` on a request and on reading an approval
answers when the approval is decided, else as it stands after N s; the answer to a request is the
full record. Against the real app, Temporal dev server, worker and database.

Timing assertions are deliberately loose (machines are noisy): a decided wait returns well before
its N, an undecided one not before N.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from api.services import Services
from tests.api.conftest import Api, api_settings, auth, start_api
from tests.api.test_approvals_api import assert_error, create, proposal_body
from tests.temporal_fixtures import start_gateway, wait_until

AWAITING = "AWAITING_APPROVAL"


def services_of(api: Api) -> Services:
    services: Services = api.app.state.services
    return services


async def decide_later(api: Api, trade_id: str, action: str, *, after: float) -> None:
    """An operator decides ``after`` seconds from now, over the API."""
    await asyncio.sleep(after)
    body = {"reason": "no"} if action == "reject" else {}
    response = await api.http.post(
        f"/api/hitl/{trade_id}/{action}", json=body, headers=auth("alice")
    )
    assert response.status_code == 200, response.text


async def timed_get(api: Api, path: str, who: str = "bot-1") -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await api.http.get(path, headers=auth(who))
    return response, time.monotonic() - started


async def test_a_wait_returns_soon_after_the_decision(api: Api) -> None:
    trade_id = (await create(api))["trade_id"]
    deciding = asyncio.create_task(decide_later(api, trade_id, "approve", after=0.5))
    response, elapsed = await timed_get(api, f"/api/hitl/{trade_id}?wait=20")
    await deciding
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ACCEPTED"
    assert body["approval"]["status"] == "ACCEPTED"
    assert body["decision_reason"] == "OPERATOR_APPROVED"
    assert body["decided_by"] == "alice"
    assert 0.5 <= elapsed < 10, elapsed  # woken by the decision, not by the 20 s
    assert services_of(api).approval_watch.waiting == 0


async def test_an_undecided_wait_answers_its_current_state_after_n_seconds(api: Api) -> None:
    trade_id = (await create(api))["trade_id"]
    response, elapsed = await timed_get(api, f"/api/hitl/{trade_id}?wait=1.5")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == AWAITING
    assert response.json()["decision_reason"] is None
    assert elapsed >= 1.5
    # Without ?wait the answer is immediate, as before.
    response, elapsed = await timed_get(api, f"/api/hitl/{trade_id}")
    assert response.json()["status"] == AWAITING
    assert elapsed < 1.5


async def test_a_wait_on_a_decided_approval_answers_at_once(api: Api) -> None:
    trade_id = (await create(api))["trade_id"]
    await decide_later(api, trade_id, "reject", after=0)
    response, elapsed = await timed_get(api, f"/api/hitl/{trade_id}?wait=30")
    assert response.json()["status"] == "REJECTED"
    assert response.json()["decision_reason"] == "OPERATOR_REJECTED"
    assert elapsed < 10


async def test_a_request_waits_for_its_decision(api: Api) -> None:
    body = proposal_body(api)
    trade_id = body["trade_id"]

    async def approve_when_pending() -> None:
        async def pending() -> bool:
            response = await api.http.get(f"/api/hitl/{trade_id}", headers=auth("alice"))
            return response.status_code == 200

        await wait_until(pending, timeout=20)
        await decide_later(api, trade_id, "approve", after=0.3)

    deciding = asyncio.create_task(approve_when_pending())
    started = time.monotonic()
    response = await api.http.post(
        "/api/hitl/requests", params={"wait": 30}, json=body, headers=auth("bot-1")
    )
    elapsed = time.monotonic() - started
    await deciding
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "ACCEPTED"
    assert response.json()["decided_by"] == "alice"
    assert elapsed < 20


async def test_a_request_s_wait_ends_after_n_seconds_still_awaiting(api: Api) -> None:
    started = time.monotonic()
    response = await api.http.post(
        "/api/hitl/requests", params={"wait": 1}, json=proposal_body(api), headers=auth("bot-1")
    )
    assert response.status_code == 201, response.text
    assert response.json()["status"] == AWAITING
    assert time.monotonic() - started >= 1


async def test_the_answer_to_a_request_is_the_full_record(api: Api) -> None:
    created = await create(api)
    detail = (await api.http.get(f"/api/hitl/{created['trade_id']}", headers=auth("bot-1"))).json()
    assert set(created) == set(detail)
    # The fields bots and tests read from the old answer are all still there.
    assert set(created) >= {"trade_id", "status", "requested_at", "expires_at", "correlation_id"}
    assert created["approval"]["trade_id"] == created["trade_id"]
    assert created["approval"]["status"] == created["status"] == AWAITING
    assert created["integrity_ok"] is True
    assert created["snapshot"] is None
    assert created["decision_reason"] is None
    assert created["expires_at"] == detail["expires_at"]


@pytest.mark.parametrize("wait", ["-1", "61", "60.5", "soon"])
async def test_a_wait_outside_0_to_60_is_422(api: Api, wait: str) -> None:
    trade_id = (await create(api))["trade_id"]
    response = await api.http.get(f"/api/hitl/{trade_id}?wait={wait}", headers=auth("bot-1"))
    assert_error(response, 422, "SEC-003")
    response = await api.http.post(
        f"/api/hitl/requests?wait={wait}", json=proposal_body(api), headers=auth("bot-1")
    )
    assert_error(response, 422, "SEC-003")


async def test_another_bot_waits_for_nothing_it_gets_404_at_once(api: Api) -> None:
    trade_id = (await create(api))["trade_id"]
    response, elapsed = await timed_get(api, f"/api/hitl/{trade_id}?wait=30", who="bot-2")
    assert_error(response, 404, "SEC-010")
    assert elapsed < 10
    unknown, elapsed = await timed_get(api, f"/api/hitl/{uuid.uuid4()}?wait=30", who="alice")
    assert_error(unknown, 404, "SEC-010")
    assert elapsed < 10
    assert services_of(api).approval_watch.waiting == 0


async def test_many_waiters_share_one_reader_and_each_gets_its_own_decision(api: Api) -> None:
    trade_ids = [(await create(api))["trade_id"] for _ in range(6)]
    waits = [
        asyncio.create_task(api.http.get(f"/api/hitl/{trade_id}?wait=30", headers=auth("bot-1")))
        for trade_id in trade_ids
        for _ in range(3)
    ]
    watch = services_of(api).approval_watch
    await wait_until(lambda: watch.waiting == len(waits), timeout=20)
    for i, trade_id in enumerate(trade_ids):
        await decide_later(api, trade_id, "approve" if i % 2 == 0 else "reject", after=0)
    answers: list[dict[str, Any]] = [r.json() for r in await asyncio.gather(*waits)]
    for index, answer in enumerate(answers):
        trade = index // 3
        assert answer["trade_id"] == trade_ids[trade]
        assert answer["status"] == ("ACCEPTED" if trade % 2 == 0 else "REJECTED")
    assert watch.waiting == 0


async def test_hitl_switched_off_answers_the_request_with_its_reason(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    gw = await start_gateway(dev_env, sqlite_sessions, enabled=False)  # the worker's policy
    async with gw.worker:
        async for api in start_api(gw, sqlite_url):
            response = await api.http.post(
                "/api/hitl/requests", json=proposal_body(api), headers=auth("bot-1")
            )
            assert response.status_code == 201, response.text
            assert response.json()["status"] == "ACCEPTED"
            assert response.json()["decision_reason"] == "HITL_DISABLED"
            assert response.json()["decided_by"] == "system"


@pytest.fixture
async def uvicorn_app(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[tuple[str, Services, Api]]:
    """The app under a real uvicorn (a client can hang up), with its services at hand."""
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        settings = api_settings(
            database_url=sqlite_url,
            temporal_address=gw.env.client.service_client.config.target_host,
            task_queue=gw.task_queue,
        )
        app = create_app(settings)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        )
        task = asyncio.create_task(server.serve())
        await wait_until(lambda: server.started or task.done(), timeout=20)
        base_url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
                api = Api(http=http, gw=gw, settings=settings, app=app)
                yield base_url, app.state.services, api
        finally:
            server.should_exit = True
            await task


async def test_a_client_that_hangs_up_stops_its_wait(
    uvicorn_app: tuple[str, Services, Api],
) -> None:
    base_url, services, api = uvicorn_app
    trade_id = (await create(api))["trade_id"]
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as impatient:
        waiting = asyncio.create_task(
            impatient.get(f"/api/hitl/{trade_id}?wait=50", headers=auth("bot-1"))
        )
        await wait_until(lambda: services.approval_watch.waiting == 1, timeout=20)
        waiting.cancel()  # closes the connection mid-request
        with pytest.raises(asyncio.CancelledError):
            await waiting
    # The server notices the hang-up and lets go well before the 50 s.
    await wait_until(lambda: services.approval_watch.waiting == 0, timeout=10)
