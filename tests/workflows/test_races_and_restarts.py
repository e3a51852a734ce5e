"""Decisions racing the deadline, worker and server restarts: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.market_providers import MarketDataError, MarketDataFailure, SimulatedMarketData
from hitl.errors import ErrorCode, HITLError
from hitl.market import MarketQuote
from hitl.models import ApprovalRequest, DecisionReason, TradeStatus
from tests.temporal_fixtures import (
    BIN,
    DEV_SERVER_PRAGMAS,
    Gateway,
    make_proposal,
    start_gateway,
    wait_until,
)
from tests.workflows.test_approval_paths import command, events, requested, stored
from workflows.client import ApprovalClient


class GatedMarket:
    """The simulated market, but each quote waits until the test opens the gate: a slow feed
    that keeps a decision in flight while the deadline passes."""

    def __init__(self, market: SimulatedMarketData, *, fail: bool = False) -> None:
        self.market = market
        self.gate = asyncio.Event()
        self.asked = asyncio.Event()
        self.fail = fail

    async def quote(self, instrument: str) -> MarketQuote:
        self.asked.set()
        await self.gate.wait()
        if self.fail:
            raise MarketDataError(instrument, MarketDataFailure.UNKNOWN_INSTRUMENT, "delisted")
        return await self.market.quote(instrument)

    async def aclose(self) -> None:
        """Nothing to close."""


@pytest.mark.parametrize("decision_succeeds", [True, False], ids=["decision-wins", "expiry-wins"])
async def test_decision_racing_the_deadline_gives_exactly_one_outcome(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    decision_succeeds: bool,
) -> None:
    market = SimulatedMarketData(jitter_percent=Decimal(0))
    gated = GatedMarket(market, fail=not decision_succeeds)
    gw = await start_gateway(dev_env, sqlite_sessions, provider=gated, timeout_seconds=2)
    gw.market = market
    async with gw.worker:
        trade_id, approval = await requested(gw)
        decision = asyncio.create_task(gw.client.approval(trade_id).approve(command()))
        await asyncio.wait_for(gated.asked.wait(), 10)
        # The deadline passes while the decision is in flight.
        await asyncio.sleep((approval.expires_at - _now()).total_seconds() + 0.5)
        gated.gate.set()
        if decision_succeeds:
            final = await decision
            assert final.status is TradeStatus.ACCEPTED
        else:
            with pytest.raises(HITLError) as raised:
                await decision
            assert raised.value.error is ErrorCode.MARKET_DATA_UNAVAILABLE
            await wait_until(lambda: _decided(gw, trade_id))
            final_row = await stored(gw, trade_id)
            assert final_row is not None
            assert final_row.decision_reason is DecisionReason.HITL_TIMEOUT
        decided = [e for e in await events(gw, trade_id) if e in ("hitl.decided", "hitl.expired")]
        assert len(decided) == 1


def _now() -> datetime:
    return datetime.now(UTC)


async def _decided(gw: Gateway, trade_id: uuid.UUID) -> bool:
    row = await stored(gw, trade_id)
    return row is not None and row.is_decided


async def test_a_new_worker_completes_approvals_the_old_one_left_waiting(
    dev_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        trade_ids = [(await requested(gw))[0] for _ in range(3)]
    # The first worker is gone; a new one (another process in production) takes over by replay.
    async with gw.new_worker():
        for trade_id in trade_ids:
            final = await gw.client.approval(trade_id).approve(command())
            assert final.status is TradeStatus.ACCEPTED


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _start_dev_server(db_file: Path, port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        str(BIN / "temporal"),
        "server",
        "start-dev",
        "--db-filename",
        str(db_file),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--headless",
        "--log-level",
        "error",
        *DEV_SERVER_PRAGMAS,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return process


async def _connect(port: int) -> Client:
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            return await Client.connect(f"127.0.0.1:{port}", data_converter=pydantic_data_converter)
        except RuntimeError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


@pytest.fixture
def server_on_disk(tmp_path: Path) -> tuple[Path, int]:
    return tmp_path / "temporal.db", _free_port()


async def test_pending_approvals_and_timers_survive_a_dev_server_restart(
    sqlite_sessions: async_sessionmaker[AsyncSession], server_on_disk: tuple[Path, int]
) -> None:
    db_file, port = server_on_disk
    server = await _start_dev_server(db_file, port)
    try:
        client = await _connect(port)
        env = WorkflowEnvironment.from_client(client)
        gw = await start_gateway(env, sqlite_sessions, timeout_seconds=4)
        async with gw.worker:
            expires_during_outage = (await requested(gw))[0]
            long_lived = make_proposal(gw.market)
            # The worker's policy applies at start: this one gets 300 s.
            gw.policy = gw.policy.model_copy(update={"timeout_seconds": 300})
            await gw.client.request_approval(long_lived, requested_by="bot-1")
            await wait_until(lambda: stored(gw, long_lived.trade_id))
    finally:
        server.terminate()
        await server.wait()
    await asyncio.sleep(4.5)  # the second approval's deadline passes while the server is down

    server = await _start_dev_server(db_file, port)
    try:
        client = await _connect(port)
        gw.env = WorkflowEnvironment.from_client(client)
        gw.client = ApprovalClient(client, task_queue=gw.task_queue)
        async with gw.new_worker():
            handle = client.get_workflow_handle(
                f"approval-{expires_during_outage}", result_type=ApprovalRequest
            )
            expired = await asyncio.wait_for(handle.result(), 30)
            assert expired.decision_reason is DecisionReason.HITL_TIMEOUT
            # The other one still waits, and a decision now completes it.
            final = await gw.client.approval(long_lived.trade_id).approve(command())
            assert final.status is TradeStatus.ACCEPTED
    finally:
        server.terminate()
        await server.wait()
