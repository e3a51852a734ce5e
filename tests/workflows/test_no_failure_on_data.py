"""No workflow fails on data (issue #16, item 3): a stored approval altered behind the gateway's
back is found at the deadline, at a decision or at a lifecycle report; each time the operators get
the security alert, the approval ends (or stays) as safe as it can be, and the workflow is never
FAILED. A workflow ends FAILED only for a bug."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from hitl.errors import ErrorCode, HITLError
from hitl.messages import LifecycleCommand, workflow_id_for
from hitl.models import ApprovalRequest, DecisionReason, TradeStatus
from store.tables import ApprovalRow
from tests.temporal_fixtures import Gateway, make_proposal, start_gateway, wait_until
from tests.workflows.test_approval_paths import command, requested, stored


@pytest.fixture
async def skipping(
    skipping_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Gateway]:
    gw = await start_gateway(skipping_env, sqlite_sessions)
    async with gw.worker:
        yield gw


@pytest.fixture
async def dev(
    dev_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Gateway]:
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        yield gw


async def tamper(gw: Gateway, trade_id: uuid.UUID) -> None:
    """Someone with database access lowers the price of a stored approval."""
    async with gw.sessions.begin() as session:
        await session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.trade_id == trade_id)
            .values(request_price=Decimal("0.00000001"))
        )


async def status_of(gw: Gateway, trade_id: uuid.UUID) -> WorkflowExecutionStatus | None:
    description = await gw.env.client.get_workflow_handle(workflow_id_for(trade_id)).describe()
    return description.status


async def test_tampering_found_at_the_deadline_rejects_and_completes(skipping: Gateway) -> None:
    gw = skipping
    proposal = make_proposal(gw.market)
    handle = await gw.client.request_approval(proposal, requested_by="bot-1")
    await handle.recorded()
    await tamper(gw, proposal.trade_id)

    await gw.env.sleep(gw.policy.timeout_seconds + 10)
    final: ApprovalRequest = await gw.env.client.get_workflow_handle(
        handle.workflow_id, result_type=ApprovalRequest
    ).result()

    assert await status_of(gw, proposal.trade_id) is WorkflowExecutionStatus.COMPLETED
    assert final.status is TradeStatus.REJECTED
    assert final.decision_reason is DecisionReason.INTEGRITY_FAILURE
    row = await stored(gw, proposal.trade_id)
    assert row is not None and row.decision_reason is DecisionReason.INTEGRITY_FAILURE
    assert row.request_price == proposal.request_price  # restored from the workflow's copy
    assert [(a.trade_id, a.error_code) for a in gw.notifier.alerts] == [
        (proposal.trade_id, ErrorCode.INTEGRITY_FAILURE.code)
    ]


async def test_tampering_found_at_a_decision_rejects_and_completes(dev: Gateway) -> None:
    trade_id, _ = await requested(dev)
    await tamper(dev, trade_id)
    with pytest.raises(HITLError) as raised:
        await dev.client.approval(trade_id).approve(command())
    assert raised.value.error is ErrorCode.INTEGRITY_FAILURE
    final: ApprovalRequest = await dev.env.client.get_workflow_handle(
        workflow_id_for(trade_id), result_type=ApprovalRequest
    ).result()
    assert await status_of(dev, trade_id) is WorkflowExecutionStatus.COMPLETED
    assert (final.status, final.decision_reason) == (
        TradeStatus.REJECTED,
        DecisionReason.INTEGRITY_FAILURE,
    )
    assert [a.error_code for a in dev.notifier.alerts] == [ErrorCode.INTEGRITY_FAILURE.code]


async def test_tampering_found_at_a_lifecycle_report_is_refused_and_alerted(
    dev: Gateway,
) -> None:
    trade_id, _ = await requested(dev)
    await dev.client.approval(trade_id).approve(command())
    await tamper(dev, trade_id)
    report = LifecycleCommand(target=TradeStatus.FILLED, reported_by="bot-1", correlation_id="c")
    with pytest.raises(HITLError) as raised:
        await dev.client.approval(trade_id).advance(report)
    assert raised.value.error is ErrorCode.INTEGRITY_FAILURE
    await wait_until(lambda: dev.notifier.alerts)
    assert [(a.trade_id, a.error_code) for a in dev.notifier.alerts] == [
        (trade_id, ErrorCode.INTEGRITY_FAILURE.code)
    ]
    # The trade was accepted and may be live: it is not rewritten, and its workflow goes on
    # (not FAILED) so that a human can look and the bot can still be answered.
    assert await status_of(dev, trade_id) is WorkflowExecutionStatus.RUNNING
    row = await stored(dev, trade_id)
    assert row is not None and row.status is TradeStatus.ACCEPTED
    # A second report meets the same refusal; the workflow still runs.
    with pytest.raises(HITLError):
        await dev.client.approval(trade_id).advance(report)
    assert await status_of(dev, trade_id) is WorkflowExecutionStatus.RUNNING
