"""The Guardian runs on its own task queue (issue 16 item 4): a lock is answered by the Guardian's
worker alone, and a Guardian started on the approvals' queue by an older version moves there."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from hitl.errors import ErrorCode
from hitl.keys import KeyPurpose, KeyringFile
from hitl.messages import GuardianCommand, guardian_workflow_id
from hitl.settings import get_settings
from hitl.signing import CommandAction, CommandSigner
from store.guardian import read_guardian
from tests.temporal_fixtures import Gateway, start_gateway, wait_until
from tests.workflows.test_trust_boundary import expect_refusal
from worker import move_guardian_to_own_queue
from workflows.client import GuardianClient
from workflows.connection import gateway_data_converter
from workflows.guardian import GuardianWorkflow, guardian_task_queue

REPLAYED = ErrorCode.COMMAND_EXPIRED
"""What a proof seen before is refused with (as in test_trust_boundary)."""
HANG_GUARD = 120.0
"""Seconds before a call that never answers fails the test (not a timing assertion)."""


async def queue_of(handle: WorkflowHandle[GuardianWorkflow, None]) -> str:
    """The task queue of the Guardian's current run."""
    return (await handle.describe()).task_queue


async def locked(gw: Gateway) -> bool:
    async with gw.sessions() as session:
        return (await read_guardian(session)).locked


def guardian_handle(client: Client, gw: Gateway) -> WorkflowHandle[GuardianWorkflow, None]:
    return client.get_workflow_handle_for(GuardianWorkflow.run, guardian_workflow_id(gw.task_queue))


async def test_a_lock_is_answered_by_the_guardian_worker_alone(
    dev_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    """No worker polls the approvals' queue: the Guardian still locks and unlocks."""
    gw = await start_gateway(dev_env, sqlite_sessions)
    guardian = GuardianClient(dev_env.client, task_queue=gw.task_queue)
    async with gw.worker.guardian:
        status = await asyncio.wait_for(
            guardian.lock(GuardianCommand(reason="drawdown", by="admin", correlation_id="c")),
            HANG_GUARD,
        )
        assert status.locked
        assert await locked(gw)
        handle = guardian_handle(dev_env.client, gw)
        assert await queue_of(handle) == guardian_task_queue(gw.task_queue)
        assert guardian_task_queue(gw.task_queue) != gw.task_queue
        status = await asyncio.wait_for(
            guardian.unlock(GuardianCommand(by="admin", correlation_id="c")), HANG_GUARD
        )
        assert not status.locked
        await handle.terminate("test over")


async def test_a_guardian_on_the_approvals_queue_moves_to_its_own(
    dev_env: WorkflowEnvironment, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A Guardian an older version started on the approvals' queue keeps serving there, moves
    (continue-as-new) when a worker starts, keeps the lock and the proofs it has seen, and is
    then served by the Guardian's worker alone."""
    gw = await start_gateway(dev_env, sqlite_sessions)
    client = dev_env.client
    workflow_id = guardian_workflow_id(gw.task_queue)
    guardian = GuardianClient(client, task_queue=gw.task_queue)
    signer = CommandSigner(KeyringFile(get_settings().keys_dir, KeyPurpose.COMMANDS).current)
    captured = signer.sign(
        GuardianCommand(by="admin", correlation_id="c"),
        workflow_id=workflow_id,
        action=CommandAction.GUARDIAN_UNLOCK,
    )
    handle = guardian_handle(client, gw)
    async with gw.worker:
        # As an older version started it: on the approvals' queue.
        await client.start_workflow(GuardianWorkflow.run, id=workflow_id, task_queue=gw.task_queue)
        first_run = (await handle.describe()).run_id
        await guardian.lock(GuardianCommand(reason="first", by="admin", correlation_id="c"))
        await handle.execute_update(GuardianWorkflow.unlock, captured)
        await guardian.lock(GuardianCommand(reason="second", by="admin", correlation_id="c"))
        assert await queue_of(handle) == gw.task_queue
        assert (await handle.describe()).run_id == first_run

        await move_guardian_to_own_queue(client, gw.task_queue)
        home = guardian_task_queue(gw.task_queue)
        await wait_until(lambda: _on(handle, home), timeout=HANG_GUARD)
        assert (await handle.describe()).run_id != first_run
        # The moved run's history (locks, the signal, the patch, continue-as-new) replays.
        history = await client.get_workflow_handle(workflow_id, run_id=first_run).fetch_history()
        replayer = Replayer(
            workflows=[GuardianWorkflow], data_converter=gateway_data_converter(get_settings())
        )
        replayed = await replayer.replay_workflow(history)
        assert replayed.replay_failure is None
        # A second start of a worker changes nothing: the Guardian is home.
        moved_run = (await handle.describe()).run_id
        await move_guardian_to_own_queue(client, gw.task_queue)
        await wait_until(lambda: _took_a_move_signal(handle), timeout=HANG_GUARD)
        assert (await handle.describe()).run_id == moved_run

    # Only the Guardian's worker now: the moved run answers, the lock held across the move,
    # and the unlock captured before it is still refused (the seen proofs were carried).
    fresh = gw.new_worker()
    async with fresh.guardian:
        assert await locked(gw)
        await asyncio.wait_for(
            expect_refusal(handle.execute_update(GuardianWorkflow.unlock, captured), REPLAYED),
            HANG_GUARD,
        )
        assert await locked(gw)
        status = await asyncio.wait_for(
            guardian.unlock(GuardianCommand(by="admin", correlation_id="c")), HANG_GUARD
        )
        assert not status.locked
        assert await queue_of(handle) == home
        await handle.terminate("test over")


async def _on(handle: WorkflowHandle[GuardianWorkflow, None], task_queue: str) -> bool:
    description = await handle.describe()
    return (
        description.task_queue == task_queue
        and description.status is WorkflowExecutionStatus.RUNNING
    )


async def _took_a_move_signal(handle: WorkflowHandle[GuardianWorkflow, None]) -> bool:
    """The current run has taken the second move signal (a workflow task completed after it)."""
    events = [event async for event in handle.fetch_history_events()]
    signals = [
        i
        for i, e in enumerate(events)
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    completed = [
        i for i, e in enumerate(events) if e.HasField("workflow_task_completed_event_attributes")
    ]
    return bool(signals) and bool(completed) and completed[-1] > signals[-1]
