"""Records the four-eyes histories the replay tests run over (issue 17 item 2).

``python -m tests.workflows.record_four_eyes_histories TAG`` records, as ``four-eyes-*-<TAG>.json``
beside the committed histories (never overwriting one): an approval above the threshold accepted
by two operators and followed to SETTLED, one rejected after a first approval, and one expired
after a first approval. Replaying them proves later code still replays what four eyes wrote.
"""

from __future__ import annotations

import asyncio
import sys
from decimal import Decimal

from hitl.messages import DecisionCommand, LifecycleCommand
from hitl.models import DecisionChannel, TradeStatus
from tests.temporal_fixtures import make_proposal
from tests.workflows.record_histories import recording_gateway, write_histories


def _decide(operator: str) -> DecisionCommand:
    return DecisionCommand(
        operator_id=operator, channel=DecisionChannel.API, comment="ok", correlation_id="c"
    )


async def _record(tag: str) -> None:
    async with recording_gateway(four_eyes_risk_pct=Decimal("2.0")) as (env, gw):
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
        await write_histories(env, paths, tag)


if __name__ == "__main__":
    asyncio.run(_record(sys.argv[1] if len(sys.argv) > 1 else "new"))
