"""Chaos: parts of the gateway die or vanish under a steady load; afterwards every approval has
exactly one decision, no workflow FAILED and no 500 was served (issue #16, item 7).

The short scenarios run in ``make test`` on one embedded-SQLite stack; the long ones (marked
``chaos``) run with ``make chaos``. Results: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from activities.market_providers import SimulatedMarketData
from tests.chaos.harness import (
    ANSWER_WITHIN,
    TOKENS,
    ChaosStack,
    Load,
    PrivatePostgres,
    Verdict,
    verdict,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ChaosStack]:
    """One embedded stack (SQLite, the dev server on a file) for the short scenarios."""
    workdir = tmp_path_factory.mktemp("chaos")
    running = ChaosStack(workdir, f"sqlite+aiosqlite:///{workdir / 'hitl.db'}")
    try:
        await running.start()
        yield running
    finally:
        running.stop()


def _assert_clean(result: Verdict) -> None:
    assert result.five_hundreds == 0, result
    assert result.failed_workflows == 0, result
    assert result.approvals == result.decided_once, result


async def _load(stack: ChaosStack) -> Load:
    load = Load(stack.api_url)
    load.start()
    await asyncio.sleep(2)
    return load


def _body(trade_id: uuid.UUID) -> dict[str, str]:
    return {
        "trade_id": str(trade_id),
        "instrument": "EUR/USD",
        "side": "BUY",
        "risk_pct": "1.5",
        "confidence": "0.8",
        "request_price": str(SimulatedMarketData().mid_price("EUR/USD")),
        "reasoning_summary": "chaos probe",
    }


async def _probe_unavailable(stack: ChaosStack) -> tuple[int, str | None, float]:
    """One request while a dependency is down: its status, SEC code and how long it took."""
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        began = time.monotonic()
        answer = await http.post(
            "/api/hitl/requests",
            json=_body(uuid.uuid4()),
            headers={"Authorization": f"Bearer {TOKENS['bot-1']}"},
        )
        return answer.status_code, answer.json().get("error_code"), time.monotonic() - began


# --- short: in make test --------------------------------------------------------------------------


async def test_worker_killed_with_kill_9_under_load(stack: ChaosStack) -> None:
    load = await _load(stack)
    stack.kill9("worker")
    await asyncio.sleep(3)
    stack.spawn("worker")
    await asyncio.sleep(3)
    await load.stop()
    result = await verdict(stack, load)
    _assert_clean(result)
    assert result.approvals >= 3


async def test_api_killed_with_kill_9_mid_request_the_retry_makes_one_approval(
    stack: ChaosStack,
) -> None:
    load = await _load(stack)
    # Requests and decisions are in flight: the connection of some of them is cut.
    stack.kill9("api")
    await asyncio.sleep(1)
    stack.spawn("api")
    await stack.wait_api()
    await asyncio.sleep(2)
    await load.stop()
    result = await verdict(stack, load)
    _assert_clean(result)
    assert 0 in result.statuses, "no request had its connection cut"


async def test_temporal_unreachable_the_api_answers_503_fast(stack: ChaosStack) -> None:
    stack.kill9("temporal")
    try:
        status, code, _seconds = await _probe_unavailable(stack)
        assert (status, code) == (503, "SEC-070")
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["temporal"].startswith("unreachable")
    finally:
        stack.spawn("temporal")
        await stack.wait_temporal()
        if not stack.alive("worker"):
            stack.spawn("worker")
        await stack.wait_api()


@pytest.mark.chaos
@pytest.mark.xfail(
    strict=True,
    reason="the Temporal SDK retries an unreachable server for about 10 s inside the start call "
    "(rpc_timeout does not bound it); ApprovalClient.request_approval needs its own 2 s bound "
    "(docs/reliability.md)",
)
async def test_temporal_unreachable_the_api_answers_within_2_seconds(stack: ChaosStack) -> None:
    stack.kill9("temporal")
    try:
        _status, _code, seconds = await _probe_unavailable(stack)
        assert seconds <= ANSWER_WITHIN
    finally:
        stack.spawn("temporal")
        await stack.wait_temporal()
        if not stack.alive("worker"):
            stack.spawn("worker")
        await stack.wait_api()


# --- long: make chaos -----------------------------------------------------------------------------


@pytest.mark.chaos
async def test_temporal_dev_server_killed_and_restarted_on_its_file_under_load(
    stack: ChaosStack,
) -> None:
    load = await _load(stack)
    await asyncio.sleep(3)
    stack.kill9("temporal")
    await asyncio.sleep(10)
    stack.spawn("temporal")
    await stack.wait_temporal()
    await stack.wait_api()
    await asyncio.sleep(5)
    await load.stop()
    result = await verdict(stack, load, settle_seconds=120)
    _assert_clean(result)


@pytest.fixture(scope="module")
async def pg_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[ChaosStack, PrivatePostgres]]:
    """A stack on a private PostgreSQL server that the test may stop."""
    if not PrivatePostgres.available():
        pytest.skip("no PostgreSQL binaries on this machine")
    workdir = tmp_path_factory.mktemp("chaos-pg")
    postgres = PrivatePostgres(Path(f"/tmp/hitl-chaos-pg-{uuid.uuid4().hex[:8]}"))
    await asyncio.to_thread(postgres.init)
    running = ChaosStack(workdir, postgres.url)
    try:
        await running.start()
        yield running, postgres
    finally:
        running.stop()
        await asyncio.to_thread(postgres.destroy)


@pytest.mark.chaos
async def test_postgres_stopped_for_30_seconds_under_load(
    pg_stack: tuple[ChaosStack, PrivatePostgres],
) -> None:
    stack, postgres = pg_stack
    load = await _load(stack)
    await asyncio.to_thread(postgres.stop)
    began = time.monotonic()
    probes: list[tuple[int, str | None, float]] = []
    while time.monotonic() - began < 30:
        probes.append(await _probe_unavailable(stack))
        await asyncio.sleep(2)
    await asyncio.to_thread(postgres.start)
    await stack.wait_api()
    await asyncio.sleep(5)
    await load.stop()
    assert probes and all(status == 503 for status, _, _ in probes), probes
    assert all(code and code.startswith("SEC-") for _, code, _ in probes), probes
    assert max(seconds for _, _, seconds in probes) <= ANSWER_WITHIN, probes
    result = await verdict(stack, load, settle_seconds=120)
    _assert_clean(result)
