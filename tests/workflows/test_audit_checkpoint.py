"""AuditCheckpointWorkflow on the dev server with the real activity and an SQLite database: it
verifies on start, keeps the last verified head in its history, checks again when asked, and
alerts operators when the record breaks."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.audit import AuditActivities
from hitl.audit_chain import AuditCheckpointInput, ChainHead
from hitl.keys import KeyPurpose, KeyringFile, keys_dir_from_environment
from store.engine import create_engine, session_factory
from tests.store.helpers import stored_approval
from tests.store.test_audit_record import attack
from tests.temporal_fixtures import RecordingNotifier, wait_until
from workflows.audit_checkpoint import AuditCheckpointWorkflow, checkpoint_workflow_id


async def _head(handle: WorkflowHandle[AuditCheckpointWorkflow, None]) -> ChainHead | None:
    return await handle.query(AuditCheckpointWorkflow.last_verified)


async def test_the_workflow_verifies_checkpoints_and_alerts(
    dev_env: WorkflowEnvironment, sqlite_url: str, tmp_path: Path
) -> None:
    engine: AsyncEngine = create_engine(sqlite_url)
    sessions = session_factory(engine, writer=True)
    notifier = RecordingNotifier()
    audit = AuditActivities(
        engine=engine,
        sessions=sessions,
        notifier=notifier,
        keys=KeyringFile(keys_dir_from_environment(), KeyPurpose.RECORD),
        data_dir=tmp_path,
    )
    queue = f"audit-{uuid.uuid4()}"
    try:
        await stored_approval(sessions)
        async with Worker(
            dev_env.client,
            task_queue=queue,
            workflows=[AuditCheckpointWorkflow],
            activities=[audit.verify_audit_chain],
        ):
            handle = await dev_env.client.start_workflow(
                AuditCheckpointWorkflow.run,
                AuditCheckpointInput(interval_seconds=3600),
                id=checkpoint_workflow_id(queue),
                task_queue=queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                start_signal="check_now",
            )
            await wait_until(lambda: _seq_is(handle, 1), timeout=30)

            await stored_approval(sessions)
            await handle.signal(AuditCheckpointWorkflow.check_now)
            await wait_until(lambda: _seq_is(handle, 2), timeout=30)
            assert (tmp_path / "audit-checkpoints.jsonl").read_text().count("\n") == 2

            await stored_approval(sessions)
            await attack(engine, "UPDATE audit_log SET actor_id = 'mallory' WHERE seq = 3")
            await handle.signal(AuditCheckpointWorkflow.check_now)
            await wait_until(lambda: bool(notifier.alerts), timeout=30)
            # The break keeps the last good head: nothing past it is taken as verified.
            assert await _seq_is(handle, 2)
            assert notifier.alerts[0].message.startswith("audit record broken: edited at seq 3")
            await handle.terminate("test over")
    finally:
        await engine.dispose()


async def _seq_is(handle: WorkflowHandle[AuditCheckpointWorkflow, None], seq: int) -> bool:
    head = await _head(handle)
    return head is not None and head.seq == seq
