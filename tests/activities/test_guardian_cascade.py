"""The Guardian cascade after a lock (issue 16 item 4): every pending approval is rejected first,
in batches, and only then are the workflows told and the messages ended, so the database shows
them all REJECTED as soon as it can write them. A retry resumes in the pass and at the row its
heartbeat recorded; an unlock stops the rejecting but not the telling. On PostgreSQL and SQLite,
through the real activity (its notices to workflows that no longer run answer NOT_FOUND, which
the cascade takes as "ended already")."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.guardian import GuardianActivities
from hitl.messages import GuardianCommand, GuardianLockNotice, SecurityAlertInput
from hitl.models import ApprovalRequest, DecisionReason, TradeStatus
from hitl.settings import get_settings
from hitl.signing import CommandSigner
from store.engine import Sessions, session_factory
from store.guardian import lock_guardian, reject_pending_batch, unlock_guardian
from store.tables import ApprovalRow
from tests.store.helpers import stored_approval
from tests.temporal_fixtures import RecordingNotifier


def command(reason: str) -> GuardianCommand:
    return GuardianCommand(by="admin", reason=reason, correlation_id="corr-cascade")


async def locked(sessions: Sessions) -> GuardianLockNotice:
    """Lock, and the notice the Guardian workflow hands its cascade."""
    status = (await lock_guardian(sessions, command("daily drawdown"))).result.status
    assert status.since is not None
    return GuardianLockNotice(
        version=status.version,
        reason="daily drawdown",
        locked_by="admin",
        locked_at=status.since,
        correlation_id="corr-cascade",
    )


def cascade_env(heartbeat_details: tuple[int, ...] = ()) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, heartbeat_details=list(heartbeat_details), attempt=2 if heartbeat_details else 1
    )
    return env


def activities(sessions: Sessions, temporal: WorkflowEnvironment) -> GuardianActivities:
    return GuardianActivities(
        sessions,
        temporal.client,
        CommandSigner.from_keys_dir(get_settings().keys_dir),
        RecordingNotifier(),
        reject_batch=2,  # several batches out of a handful of approvals
    )


async def statuses(sessions: Sessions) -> list[tuple[int, str, datetime | None]]:
    async with sessions() as session:
        rows = await session.execute(
            select(ApprovalRow.id, ApprovalRow.status, ApprovalRow.decided_at).order_by(
                ApprovalRow.id
            )
        )
        return [(row.id, row.status, row.decided_at) for row in rows]


def notifier_of(guardian: GuardianActivities) -> RecordingNotifier:
    notifier = guardian._notifier
    assert isinstance(notifier, RecordingNotifier)
    return notifier


async def test_every_pending_approval_is_rejected_before_any_is_told(
    engine: AsyncEngine, skipping_env: WorkflowEnvironment
) -> None:
    sessions = session_factory(engine, writer=True)
    pending = [await stored_approval(sessions) for _ in range(5)]
    notice = await locked(sessions)
    guardian = activities(sessions, skipping_env)
    told_while_pending: list[int] = []
    real_end = guardian._end_messages

    async def end_messages(
        notice: GuardianLockNotice, decided: list[ApprovalRequest], *, progress: tuple[int, ...]
    ) -> None:
        # Whenever an approval's message is ended, none is still pending.
        if decided:
            rows = await statuses(sessions)
            told_while_pending.append(
                sum(status == TradeStatus.AWAITING_APPROVAL.value for _, status, _ in rows)
            )
        await real_end(notice, decided, progress=progress)

    guardian._end_messages = end_messages  # type: ignore[method-assign]
    assert await cascade_env().run(guardian.cascade_guardian_lock, notice) == 5
    rows = await statuses(sessions)
    assert {status for _, status, _ in rows} == {TradeStatus.REJECTED.value}
    assert told_while_pending and set(told_while_pending) == {0}
    decided = notifier_of(guardian).decided
    assert sorted(str(a.trade_id) for a in decided) == sorted(str(a.trade_id) for a in pending)
    assert all(a.decision_reason is DecisionReason.GUARDIAN_LOCK for a in decided)


async def test_a_retry_resumes_telling_after_the_row_its_heartbeat_recorded(
    engine: AsyncEngine, skipping_env: WorkflowEnvironment
) -> None:
    sessions = session_factory(engine, writer=True)
    pending = [await stored_approval(sessions) for _ in range(4)]
    notice = await locked(sessions)
    batch = await reject_pending_batch(sessions)
    assert len(batch.rejected) == 4
    rows = await statuses(sessions)
    second_row = rows[1][0]
    guardian = activities(sessions, skipping_env)
    # An attempt that told the first two and then died: (telling, last row told, rejected).
    total = await cascade_env((1, second_row, 4)).run(guardian.cascade_guardian_lock, notice)
    assert total == 4
    told = [a.trade_id for a in notifier_of(guardian).decided]
    assert sorted(map(str, told)) == sorted(str(a.trade_id) for a in pending[2:])


async def test_a_retry_of_an_attempt_of_the_one_pass_version_rejects_the_rest_and_tells_all(
    engine: AsyncEngine, skipping_env: WorkflowEnvironment
) -> None:
    sessions = session_factory(engine, writer=True)
    pending = [await stored_approval(sessions) for _ in range(4)]
    notice = await locked(sessions)
    first = await reject_pending_batch(sessions, limit=2)
    guardian = activities(sessions, skipping_env)
    # The one-pass version's heartbeat: (last row rejected, rejected so far).
    total = await cascade_env((first.last_id, 2)).run(guardian.cascade_guardian_lock, notice)
    assert total == 4
    assert {status for _, status, _ in await statuses(sessions)} == {TradeStatus.REJECTED.value}
    told = [a.trade_id for a in notifier_of(guardian).decided]
    assert sorted(map(str, told)) == sorted(str(a.trade_id) for a in pending)


async def test_an_unlock_stops_rejecting_but_what_was_rejected_is_still_told(
    engine: AsyncEngine, skipping_env: WorkflowEnvironment
) -> None:
    sessions = session_factory(engine, writer=True)
    pending = [await stored_approval(sessions) for _ in range(3)]
    notice = await locked(sessions)
    first = await reject_pending_batch(sessions, limit=2)
    await unlock_guardian(sessions, command("false alarm"))
    guardian = activities(sessions, skipping_env)
    # The attempt rejected two, then the Guardian was unlocked before it could go on.
    total = await cascade_env((0, first.last_id, 2)).run(guardian.cascade_guardian_lock, notice)
    assert total == 2
    rows = await statuses(sessions)
    assert [status for _, status, _ in rows] == [
        TradeStatus.REJECTED.value,
        TradeStatus.REJECTED.value,
        TradeStatus.AWAITING_APPROVAL.value,
    ]
    told = [a.trade_id for a in notifier_of(guardian).decided]
    assert sorted(map(str, told)) == sorted(str(a.trade_id) for a in pending[:2])


class AlertsDown(RecordingNotifier):
    """A notifier whose security alerts fail (Discord away), the rest delivered."""

    async def security_alert(self, alert: SecurityAlertInput) -> None:
        raise ConnectionError("Discord cannot be reached")


async def test_an_alert_that_cannot_be_delivered_costs_the_batch_nothing(
    engine: AsyncEngine, skipping_env: WorkflowEnvironment
) -> None:
    sessions = session_factory(engine, writer=True)
    altered, intact = await stored_approval(sessions), await stored_approval(sessions)
    async with sessions.begin() as session:
        # Written behind the gateway's back: the row no longer matches its MAC.
        await session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.trade_id == altered.trade_id)
            .values(risk_pct=Decimal("9.5"))
        )
    notice = await locked(sessions)
    guardian = GuardianActivities(
        sessions,
        skipping_env.client,
        CommandSigner.from_keys_dir(get_settings().keys_dir),
        AlertsDown(),
    )
    assert await cascade_env().run(guardian.cascade_guardian_lock, notice) == 2
    assert {status for _, status, _ in await statuses(sessions)} == {TradeStatus.REJECTED.value}
    notifier = guardian._notifier
    assert isinstance(notifier, AlertsDown)
    # Both messages ended, the altered one's saying so.
    shown = {a.trade_id: a for a in notifier.decided}
    assert set(shown) == {altered.trade_id, intact.trade_id}
    assert "integrity check" in (shown[altered.trade_id].comment or "")
