"""``python -m bench.guardian_lock``: the Guardian kill-switch's latency with 0, 1,000 and 10,000
approvals pending (issue 16 item 4), for ``docs/benchmarks.md``.

For each size it fills an embedded SQLite database with that many pending approvals, written with
the gateway's own ``record_request`` (row, MAC, chained audit entry, event), runs the real worker
(``worker.build_worker``: the approvals' worker and the Guardian's, on a Temporal dev server), and
locks through ``GuardianClient`` (what ``POST /api/guardian/lock`` calls):

- **lock call**: ``--samples`` lock/unlock cycles; each lock call is timed to its answer. Rows an
  interrupted cascade rejected between a lock and its unlock are topped up, so each lock meets
  the full number pending;
- **all REJECTED**: one final lock left to run: the time from its answer until no approval is
  still AWAITING_APPROVAL (``pending_remaining`` = 0), polled every 20 ms.

The pending rows have no approval workflows (filling 10,000 real ones takes the full benchmark's
stack about 7 minutes): the cascade's per-approval notice is then a NOT_FOUND Update, which the
cascade accepts as "ended already". With live workflows each notice also runs one workflow task;
the database side (rejections in batches of 200) is the same.

Writes one JSON line per size to stdout (and ``--output``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from temporalio.testing import WorkflowEnvironment

from activities.market_providers import SimulatedMarketData
from activities.notifications import ConsoleNotifier
from activities.policy import WorkerTrust
from bench.databases import fresh_database
from bench.driver import percentile
from hitl.keys import ensure_keyrings
from hitl.messages import GuardianCommand, RecordRequestInput, guardian_workflow_id
from hitl.models import ApprovalRequest, Side, TradeProposal
from hitl.settings import get_settings
from migrations.runner import upgrade_to_head
from store.approvals import record_request
from store.engine import Sessions, create_engine, session_factory
from store.guardian import pending_remaining
from store.tables import ApprovalRow
from worker import activities_for, build_worker
from workflows.client import GuardianClient
from workflows.connection import gateway_data_converter
from workflows.search_attributes import KEYS

INSTRUMENTS = ("EUR/USD", "BTC-USD", "ETH-USD")


def _proposal(market: SimulatedMarketData, index: int) -> TradeProposal:
    instrument = INSTRUMENTS[index % len(INSTRUMENTS)]
    return TradeProposal(
        trade_id=uuid.uuid4(),
        instrument=instrument,
        side=Side.BUY if index % 2 else Side.SELL,
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.82"),
        request_price=market.mid_price(instrument),
        reasoning_summary="Breakout above resistance with rising volume.",
        correlation_id=f"bench-{uuid.uuid4().hex[:12]}",
    )


async def fill(sessions: Sessions, market: SimulatedMarketData, count: int) -> None:
    """``count`` pending approvals, written as the workflow's first activity writes them."""
    now = datetime.now(UTC)
    semaphore = asyncio.Semaphore(8)

    async def one(index: int) -> None:
        async with semaphore:
            draft = ApprovalRequest.from_proposal(
                _proposal(market, index), requested_at=now, expires_at=now + timedelta(hours=6)
            )
            await record_request(sessions, RecordRequestInput(approval=draft, requested_by="bench"))

    await asyncio.gather(*(one(i) for i in range(count)))


async def pending(sessions: Sessions) -> int:
    """Approvals still AWAITING_APPROVAL (whatever the Guardian)."""
    async with sessions() as session:
        result = await session.execute(
            select(func.count())
            .select_from(ApprovalRow)
            .where(ApprovalRow.status == "AWAITING_APPROVAL")
        )
        return int(result.scalar_one())


async def measure(
    env: WorkflowEnvironment, size: int, samples: int, database_url: str | None = None
) -> dict[str, Any]:
    """Lock latency and time to all REJECTED with ``size`` pending, on a fresh database: an
    SQLite file, or a new database on the PostgreSQL server of ``database_url``."""
    folder = Path(tempfile.mkdtemp(prefix="hitl-guardian-bench-"))
    async with fresh_database(database_url, folder) as url:
        return await _measure(env, size, samples, url)


async def _measure(env: WorkflowEnvironment, size: int, samples: int, url: str) -> dict[str, Any]:
    await asyncio.to_thread(upgrade_to_head, url)
    engine = create_engine(url)
    sessions = session_factory(engine, writer=True)
    market = SimulatedMarketData(jitter_percent=Decimal(0))
    task_queue = f"hitl-bench-{uuid.uuid4().hex[:8]}"
    trust = WorkerTrust.from_settings(get_settings())
    workers = build_worker(
        env.client,
        task_queue=task_queue,
        activities=activities_for(
            sessions=sessions,
            provider=market,
            notifier=ConsoleNotifier(),
            client=env.client,
            trust=trust,
        ),
        trust=trust,
    )
    guardian = GuardianClient(env.client, task_queue=task_queue)
    started = time.perf_counter()
    await fill(sessions, market, size)
    fill_seconds = time.perf_counter() - started
    lock_ms: list[float] = []
    async with workers:
        await guardian.unlock(GuardianCommand(by="admin", correlation_id="bench-warm"))
        for sample in range(samples):
            missing = size - await pending(sessions)
            if missing:
                await fill(sessions, market, missing)
            began = time.perf_counter()
            await guardian.lock(
                GuardianCommand(reason="benchmark", by="admin", correlation_id=f"bench-{sample}")
            )
            lock_ms.append((time.perf_counter() - began) * 1000)
            await guardian.unlock(GuardianCommand(by="admin", correlation_id=f"bench-u{sample}"))
        missing = size - await pending(sessions)
        if missing:
            await fill(sessions, market, missing)
        at_lock = await pending(sessions)
        began = time.perf_counter()
        await guardian.lock(
            GuardianCommand(reason="benchmark", by="admin", correlation_id="bench-final")
        )
        answered = time.perf_counter()
        lock_ms.append((answered - began) * 1000)
        while True:
            async with sessions() as session:
                if await pending_remaining(session) == 0:
                    break
            await asyncio.sleep(0.02)
        all_rejected = time.perf_counter() - answered
        await env.client.get_workflow_handle(guardian_workflow_id(task_queue)).terminate("done")
    await engine.dispose()
    return {
        "database": make_url(url).get_backend_name(),
        "pending": size,
        "pending_at_final_lock": at_lock,
        "samples": len(lock_ms),
        "lock_p50_ms": round(statistics.median(lock_ms), 1),
        "lock_p99_ms": round(percentile(lock_ms, 99), 1),
        "lock_max_ms": round(max(lock_ms), 1),
        "all_rejected_s": round(all_rejected, 2),
        "fill_s": round(fill_seconds, 1),
    }


async def main(argv: list[str] | None = None) -> None:
    """Run the sizes asked for, one JSON line each."""
    parser = argparse.ArgumentParser(prog="python -m bench.guardian_lock")
    parser.add_argument("--sizes", default="0,1000,10000")
    parser.add_argument("--samples", type=int, default=30, help="lock calls per size")
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="a PostgreSQL URL: each size uses a fresh database on that server"
        " (default: a fresh SQLite file)",
    )
    args = parser.parse_args(argv)
    # Keyrings of its own unless HITL_KEYS_DIR names some (as the test suite does).
    if not os.environ.get("HITL_KEYS_DIR"):
        keys = Path(tempfile.mkdtemp(prefix="hitl-bench-keys-")) / "keys"
        ensure_keyrings(keys, now=datetime.now(UTC))
        os.environ["HITL_KEYS_DIR"] = str(keys)
    os.environ.setdefault("HITL_ALLOWED_OPERATORS", "alice,bob")
    get_settings.cache_clear()
    env = await WorkflowEnvironment.start_local(
        data_converter=gateway_data_converter(get_settings()),
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=KEYS,
    )
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            result = await measure(env, size, args.samples, args.database_url)
            line = json.dumps(result)
            print(line, flush=True)
            if args.output is not None:
                with args.output.open("a", encoding="utf-8") as out:
                    out.write(line + "\n")
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
