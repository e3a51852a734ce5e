"""Replays committed histories of the approve, reject, slippage and expire paths, so that a
change that would break running approvals fails CI."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from hitl.errors import HITLError
from hitl.messages import DecisionCommand, GuardianCommand, LifecycleCommand
from hitl.models import DecisionChannel, DecisionReason, TradeStatus
from hitl.settings import get_settings
from tests.temporal_fixtures import Gateway, make_proposal
from workflows.approval import ApprovalWorkflow
from workflows.client import GuardianClient
from workflows.connection import gateway_data_converter
from workflows.guardian import GuardianWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
EVERY_PATH = (
    "approve",
    "reject",
    "slippage",
    "expire",
    "guardian",
    "guardian-workflow",
    "four-eyes-accept",
    "four-eyes-reject",
    "four-eyes-expire",
)
"""Every path a history is recorded for, from v7 on."""


def test_every_path_has_a_history() -> None:
    stems = {p.stem for p in HISTORIES}
    assert stems >= {"approve", "reject", "slippage", "expire"}  # the first workflow code's
    assert stems >= {f"{path}-v2" for path in ("approve", "reject", "slippage", "expire")}
    assert stems >= {"guardian-v2", "guardian-workflow-v2"}
    # v3: short reads and writes as local activities
    assert stems >= {
        f"{path}-v3" for path in ("approve", "reject", "slippage", "expire", "guardian")
    }
    # v4: signed commands, the worker's policy recorded at start, the signed lock notice
    assert stems >= {
        f"{path}-v4"
        for path in ("approve", "reject", "slippage", "expire", "guardian", "guardian-workflow")
    }
    # v5: search attributes, summaries, current details, reminders and escalations (issue 18)
    assert stems >= {
        f"{path}-v5"
        for path in ("approve", "reject", "slippage", "expire", "guardian", "guardian-workflow")
    }
    # v6: four eyes (issue 17)
    assert stems >= {f"four-eyes-{path}-v6" for path in ("accept", "reject", "expire")}
    # v7: notices queued by the store with their changes, not sent by activities (issue 19)
    assert stems >= {f"{path}-v7" for path in EVERY_PATH}
    # v8: one patch marker for every earlier patch, one timer at a time (issue 19)
    assert stems >= {f"{path}-v8" for path in EVERY_PATH}
    # v9: admission with the request's write, an acceptance with its snapshot (issue 19)
    assert stems >= {f"{path}-v9" for path in EVERY_PATH}


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays_without_nondeterminism(path: Path) -> None:
    text = path.read_text()
    workflow_id = json.loads(text)["events"][0]["workflowExecutionStartedEventAttributes"].get(
        "workflowId", path.stem
    )
    # With the payload codec, as the worker replays them: histories recorded before payloads
    # were encrypted pass through it unchanged.
    replayer = Replayer(
        workflows=[ApprovalWorkflow, GuardianWorkflow],
        data_converter=gateway_data_converter(get_settings()),
    )
    result = await replayer.replay_workflow(WorkflowHistory.from_json(workflow_id, text))
    assert result.replay_failure is None


async def test_histories_the_current_code_writes_replay_in_the_sandbox(gateway: Gateway) -> None:
    """The worker runs the workflows unsandboxed (``worker.WORKFLOW_RUNNER``, issue 19); the
    sandbox's determinism checks run here instead, over what the current code writes: an
    approval followed to SETTLED, a rejection, a slippage refusal and a Guardian rejection, each
    replayed by the default (sandboxed) Replayer."""
    decide = DecisionCommand(operator_id="alice", channel=DecisionChannel.API, correlation_id="c")
    handles = []
    approved = await gateway.client.request_approval(
        make_proposal(gateway.market), requested_by="bot-1"
    )
    await approved.approve(decide)
    for target in (TradeStatus.FILLED, TradeStatus.CLOSED, TradeStatus.SETTLED):
        await approved.advance(
            LifecycleCommand(target=target, reported_by="bot-1", correlation_id="c")
        )
    handles.append(approved)
    rejected = await gateway.client.request_approval(
        make_proposal(gateway.market, "BTC-USD"), requested_by="bot-1"
    )
    await rejected.reject(decide)
    handles.append(rejected)
    slipped_proposal = make_proposal(gateway.market, "ETH-USD")
    slipped = await gateway.client.request_approval(slipped_proposal, requested_by="bot-1")
    await slipped.recorded()
    gateway.market.set_price("ETH-USD", slipped_proposal.request_price * Decimal("1.02"))
    with pytest.raises(HITLError):
        await slipped.approve(decide)
    handles.append(slipped)
    locked = await gateway.client.request_approval(
        make_proposal(gateway.market, "SOL-USD"), requested_by="bot-1"
    )
    await locked.recorded()
    guardian = GuardianClient(gateway.env.client, task_queue=gateway.task_queue)
    await guardian.lock(GuardianCommand(reason="drawdown", by="admin", correlation_id="c"))
    try:
        assert (await locked.outcome()).decision_reason is DecisionReason.GUARDIAN_LOCK
        handles.append(locked)
        replayer = Replayer(
            workflows=[ApprovalWorkflow, GuardianWorkflow],
            data_converter=gateway_data_converter(get_settings()),
            workflow_runner=SandboxedWorkflowRunner(),
        )
        for handle in handles:
            workflow = gateway.env.client.get_workflow_handle(handle.workflow_id)
            await workflow.result()
            result = await replayer.replay_workflow(await workflow.fetch_history())
            assert result.replay_failure is None, handle.workflow_id
    finally:
        await guardian.unlock(GuardianCommand(by="admin", correlation_id="c"))
