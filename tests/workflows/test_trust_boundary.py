"""Only the gateway can decide: a plain Temporal client holding no key, on the gateway's own
address and data converter, is refused every command that could change an approval or the
Guardian, and leaves nothing in the database or the workflow's history (issue 14)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowFailureError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from hitl.errors import ErrorCode, HITLError
from hitl.keys import KeyPurpose, Keyring, KeyringFile, ensure_keyrings, load_keyring, new_keyring
from hitl.keys import write_keyring as write
from hitl.messages import (
    ApprovalPolicy,
    ApprovalWorkflowInput,
    GuardianCommand,
    GuardianLockNotice,
    LifecycleCommand,
    guardian_workflow_id,
    workflow_id_for,
)
from hitl.models import ApprovalRequest, DecisionReason, TradeStatus
from hitl.settings import get_settings
from hitl.signing import CommandAction, CommandSigner
from store.guardian import read_guardian
from store.tables import AuditRow
from tests.temporal_fixtures import Gateway, make_proposal, start_gateway, wait_until
from tests.workflows.test_approval_paths import command, requested, stored
from workflows.client import ApprovalClient, GuardianClient


@pytest.fixture
async def gw(
    dev_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Gateway]:
    """A running gateway on the dev server."""
    gateway = await start_gateway(dev_env, sqlite_sessions)
    async with gateway.worker:
        yield gateway


@pytest.fixture
async def raw(dev_env: WorkflowEnvironment) -> Client:
    """Anyone on the network: the gateway's Temporal address and data converter, no key."""
    return await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=dev_env.client.namespace,
        data_converter=dev_env.client.data_converter,
    )


def refused(count_before: float, action: CommandAction, reason: str) -> bool:
    labels = {"action": action.value, "reason": reason}
    after = REGISTRY.get_sample_value("hitl_commands_refused_total", labels) or 0.0
    return after == count_before + 1


def refusals(action: CommandAction, reason: str = "not_signed") -> float:
    labels = {"action": action.value, "reason": reason}
    return REGISTRY.get_sample_value("hitl_commands_refused_total", labels) or 0.0


WORKFLOW_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
}


async def history_length(client: Client, workflow_id: str) -> int:
    """How many events of the history say something: workflow tasks left out. The server
    records the workflow task that refused an Update (with no command, nothing of the Update)
    when the history's last events are commands, as they are while an approval waits with its
    request's notice queued rather than sent as an activity (issue 19); when the last event is a
    completed workflow task, it discards it."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    return sum(1 for event in history.events if event.event_type not in WORKFLOW_TASK_EVENTS)


async def settled_history_length(client: Client, workflow_id: str) -> int:
    """:func:`history_length` once the workflow is idle (no workflow task or activity pending and
    nothing new for a moment): what follows a decision must not land in the comparison."""
    handle = client.get_workflow_handle(workflow_id)
    deadline = asyncio.get_running_loop().time() + 30
    seen = -1
    while True:
        length = await history_length(client, workflow_id)
        raw = (await handle.describe()).raw_description
        idle = not raw.pending_activities and not raw.HasField("pending_workflow_task")
        if idle and length == seen:
            return length
        assert asyncio.get_running_loop().time() < deadline, "the workflow never went idle"
        seen = length if idle else -1
        await asyncio.sleep(0.2)


async def audit_count(gw: Gateway) -> int:
    async with gw.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(AuditRow))).scalar_one())


async def expect_refusal(call: Any, code: ErrorCode) -> None:
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await call
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == code.code, cause


@pytest.mark.parametrize("decision", ["approve", "reject"])
async def test_an_unsigned_decision_is_refused_and_leaves_no_trace(
    gw: Gateway, raw: Client, decision: str
) -> None:
    trade_id, before = await requested(gw)
    workflow_id = workflow_id_for(trade_id)
    events, audits = await settled_history_length(raw, workflow_id), await audit_count(gw)
    action = CommandAction.APPROVE if decision == "approve" else CommandAction.REJECT
    counted = refusals(action)
    await expect_refusal(
        raw.get_workflow_handle(workflow_id).execute_update(decision, command("alice")),
        ErrorCode.COMMAND_NOT_SIGNED,
    )
    assert await stored(gw, trade_id) == before
    assert await history_length(raw, workflow_id) == events
    assert await audit_count(gw) == audits
    assert refused(counted, action, "not_signed")
    # The gateway's own decision still goes through.
    final = await gw.client.approval(trade_id).approve(command("alice"))
    assert final.status is TradeStatus.ACCEPTED


async def test_a_proof_for_another_approval_another_action_or_another_key_is_refused(
    gw: Gateway, raw: Client
) -> None:
    first, _ = await requested(gw)
    second, before = await requested(gw)
    signer = CommandSigner(KeyringFile(get_settings().keys_dir, KeyPurpose.COMMANDS).current)
    captured = signer.sign(
        command("alice"), workflow_id=workflow_id_for(first), action=CommandAction.APPROVE
    )
    handle = raw.get_workflow_handle(workflow_id_for(second))
    events = await settled_history_length(raw, workflow_id_for(second))
    await expect_refusal(handle.execute_update("approve", captured), ErrorCode.COMMAND_NOT_SIGNED)
    for_reject = signer.sign(
        command("alice"), workflow_id=workflow_id_for(second), action=CommandAction.REJECT
    )
    await expect_refusal(handle.execute_update("approve", for_reject), ErrorCode.COMMAND_NOT_SIGNED)
    altered = for_reject.model_copy(update={"operator_id": "bob"})
    await expect_refusal(handle.execute_update("reject", altered), ErrorCode.COMMAND_NOT_SIGNED)
    stranger = CommandSigner(lambda: new_keyring(KeyPurpose.COMMANDS, now=datetime.now(UTC)))
    forged = stranger.sign(
        command("alice"), workflow_id=workflow_id_for(second), action=CommandAction.APPROVE
    )
    await expect_refusal(handle.execute_update("approve", forged), ErrorCode.COMMAND_NOT_SIGNED)
    late = CommandSigner(
        KeyringFile(get_settings().keys_dir, KeyPurpose.COMMANDS).current,
        clock=lambda: datetime.now(UTC) - timedelta(minutes=2),
    ).sign(command("alice"), workflow_id=workflow_id_for(second), action=CommandAction.APPROVE)
    await expect_refusal(handle.execute_update("approve", late), ErrorCode.COMMAND_EXPIRED)
    assert await stored(gw, second) == before
    assert await history_length(raw, workflow_id_for(second)) == events


async def test_a_captured_command_cannot_be_used_twice(gw: Gateway, raw: Client) -> None:
    # An approval: the workflow goes on to follow the trade, so the copy reaches its validator
    # (a rejected approval's workflow ends at once, and the server refuses anything after).
    trade_id, _ = await requested(gw)
    workflow_id = workflow_id_for(trade_id)
    signer = CommandSigner(KeyringFile(get_settings().keys_dir, KeyPurpose.COMMANDS).current)
    signed = signer.sign(command("alice"), workflow_id=workflow_id, action=CommandAction.APPROVE)
    handle = raw.get_workflow_handle(workflow_id)
    first: ApprovalRequest = await handle.execute_update(
        "approve", signed, result_type=ApprovalRequest
    )
    assert first.status is TradeStatus.ACCEPTED
    counted = refusals(CommandAction.APPROVE, "replayed")
    await expect_refusal(handle.execute_update("approve", signed), ErrorCode.COMMAND_EXPIRED)
    assert refused(counted, CommandAction.APPROVE, "replayed")


async def test_an_unsigned_lifecycle_report_is_refused(gw: Gateway, raw: Client) -> None:
    trade_id, _ = await requested(gw)
    accepted = await gw.client.approval(trade_id).approve(command("alice"))
    workflow_id = workflow_id_for(trade_id)
    handle = raw.get_workflow_handle(workflow_id)
    # The post-trade snapshot is still being taken: wait until the workflow is idle.
    await wait_until(lambda: handle.query("snapshot"))
    events = await settled_history_length(raw, workflow_id)
    report = LifecycleCommand(target=TradeStatus.FILLED, reported_by="bot-1", correlation_id="c")
    await expect_refusal(handle.execute_update("advance", report), ErrorCode.COMMAND_NOT_SIGNED)
    assert (await stored(gw, trade_id)) == accepted
    assert await history_length(raw, workflow_id) == events


async def test_an_unsigned_start_with_hitl_off_ends_without_a_trace(
    gw: Gateway, raw: Client
) -> None:
    proposal = make_proposal(gw.market)
    audits = await audit_count(gw)
    handle = await raw.start_workflow(
        "ApprovalWorkflow",
        ApprovalWorkflowInput(
            proposal=proposal,
            requested_by="bot-1",
            policy=ApprovalPolicy(enabled=False, allowed_operators=frozenset({"mallory"})),
        ),
        id=workflow_id_for(proposal.trade_id),
        task_queue=gw.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as caught:
        await handle.result()
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "SEC-092"
    assert await stored(gw, proposal.trade_id) is None
    assert await audit_count(gw) == audits
    await gw.notices_sent()
    assert gw.notifier.requested == []
    # The gateway's client says why, rather than "no such approval".
    with pytest.raises(HITLError) as raised:
        await gw.client.approval(proposal.trade_id).recorded()
    assert raised.value.error is ErrorCode.COMMAND_NOT_SIGNED


async def test_a_request_started_and_awaited_in_one_call_answers_as_a_start_would(
    gw: Gateway, raw: Client
) -> None:
    """Update-with-start (issue 19): the gateway's request comes back recorded; the same trade
    again is SEC-011; a client whose key the worker does not hold is refused SEC-092 and
    leaves no row, no audit entry and no notice."""
    proposal = make_proposal(gw.market)
    handle, recorded = await gw.client.request_recorded(proposal, requested_by="bot-1")
    assert recorded.status is TradeStatus.AWAITING_APPROVAL
    assert recorded == await stored(gw, proposal.trade_id)
    assert handle.workflow_id == workflow_id_for(proposal.trade_id)
    with pytest.raises(HITLError) as duplicate:
        await gw.client.request_recorded(proposal, requested_by="bot-1")
    assert duplicate.value.error is ErrorCode.DUPLICATE_REQUEST

    audits = await audit_count(gw)
    stranger = ApprovalClient(
        raw,
        task_queue=gw.task_queue,
        signer=CommandSigner(lambda: new_keyring(KeyPurpose.COMMANDS, now=datetime.now(UTC))),
    )
    forged = make_proposal(gw.market)
    with pytest.raises(HITLError) as refused_start:
        await stranger.request_recorded(forged, requested_by="bot-1")
    assert refused_start.value.error is ErrorCode.COMMAND_NOT_SIGNED
    assert await stored(gw, forged.trade_id) is None
    assert await audit_count(gw) == audits
    await gw.notices_sent()
    assert [n.trade_id for n in gw.notifier.requested] == [proposal.trade_id]


async def test_the_policy_is_the_worker_s_whatever_the_start_carries(
    gw: Gateway, raw: Client
) -> None:
    proposal = make_proposal(gw.market)
    workflow_id = workflow_id_for(proposal.trade_id)
    signer = CommandSigner(KeyringFile(get_settings().keys_dir, KeyPurpose.COMMANDS).current)
    # Even a start the gateway signed cannot turn HITL off or name its own operators.
    start = signer.sign(
        ApprovalWorkflowInput(
            proposal=proposal,
            requested_by="bot-1",
            policy=ApprovalPolicy(
                enabled=False, timeout_seconds=5, allowed_operators=frozenset({"mallory"})
            ),
        ),
        workflow_id=workflow_id,
        action=CommandAction.START,
    )
    await raw.start_workflow("ApprovalWorkflow", start, id=workflow_id, task_queue=gw.task_queue)
    approval = await gw.client.approval(proposal.trade_id).recorded()
    assert approval.status is TradeStatus.AWAITING_APPROVAL
    assert approval.expires_at - approval.requested_at == timedelta(seconds=300)
    with pytest.raises(HITLError) as raised:
        await gw.client.approval(proposal.trade_id).approve(command("mallory"))
    assert raised.value.error is ErrorCode.UNAUTHORISED_OPERATOR


async def test_an_operator_removed_while_an_approval_waits_can_no_longer_decide_it(
    gw: Gateway,
) -> None:
    trade_id, before = await requested(gw)
    gw.policy = gw.policy.model_copy(update={"allowed_operators": frozenset({"bob"})})
    with pytest.raises(HITLError) as raised:
        await gw.client.approval(trade_id).approve(command("alice"))
    assert raised.value.error is ErrorCode.UNAUTHORISED_OPERATOR
    assert await stored(gw, trade_id) == before
    final = await gw.client.approval(trade_id).approve(command("bob"))
    assert final.decided_by == "bob"


async def test_unsigned_guardian_lock_and_unlock_are_refused(gw: Gateway, raw: Client) -> None:
    guardian = GuardianClient(gw.env.client, task_queue=gw.task_queue)
    await guardian.unlock(GuardianCommand(by="admin", correlation_id="c"))  # starts it
    workflow_id = guardian_workflow_id(gw.task_queue)
    events = await settled_history_length(raw, workflow_id)

    async def state() -> Any:
        async with gw.sessions() as session:
            return await read_guardian(session)

    unlocked = await state()
    for update in ("lock", "unlock"):
        start: WithStartWorkflowOperation[Any, Any] = WithStartWorkflowOperation(
            "GuardianWorkflow",
            id=workflow_id,
            task_queue=gw.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        await expect_refusal(
            raw.execute_update_with_start_workflow(
                update,
                GuardianCommand(reason="mischief", by="admin", correlation_id="c"),
                start_workflow_operation=start,
            ),
            ErrorCode.COMMAND_NOT_SIGNED,
        )
        assert await state() == unlocked
    assert await history_length(raw, workflow_id) == events
    # Locked by the gateway, the kill-switch stays locked against an unsigned unlock.
    await guardian.lock(GuardianCommand(reason="drawdown", by="admin", correlation_id="c"))
    await expect_refusal(
        raw.get_workflow_handle(workflow_id).execute_update(
            "unlock", GuardianCommand(by="admin", correlation_id="c")
        ),
        ErrorCode.COMMAND_NOT_SIGNED,
    )
    assert (await state()).locked
    await guardian.unlock(GuardianCommand(by="admin", correlation_id="c"))


async def test_a_captured_unlock_cannot_release_a_later_lock(gw: Gateway, raw: Client) -> None:
    guardian = GuardianClient(gw.env.client, task_queue=gw.task_queue)
    workflow_id = guardian_workflow_id(gw.task_queue)
    signer = CommandSigner(KeyringFile(get_settings().keys_dir, KeyPurpose.COMMANDS).current)
    captured = signer.sign(
        GuardianCommand(by="admin", correlation_id="c"),
        workflow_id=workflow_id,
        action=CommandAction.GUARDIAN_UNLOCK,
    )
    await guardian.lock(GuardianCommand(reason="first", by="admin", correlation_id="c"))
    await raw.get_workflow_handle(workflow_id).execute_update("unlock", captured)
    await guardian.lock(GuardianCommand(reason="second", by="admin", correlation_id="c"))
    await expect_refusal(
        raw.get_workflow_handle(workflow_id).execute_update("unlock", captured),
        ErrorCode.COMMAND_EXPIRED,
    )
    async with gw.sessions() as session:
        assert (await read_guardian(session)).locked
    await guardian.unlock(GuardianCommand(by="admin", correlation_id="c"))


async def test_an_unsigned_lock_notice_is_refused_and_the_old_signal_ignored(
    gw: Gateway, raw: Client
) -> None:
    trade_id, before = await requested(gw)
    workflow_id = workflow_id_for(trade_id)
    events = await settled_history_length(raw, workflow_id)
    notice = GuardianLockNotice(
        version=99,
        reason="fake",
        locked_by="admin",
        locked_at=datetime.now(UTC),
        correlation_id="c",
    )
    handle = raw.get_workflow_handle(workflow_id)
    await expect_refusal(
        handle.execute_update("adopt_guardian_lock", notice), ErrorCode.COMMAND_NOT_SIGNED
    )
    assert await history_length(raw, workflow_id) == events
    # A signal reaches history before anything can check it; the workflow ignores it.
    await handle.signal("guardian_locked", notice)
    current = await gw.client.approval(trade_id).current()
    assert current is not None and current.status is TradeStatus.AWAITING_APPROVAL
    assert await stored(gw, trade_id) == before
    final = await gw.client.approval(trade_id).approve(command("alice"))
    assert final.status is TradeStatus.ACCEPTED


async def test_a_guardian_lock_still_rejects_pending_approvals_through_signed_notices(
    gw: Gateway,
) -> None:
    trade_id, _ = await requested(gw)
    guardian = GuardianClient(gw.env.client, task_queue=gw.task_queue)
    await guardian.lock(GuardianCommand(reason="drawdown", by="admin", correlation_id="c"))
    try:
        final = await gw.client.approval(trade_id).outcome()
        assert final.decision_reason is DecisionReason.GUARDIAN_LOCK
        await gw.env.client.get_workflow_handle(workflow_id_for(trade_id)).result()
    finally:
        await guardian.unlock(GuardianCommand(by="admin", correlation_id="c"))


async def test_key_rotation_end_to_end(
    dev_env: WorkflowEnvironment,
    sqlite_sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys_dir = tmp_path / "keys"
    ensure_keyrings(keys_dir, now=datetime.now(UTC))
    monkeypatch.setenv("HITL_KEYS_DIR", str(keys_dir))
    get_settings.cache_clear()
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        old_ring = load_keyring(keys_dir, KeyPurpose.COMMANDS)
        old_signer = CommandSigner(lambda: old_ring)
        first, _ = await requested(gw)
        second, _ = await requested(gw)
        # Rotate under the running API-side client and worker: both follow the file.
        rotated = old_ring.rotated(now=datetime.now(UTC), grace=timedelta(hours=1))
        write(keys_dir, rotated)
        final = await gw.client.approval(first).approve(command("alice"))
        assert final.status is TradeStatus.ACCEPTED
        handle = gw.env.client.get_workflow_handle(workflow_id_for(second))
        # A command signed with the old key just before the rotation verifies during the grace.
        in_grace = old_signer.sign(
            command("alice"), workflow_id=workflow_id_for(second), action=CommandAction.APPROVE
        )
        # ... and not once the grace is over.
        old = rotated.keys[old_ring.active_id]
        over = Keyring(
            purpose=KeyPurpose.COMMANDS,
            active_id=rotated.active_id,
            keys={
                **rotated.keys,
                old.id: dataclasses.replace(
                    old, verify_until=datetime.now(UTC) - timedelta(seconds=1)
                ),
            },
        )
        after_grace = old_signer.sign(
            command("bob"), workflow_id=workflow_id_for(second), action=CommandAction.REJECT
        )
        write(keys_dir, over)
        await expect_refusal(
            handle.execute_update("reject", after_grace), ErrorCode.COMMAND_NOT_SIGNED
        )
        write(keys_dir, rotated)
        decided: ApprovalRequest = await handle.execute_update(
            "approve", in_grace, result_type=ApprovalRequest
        )
        assert decided.status is TradeStatus.ACCEPTED


async def test_a_worker_without_the_commands_keyring_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    result = subprocess.run(  # noqa: ASYNC221 - a short-lived child, on purpose
        [sys.executable, "worker.py"],
        cwd=root,
        env={
            "PATH": "/usr/bin:/bin",
            "HITL_ALLOWED_OPERATORS": "alice",
            "HITL_KEYS_DIR": str(tmp_path / "none"),
            "HITL_WORKER_METRICS_PORT": "0",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SEC-040" in lines[0] and "hitl keys init" in lines[0], lines
