"""The worker's continuous check of the audit chain (issue 15 item 6), through
``ActivityEnvironment`` as the worker runs it, on PostgreSQL and SQLite: it checkpoints what it
verified, reports a break in the gauge, the verification row and one security alert."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import REGISTRY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs
from temporalio.testing import ActivityEnvironment

from activities.audit import AuditActivities
from activities.notifications import ConsoleNotifier
from hitl.audit_chain import AuditCheckInput
from hitl.keys import KeyPurpose, KeyringFile, keys_dir_from_environment
from hitl.messages import GuardianCommand, RecordDecisionInput
from store import approvals, guardian
from store.audit import verification_status
from store.checkpoints import checkpoint_path, read_checkpoints
from store.engine import session_factory
from store.tables import AuditChainHeadRow
from tests.store.helpers import stored_approval
from tests.store.test_audit_record import (
    attack,
    build_record,
    build_record_with_snapshot,
    decision_of,
)


def _broken_gauge() -> float | None:
    return REGISTRY.get_sample_value("hitl_audit_chain_broken")


async def test_checks_checkpoint_and_alert_once_on_a_break(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    sessions = session_factory(engine, writer=True)
    await build_record(sessions)
    keys = KeyringFile(keys_dir_from_environment(), KeyPurpose.RECORD)
    audit = AuditActivities(
        engine=engine, sessions=sessions, notifier=ConsoleNotifier(), keys=keys, data_dir=tmp_path
    )
    run = ActivityEnvironment().run

    first = await run(audit.verify_audit_chain, AuditCheckInput())
    assert first.intact and first.head.seq == 10 and first.checked == 10
    stored = read_checkpoints(checkpoint_path(tmp_path), keys.current())
    assert [(c.seq, c.chain) for c in stored.checkpoints] == [(10, first.head.chain)]
    assert _broken_gauge() == 0
    status = await verification_status(engine)
    assert status is not None and status.intact and status.seq == 10

    # Only what was appended since is verified (and the rows it changed: an approval, the
    # Guardian's); the head reached is checkpointed again.
    late = await stored_approval(sessions)
    await approvals.record_decision(
        sessions,
        RecordDecisionInput(
            expected=late, decided=decision_of(late, accept=False), event_type="hitl.decided"
        ),
    )
    await guardian.lock_guardian(
        sessions, GuardianCommand(reason="drill", by="admin", correlation_id="corr-lock-2")
    )
    await guardian.unlock_guardian(
        sessions, GuardianCommand(reason="", by="admin", correlation_id="corr-unlock-2")
    )
    second = await run(audit.verify_audit_chain, AuditCheckInput(start=first.head))
    assert second.intact and second.head.seq == 14 and second.checked == 4, second
    assert len(read_checkpoints(checkpoint_path(tmp_path), keys.current()).checkpoints) == 2

    # The tail deleted and the head row rewound: the workflow's last head still knows better.
    await attack(
        engine,
        "DELETE FROM audit_log WHERE seq > 9",
        "UPDATE audit_chain_head SET seq = 9, chain = (SELECT chain FROM audit_log WHERE seq = 9)",
    )
    async with engine.connect() as connection:
        assert (await connection.execute(select(AuditChainHeadRow.seq))).scalar_one() == 9
    with capture_logs() as logs:
        broken = await run(audit.verify_audit_chain, AuditCheckInput(start=second.head))
        again = await run(audit.verify_audit_chain, AuditCheckInput(start=second.head))
    assert broken.problem is not None
    assert broken.problem.startswith("missing tail at seq 10: entries after seq 9 are missing")
    assert again.problem == broken.problem
    assert _broken_gauge() == 1
    status = await verification_status(engine)
    assert status is not None and status.problem == broken.problem
    alerts = [entry for entry in logs if entry["event"] == "security alert"]
    assert len(alerts) == 1  # once per distinct problem, however often it is found again
    assert alerts[0]["log_level"] == "critical"
    assert "missing tail" in alerts[0]["detail"]
    # Nothing is checkpointed past a break.
    assert len(read_checkpoints(checkpoint_path(tmp_path), keys.current()).checkpoints) == 2


async def test_the_continuous_check_names_a_deleted_snapshot(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A snapshot deleted after the check verified its entry: the next incremental check (with
    nothing new appended) still finds it, as the verifier of ``hitl audit verify`` names it."""
    sessions = session_factory(engine, writer=True)
    trades = await build_record_with_snapshot(sessions)
    keys = KeyringFile(keys_dir_from_environment(), KeyPurpose.RECORD)
    audit = AuditActivities(
        engine=engine, sessions=sessions, notifier=ConsoleNotifier(), keys=keys, data_dir=tmp_path
    )
    run = ActivityEnvironment().run
    first = await run(audit.verify_audit_chain, AuditCheckInput())
    assert first.intact and first.head.seq == 11, first
    await attack(engine, "DELETE FROM post_trade_snapshots")
    broken = await run(audit.verify_audit_chain, AuditCheckInput(start=first.head))
    assert broken.problem == (
        f"snapshot differs from its trail at seq 11, trade {trades[0].trade_id}:"
        " the post-trade snapshot this entry recorded is missing (deleted)"
    )
    assert _broken_gauge() == 1
