"""Records the four-eyes histories the replay tests run over (issue 17 item 2).

``python -m tests.workflows.record_four_eyes_histories TAG`` records, as ``four-eyes-*-<TAG>.json``
beside the committed histories (never overwriting one): an approval above the threshold accepted
by two operators and followed to SETTLED, one rejected after a first approval, and one expired
after a first approval. Replaying them proves later code still replays what four eyes wrote.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from hitl.keys import ensure_keyrings
from hitl.messages import DecisionCommand, LifecycleCommand
from hitl.models import ApprovalRequest, DecisionChannel, TradeStatus
from migrations.runner import upgrade_to_head
from store.engine import create_engine, session_factory
from tests.temporal_fixtures import BIN, make_proposal, start_gateway
from tests.workflows.record_histories import _write
from workflows.search_attributes import ensure_registered


def _decide(operator: str) -> DecisionCommand:
    return DecisionCommand(
        operator_id=operator, channel=DecisionChannel.API, comment="ok", correlation_id="c"
    )


async def _record(tag: str) -> None:
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
    await ensure_registered(env.client)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{folder}/hitl.db"
        await asyncio.to_thread(upgrade_to_head, url)
        engine = create_engine(url)
        gw = await start_gateway(
            env,
            session_factory(engine, writer=True),
            remind_at_percent=Decimal(50),
            escalate_at_percent=Decimal(80),
            four_eyes_risk_pct=Decimal("2.0"),
        )
        async with gw.worker:
            paths: dict[str, str] = {}
            high = {"risk_pct": Decimal("2.5")}
            # two operators accept, then the whole lifecycle
            proposal = make_proposal(gw.market).model_copy(update=high)
            handle = await gw.client.request_approval(proposal, requested_by="bot")
            await handle.approve(_decide("alice"))
            await handle.approve(_decide("bob"))
            for target in (TradeStatus.FILLED, TradeStatus.CLOSED, TradeStatus.SETTLED):
                await handle.advance(
                    LifecycleCommand(target=target, reported_by="bot", correlation_id="c")
                )
            paths["four-eyes-accept"] = handle.workflow_id
            # one approval, then a rejection
            proposal = make_proposal(gw.market, "BTC-USD").model_copy(update=high)
            handle = await gw.client.request_approval(proposal, requested_by="bot")
            await handle.approve(_decide("alice"))
            await handle.reject(_decide("bob"))
            paths["four-eyes-reject"] = handle.workflow_id
            # one approval, then the deadline
            proposal = make_proposal(gw.market, "SOL-USD").model_copy(update=high)
            handle = await gw.client.request_approval(proposal, requested_by="bot")
            await handle.approve(_decide("alice"))
            await env.sleep(gw.policy.timeout_seconds + 10)
            paths["four-eyes-expire"] = handle.workflow_id
            for name, workflow_id in paths.items():
                wf = env.client.get_workflow_handle(workflow_id, result_type=ApprovalRequest)
                await wf.result()
                _write(f"{name}-{tag}", (await wf.fetch_history()).to_json())
        await engine.dispose()
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(_record(sys.argv[1] if len(sys.argv) > 1 else "new"))
