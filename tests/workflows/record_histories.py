"""Records the JSON histories the replay tests run over.

``python -m tests.workflows.record_histories TAG`` records every path as ``<path>-<TAG>.json``
beside the histories already committed, which it never overwrites: the old ones keep proving
that today's code still replays what older code wrote (see ``workflow.patched`` in the
workflows), the new ones cover what the code does now.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from hitl.errors import HITLError
from hitl.keys import ensure_keyrings
from hitl.messages import (
    DecisionCommand,
    GuardianCommand,
    LifecycleCommand,
    guardian_workflow_id,
)
from hitl.models import ApprovalRequest, DecisionChannel, TradeStatus
from migrations.runner import upgrade_to_head
from store.engine import create_engine, session_factory
from tests.temporal_fixtures import BIN, Gateway, make_proposal, start_gateway
from workflows.client import GuardianClient
from workflows.search_attributes import ensure_registered

HISTORY_DIR = Path(__file__).parent / "histories"


def write_history(name: str, text: str) -> None:
    """Write ``<name>.json`` beside the committed histories, never over one."""
    path = HISTORY_DIR / f"{name}.json"
    if path.exists():
        raise SystemExit(f"{path} exists; histories are never overwritten (pick another tag)")
    path.write_text(text)


async def write_histories(env: WorkflowEnvironment, paths: dict[str, str], tag: str) -> None:
    """Once each workflow of ``paths`` (name → workflow id) has ended, write its history as
    ``<name>-<tag>.json``."""
    for name, workflow_id in paths.items():
        wf = env.client.get_workflow_handle(workflow_id, result_type=ApprovalRequest)
        await wf.result()
        write_history(f"{name}-{tag}", (await wf.fetch_history()).to_json())


@contextlib.asynccontextmanager
async def recording_gateway(**policy: Any) -> AsyncIterator[tuple[WorkflowEnvironment, Gateway]]:
    """The time-skipping server and the real worker on a fresh SQLite file, with reminders on
    (the settings' defaults, so that the histories hold their timers) and ``policy``."""
    os.environ.setdefault("HITL_ALLOWED_OPERATORS", "alice,bob")
    if not os.environ.get("HITL_KEYS_DIR"):
        # Throwaway keys: commands are signed with them; the histories hold no payload keys.
        keys = Path(tempfile.mkdtemp(prefix="hitl-record-keys-")) / "keys"
        ensure_keyrings(keys, now=datetime.now(UTC))
        os.environ["HITL_KEYS_DIR"] = str(keys)
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=str(BIN / "temporal-test-server"),
    )
    try:
        # An unregistered search attribute makes a workflow hang on this server.
        await ensure_registered(env.client)
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite+aiosqlite:///{folder}/hitl.db"
            await asyncio.to_thread(upgrade_to_head, url)
            engine = create_engine(url)
            try:
                gw = await start_gateway(
                    env,
                    session_factory(engine, writer=True),
                    remind_at_percent=Decimal(50),
                    escalate_at_percent=Decimal(80),
                    **policy,
                )
                async with gw.worker:
                    yield env, gw
            finally:
                await engine.dispose()
    finally:
        await env.shutdown()


async def _record(tag: str) -> None:
    async with recording_gateway() as (env, gw):
        decide = DecisionCommand(
            operator_id="alice", channel=DecisionChannel.API, comment="ok", correlation_id="c"
        )
        paths: dict[str, str] = {}
        # approve, then the whole lifecycle
        proposal = make_proposal(gw.market)
        handle = await gw.client.request_approval(proposal, requested_by="bot")
        await handle.approve(decide)
        for target in (TradeStatus.FILLED, TradeStatus.CLOSED, TradeStatus.SETTLED):
            await handle.advance(
                LifecycleCommand(target=target, reported_by="bot", correlation_id="c")
            )
        paths["approve"] = handle.workflow_id
        # reject
        proposal = make_proposal(gw.market, "BTC-USD")
        handle = await gw.client.request_approval(proposal, requested_by="bot")
        await handle.reject(decide)
        paths["reject"] = handle.workflow_id
        # slippage
        proposal = make_proposal(gw.market, "ETH-USD")
        handle = await gw.client.request_approval(proposal, requested_by="bot")
        gw.market.set_price("ETH-USD", proposal.request_price * Decimal("1.02"))
        with contextlib.suppress(HITLError):  # SEC-050 is the expected outcome here
            await handle.approve(decide)
        paths["slippage"] = handle.workflow_id
        # expire
        proposal = make_proposal(gw.market, "SOL-USD")
        handle = await gw.client.request_approval(proposal, requested_by="bot")
        await env.sleep(gw.policy.timeout_seconds + 10)
        paths["expire"] = handle.workflow_id
        # a Guardian lock rejects a pending approval, which adopts the rejection
        proposal = make_proposal(gw.market, "XRP-USD")
        handle = await gw.client.request_approval(proposal, requested_by="bot")
        await handle.recorded()
        guardian = GuardianClient(env.client, task_queue=gw.task_queue)
        await guardian.lock(GuardianCommand(reason="drawdown", by="admin", correlation_id="c"))
        paths["guardian"] = handle.workflow_id
        await write_histories(env, paths, tag)
        await guardian.unlock(GuardianCommand(by="admin", correlation_id="c"))
        # The Guardian workflow runs on: its history so far.
        running = env.client.get_workflow_handle(guardian_workflow_id(gw.task_queue))
        write_history(f"guardian-workflow-{tag}", (await running.fetch_history()).to_json())


if __name__ == "__main__":
    asyncio.run(_record(sys.argv[1] if len(sys.argv) > 1 else "new"))
