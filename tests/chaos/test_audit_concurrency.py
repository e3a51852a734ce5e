"""The tamper-evident record under concurrency (issue 15, Tests): two workers and the API on
PostgreSQL, every approval requested and decided over HTTP at once — by different operators, some
rejected, some double-clicked, some raced by two operators deciding differently — and afterwards
``hitl audit verify`` exits 0 and every approval has exactly one decision.

Each approval costs the stack about 0.4 s of CPU: ``make test`` runs 60 decisions (16 in flight at
once, every kind of race), ``make chaos`` (the ``chaos`` marker) the issue's 1,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus

from hitl.keys import KeyPurpose, KeyringFile
from store.engine import create_engine
from store.tables import ApprovalRow, AuditChainHeadRow
from tests.chaos.harness import (
    REPO,
    ROLES,
    TOKENS,
    Answer,
    ChaosStack,
    Load,
    ProcessDied,
    _wait,
    free_ports,
    verdict,
)
from tests.conftest import create_postgres_database, drop_postgres_database
from workflows.codec import encrypted_data_converter

pytestmark = [pytest.mark.postgres]

OPERATORS = ("alice", "bob", "carol")
STACK_TOKENS = TOKENS | {"bob": "audit-bob-token", "carol": "audit-carol-token"}
STACK_ROLES = ROLES | {"bob": "operator", "carol": "operator"}
REQUESTERS = 8
"""Requests in flight at once."""
DECIDERS = 16
"""Decisions in flight at once (each approval's decisions are sent together)."""
CHECKER = "audit-checkpoint-hitl-approvals"
"""The task queue's AuditCheckpointWorkflow (the workers' continuous check)."""
CHECK_EVERY = 3.0
RETRYABLE = {0, 502, 503, 504}
"""No answer, or the stack was too busy: the same call is sent again."""


@dataclass
class Trade:
    """One approval and every answer its decisions got."""

    trade_id: uuid.UUID
    kind: str
    """``approve`` / ``reject`` (one click), ``double`` (one operator clicks twice at once),
    ``race`` (two operators, one approving and one rejecting, at once)."""
    answers: list[tuple[str, str, int, dict[str, Any]]] = field(default_factory=list)
    """(operator, action, final status, body) of each decision call."""


class Traffic:
    """The bots' requests and the operators' decisions, over HTTP, all at once."""

    def __init__(self, http: httpx.AsyncClient, count: int) -> None:
        self.http = http
        self.count = count
        self.answers: list[Answer] = []
        self.trades: list[Trade] = []

    async def post(self, path: str, body: dict[str, Any], principal: str) -> httpx.Response:
        """POST until a definitive answer (anything but no answer or a busy stack)."""
        while True:
            began = asyncio.get_running_loop().time()
            try:
                answer = await self.http.post(
                    path, json=body, headers={"Authorization": f"Bearer {STACK_TOKENS[principal]}"}
                )
                status = answer.status_code
            except httpx.HTTPError:
                answer, status = None, 0
            code = None
            if answer is not None:
                try:
                    code = answer.json().get("error_code")
                except ValueError:
                    code = None
            seconds = asyncio.get_running_loop().time() - began
            self.answers.append(Answer("POST", path, status, seconds, error_code=code))
            if answer is not None and status not in RETRYABLE:
                return answer
            await asyncio.sleep(0.5)

    async def request(self, index: int, queue: asyncio.Queue[Trade | None]) -> None:
        trade_id = uuid.uuid4()
        body = {
            "trade_id": str(trade_id),
            "instrument": "EUR/USD",
            "side": "BUY" if index % 2 else "SELL",
            "risk_pct": "1.5",
            "confidence": "0.8",
            # Near the market (the paper market starts at the first proposal's price).
            "request_price": str(Decimal("1.16120") + Decimal(index % 7) / 100000),
            "reasoning_summary": f"audit concurrency {index}",
        }
        answer = await self.post("/api/hitl/requests", body, "bot-1")
        # 409 SEC-011: an earlier attempt, cut off, had already started this trade.
        assert answer.status_code in (201, 409), (answer.status_code, answer.text)
        kind = ("approve", "reject", "double", "race")[index % 4]
        trade = Trade(trade_id, kind)
        self.trades.append(trade)
        await queue.put(trade)

    async def decide(self, trade: Trade, index: int) -> None:
        first, second = OPERATORS[index % 3], OPERATORS[(index + 1) % 3]
        calls = {
            "approve": [(first, "approve")],
            "reject": [(first, "reject")],
            "double": [(first, "approve"), (first, "approve")],
            "race": [(first, "approve"), (second, "reject")],
        }[trade.kind]

        async def one(operator: str, action: str) -> None:
            body = {"comment": "looks right"} if action == "approve" else {"reason": "too big"}
            answer = await self.post(f"/api/hitl/{trade.trade_id}/{action}", body, operator)
            trade.answers.append((operator, action, answer.status_code, answer.json()))

        await asyncio.gather(*(one(operator, action) for operator, action in calls))

    async def run(self) -> None:
        """Request ``count`` approvals and decide each as soon as it is recorded."""
        queue: asyncio.Queue[Trade | None] = asyncio.Queue()
        counter = itertools.count()
        indices = iter(range(self.count))

        async def requester() -> None:
            for index in indices:
                await self.request(index, queue)

        async def decider() -> None:
            while (trade := await queue.get()) is not None:
                await self.decide(trade, next(counter))

        deciders = [asyncio.create_task(decider()) for _ in range(DECIDERS)]
        try:
            await asyncio.gather(*(requester() for _ in range(REQUESTERS)))
        finally:
            for _ in deciders:
                queue.put_nowait(None)
            await asyncio.gather(*deciders)


async def _pollers(stack: ChaosStack, task_queue: str) -> int:
    """How many distinct workers poll the approvals' activity task queue."""
    client = await stack.client()
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace="default",
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    return len({poller.identity for poller in described.pollers})


@pytest.fixture
async def two_worker_stack(tmp_path: Path) -> AsyncIterator[ChaosStack]:
    """Temporal, the API and two worker processes (each with its own data folder, so each keeps
    its own checkpoint file) on a fresh PostgreSQL database."""
    url = await create_postgres_database()
    stack = ChaosStack(
        tmp_path,
        url,
        extra_env={
            "HITL_ALLOWED_OPERATORS": ",".join(OPERATORS),
            "HITL_API_TOKENS": ",".join(
                f"{principal}:{STACK_ROLES[principal]}:{token}"
                for principal, token in STACK_TOKENS.items()
            ),
            "HITL_API_ADDRESS_RATE_LIMIT": "100000/second",
            "HITL_API_DECISION_TIMEOUT_SECONDS": "60",
            # Nothing expires while the test runs, however loaded the machine.
            "HITL_TIMEOUT_SECONDS": "7200",
        },
    )
    try:
        await stack.start()
        stack.spawn(
            "worker-2",
            program="worker",
            env={
                "HITL_DATA_DIR": str(tmp_path / "data-2"),
                "HITL_WORKER_METRICS_PORT": str(free_ports(1)[0]),
            },
        )

        async def both_poll() -> bool:
            if not stack.alive("worker-2"):
                raise ProcessDied(f"the second worker died:\n{stack.log_tail('worker-2')}")
            return await _pollers(stack, "hitl-approvals") >= 2

        await _wait(both_poll, seconds=120, what="two workers polling")
        yield stack
    finally:
        stack.stop()
        await drop_postgres_database(url)


async def _gateway_client(stack: ChaosStack) -> Client:
    """A Temporal client with the gateway's payload codec (queries, failures)."""
    converter = encrypted_data_converter(
        KeyringFile(Path(os.environ["HITL_KEYS_DIR"]), KeyPurpose.PAYLOADS)
    )
    return await Client.connect(stack.temporal_address, data_converter=converter)


async def _failures(stack: ChaosStack) -> list[str]:
    """Each failed workflow and why, for the assertion's message."""
    client = await _gateway_client(stack)
    converter = client.data_converter
    found = []
    async for execution in client.list_workflows("ExecutionStatus = 'Failed'"):
        history = await client.get_workflow_handle(execution.id).fetch_history()
        failure = history.events[-1].workflow_execution_failed_event_attributes.failure
        error = await converter.decode_failure(failure)
        cause = error.__cause__
        found.append(f"{execution.id} ({execution.workflow_type}): {error!r} caused by {cause!r}")
    return found


def _audit_verify(stack: ChaosStack, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``hitl audit verify`` as an auditor runs it: the console script, the stack's environment
    with ``data_dir`` (whose checkpoint file it checks) as the data folder."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "hitl"), "audit", "verify"],
        cwd=REPO,
        env=stack.env() | {"HITL_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


async def _keep_checking(stack: ChaosStack, done: asyncio.Event) -> None:
    """Wake the workers' continuous check every few seconds while the load runs (as a worker
    starting does), so incremental checks read the chain while it is being appended to."""
    client = await _gateway_client(stack)
    checker = client.get_workflow_handle(CHECKER)
    while not done.is_set():
        await checker.signal("check_now")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), CHECK_EVERY)


async def _checked_up_to_head(stack: ChaosStack) -> None:
    """Wake the continuous check once more and wait until it verified the whole chain."""
    client = await _gateway_client(stack)
    checker = client.get_workflow_handle(CHECKER)
    engine = create_engine(stack.database_url)
    try:
        async with engine.connect() as conn:
            head = (await conn.execute(select(AuditChainHeadRow.seq))).scalar_one()
    finally:
        await engine.dispose()
    await checker.signal("check_now")

    async def verified() -> bool:
        last = await checker.query("last_verified")
        return last is not None and int(last["seq"]) >= head

    await _wait(verified, seconds=300, what=f"the continuous check up to seq {head}", interval=1)


async def _run(stack: ChaosStack, count: int) -> None:
    limits = httpx.Limits(max_connections=REQUESTERS + 2 * DECIDERS)
    done = asyncio.Event()
    checking = asyncio.create_task(_keep_checking(stack, done))
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=90, limits=limits) as http:
        traffic = Traffic(http, count)
        try:
            await traffic.run()
        finally:
            done.set()
            await checking
        await _checked_up_to_head(stack)
        # The continuous checks found the record intact throughout (a break is a 503 here).
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text

    # Every approval decided exactly once (one decision audit entry, one outbox event), none
    # lost, no workflow failed, no 500 served.
    load = Load(stack.api_url)
    load.answers = traffic.answers
    load.created = {trade.trade_id for trade in traffic.trades}
    result = await verdict(stack, load, settle_seconds=300)
    assert result.approvals == count, result
    assert result.decided_once == count, result
    assert result.failed_workflows == 0, (result, await _failures(stack))
    assert result.five_hundreds == 0, result

    # Every decision the API confirmed is the one stored: no two winners.
    engine = create_engine(stack.database_url)
    try:
        async with engine.connect() as conn:
            stored = {
                uuid.UUID(str(row.trade_id)): row
                for row in await conn.execute(
                    select(ApprovalRow.trade_id, ApprovalRow.status, ApprovalRow.decided_by)
                )
            }
    finally:
        await engine.dispose()
    for trade in traffic.trades:
        row = stored[trade.trade_id]
        assert row.status in ("ACCEPTED", "REJECTED"), (trade, row)
        winners = {(op, action) for op, action, status, _ in trade.answers if status == 200}
        assert len({op for op, _ in winners}) <= 1, trade
        for _op, _action, status, body in trade.answers:
            if status == 200:
                assert (body["status"], body["decided_by"]) == (row.status, row.decided_by), trade
            else:
                # The loser of a race: SEC-012 (or SEC-050, the winner's approval slipped).
                assert status == 409, trade
        if trade.kind == "race":
            codes = sorted(body.get("error_code") or "ok" for _, _, _, body in trade.answers)
            assert codes in (["SEC-012", "ok"], ["SEC-012", "SEC-050"]), trade
        else:
            assert winners or row.status == "REJECTED", trade

    # The auditor's check, once with each worker's checkpoint file.
    for data_dir in (stack.workdir / "data", stack.workdir / "data-2"):
        checked = await asyncio.to_thread(_audit_verify, stack, data_dir)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        summary = re.search(
            r"intact: (\d+) chained audit entries .* (\d+) approvals,", checked.stdout
        )
        assert summary is not None, checked.stdout
        # At least a request and a decision per approval.
        assert int(summary.group(1)) >= 2 * count, checked.stdout
        assert int(summary.group(2)) == count, checked.stdout


@pytest.mark.timeout(900)
async def test_sixty_concurrent_decisions_leave_an_intact_record(
    two_worker_stack: ChaosStack,
) -> None:
    await _run(two_worker_stack, 60)


@pytest.mark.chaos
@pytest.mark.timeout(3600)
async def test_a_thousand_concurrent_decisions_leave_an_intact_record(
    two_worker_stack: ChaosStack,
) -> None:
    await _run(two_worker_stack, 1000)


@pytest.mark.timeout(300)
async def test_the_continuous_check_keeps_checking_after_a_quiet_interval(tmp_path: Path) -> None:
    stack = ChaosStack(
        tmp_path,
        f"sqlite+aiosqlite:///{tmp_path / 'hitl.db'}",
        extra_env={"HITL_AUDIT_VERIFY_SECONDS": "2"},
    )
    try:
        await stack.start()
        client = await _gateway_client(stack)
        checker = client.get_workflow_handle(CHECKER)

        async def three_checks_or_closed() -> bool:
            if (await checker.describe()).status != WorkflowExecutionStatus.RUNNING:
                return True
            history = await checker.fetch_history()
            return (
                sum(e.HasField("activity_task_completed_event_attributes") for e in history.events)
                >= 3
            )

        await _wait(three_checks_or_closed, seconds=120, what="three continuous checks")
        status = (await checker.describe()).status
        assert status == WorkflowExecutionStatus.RUNNING, await _failures(stack)
    finally:
        stack.stop()
