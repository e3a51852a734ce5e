"""The notice queue (issue 19): a change queues the notice it owes in its own transaction (and
only then), a dispatcher takes a trade's notices in order from its earliest one not done, under a
lease, and a notice edited in the database is never handed out as the gateway's. On PostgreSQL
and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.messages import GuardianCommand, RecordDecisionInput, RecordRequestInput
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from hitl.notices import NoticeKind
from store import notice_queue
from store.approvals import record_decision, record_request
from store.engine import Sessions, session_factory
from store.guardian import lock_guardian
from store.tables import ApprovalRow, NoticeRow
from tests.store.helpers import new_approval

LEASE = timedelta(seconds=60)


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    """The worker's writer sessions."""
    return session_factory(engine, writer=True)


async def _queued(sessions: Sessions, trade_id: object | None = None) -> list[NoticeRow]:
    async with sessions() as session:
        query = select(NoticeRow).order_by(NoticeRow.id)
        if trade_id is not None:
            query = query.where(NoticeRow.trade_id == trade_id)
        return list((await session.scalars(query)).all())


async def _requested(sessions: Sessions, *, notify: bool = True) -> ApprovalRequest:
    recorded = await record_request(
        sessions,
        RecordRequestInput(approval=new_approval(), requested_by="bot-1", notify=notify),
    )
    return recorded.value


def _decided(
    approval: ApprovalRequest,
    *,
    channel: DecisionChannel = DecisionChannel.API,
    status: TradeStatus = TradeStatus.ACCEPTED,
    reason: DecisionReason = DecisionReason.OPERATOR_APPROVED,
    notice: NoticeKind | None = NoticeKind.APPROVAL_DECIDED,
) -> RecordDecisionInput:
    by = "system" if channel is DecisionChannel.SYSTEM else "alice"
    return RecordDecisionInput(
        expected=approval,
        decided=approval.model_copy(
            update={
                "status": status,
                "decided_at": approval.requested_at + timedelta(seconds=30),
                "decided_by": by,
                "decision_channel": channel,
                "decision_reason": reason,
            }
        ),
        event_type="hitl.decided",
        notice=notice,
        channel=channel,
    )


async def test_a_request_queues_its_notice_with_it_once(sessions: Sessions) -> None:
    approval = await _requested(sessions)
    rows = await _queued(sessions, approval.trade_id)
    assert [(r.kind, r.done_at) for r in rows] == [(NoticeKind.APPROVAL_REQUESTED.value, None)]
    assert rows[0].payload == approval.to_dict()
    assert rows[0].give_up_at - rows[0].created_at == approval.expires_at - approval.requested_at

    # The activity run again (Temporal may): the stored record comes back, nothing is queued.
    again = await record_request(
        sessions,
        RecordRequestInput(
            approval=approval.model_copy(update={"row_hash": None}),
            requested_by="bot-1",
            notify=True,
        ),
    )
    assert not again.written
    assert len(await _queued(sessions, approval.trade_id)) == 1

    # Without the flag (HITL disabled, or a workflow from before NOTICE_OUTBOX), none.
    quiet = await _requested(sessions, notify=False)
    assert await _queued(sessions, quiet.trade_id) == []


async def test_a_request_rejected_at_once_by_a_locked_guardian_queues_nothing(
    sessions: Sessions,
) -> None:
    await lock_guardian(
        sessions, GuardianCommand(by="risk", reason="drawdown", correlation_id="c-lock")
    )
    approval = await _requested(sessions)
    assert approval.decision_reason is DecisionReason.GUARDIAN_LOCK
    assert await _queued(sessions, approval.trade_id) == []


@pytest.mark.parametrize(
    ("channel", "owed"),
    [(DecisionChannel.API, True), (DecisionChannel.WEB, True), (DecisionChannel.DISCORD, False)],
)
async def test_a_decision_queues_its_notice_unless_discord_shows_it(
    sessions: Sessions, channel: DecisionChannel, owed: bool
) -> None:
    approval = await _requested(sessions, notify=False)
    result = await record_decision(sessions, _decided(approval, channel=channel))
    rows = await _queued(sessions, approval.trade_id)
    assert [r.kind for r in rows] == ([NoticeKind.APPROVAL_DECIDED.value] if owed else [])
    if owed:
        assert rows[0].payload == result.value.approval.to_dict()


async def test_an_altered_row_is_told_even_when_discord_made_the_decision(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    approval = await _requested(sessions, notify=False)
    async with engine.begin() as connection:  # an attacker's direct write
        await connection.execute(
            update(ApprovalRow)
            .where(ApprovalRow.trade_id == approval.trade_id)
            .values(risk_pct="9.5")
        )
    result = await record_decision(sessions, _decided(approval, channel=DecisionChannel.DISCORD))
    assert result.value.integrity_failure
    rows = await _queued(sessions, approval.trade_id)
    assert [r.kind for r in rows] == [NoticeKind.APPROVAL_DECIDED.value]
    assert rows[0].payload["decision_reason"] == DecisionReason.INTEGRITY_FAILURE.value


async def test_an_expiry_queues_its_notice_and_an_acceptance_under_a_lock_none(
    sessions: Sessions,
) -> None:
    expiring = await _requested(sessions, notify=False)
    await record_decision(
        sessions,
        _decided(
            expiring,
            channel=DecisionChannel.SYSTEM,
            status=TradeStatus.REJECTED,
            reason=DecisionReason.HITL_TIMEOUT,
            notice=NoticeKind.APPROVAL_EXPIRED,
        ),
    )
    assert [r.kind for r in await _queued(sessions, expiring.trade_id)] == [
        NoticeKind.APPROVAL_EXPIRED.value
    ]

    accepted = await _requested(sessions, notify=False)
    await lock_guardian(
        sessions, GuardianCommand(by="risk", reason="drawdown", correlation_id="c-lock")
    )
    blocked = await record_decision(sessions, _decided(accepted))
    assert blocked.value.guardian_blocked
    assert await _queued(sessions, accepted.trade_id) == []


async def test_claims_take_each_trades_notices_in_order_from_its_earliest(
    sessions: Sessions,
) -> None:
    first = await _requested(sessions)
    await record_decision(sessions, _decided(first))
    second = await _requested(sessions)
    now = datetime.now(UTC)

    taken = await notice_queue.claim(sessions, now=now, lease=LEASE, limit=10)
    assert [(n.trade_id, n.kind) for n in taken] == [
        (first.trade_id, NoticeKind.APPROVAL_REQUESTED.value),
        (first.trade_id, NoticeKind.APPROVAL_DECIDED.value),
        (second.trade_id, NoticeKind.APPROVAL_REQUESTED.value),
    ]
    assert all(n.approval is not None for n in taken)
    # Leased: nobody else takes them, nor sees them due, until the lease runs out.
    assert await notice_queue.claim(sessions, now=now, lease=LEASE, limit=10) == []
    assert not await notice_queue.due_any(sessions, now=now)
    later = now + LEASE + timedelta(seconds=1)

    # The lease lapsed and was taken over: the first claim's marks change nothing.
    retaken = await notice_queue.claim(sessions, now=later, lease=LEASE, limit=10)
    assert len(retaken) == 3
    stale = taken[0].lease_end
    assert await notice_queue.mark_sent(sessions, [taken[2].id], now=later, lease_end=stale) == 0
    await notice_queue.release(sessions, [taken[1].id], lease_end=stale)
    assert await notice_queue.claim(sessions, now=later, lease=LEASE, limit=10) == []
    lease = retaken[0].lease_end

    # The first trade's request failed and waits for its retry: its decision waits behind it,
    # the other trade's notice goes on.
    retry_at = later + timedelta(seconds=5)
    await notice_queue.mark_failed(
        sessions, taken[0].id, now=later, lease_end=lease, retry_at=retry_at, error="Discord 503"
    )
    await notice_queue.release(sessions, [taken[1].id, taken[2].id], lease_end=lease)
    assert await notice_queue.due_any(sessions, now=later)
    blocked = await notice_queue.claim(sessions, now=later, lease=LEASE, limit=10)
    assert [n.id for n in blocked] == [taken[2].id]
    assert (
        await notice_queue.mark_sent(
            sessions, [taken[2].id], now=later, lease_end=blocked[0].lease_end
        )
        == 1
    )
    # Only the decision held back behind its request remains: nothing is due, nothing taken.
    assert not await notice_queue.due_any(sessions, now=later)

    # Due again: the request first, then the decision, in one claim.
    again = await notice_queue.claim(sessions, now=retry_at, lease=LEASE, limit=10)
    assert [n.id for n in again] == [taken[0].id, taken[1].id]
    assert again[0].attempts == 1
    # Abandoned, the request no longer holds the decision back.
    lease = again[0].lease_end
    await notice_queue.abandon(
        sessions, taken[0].id, now=retry_at, lease_end=lease, error="window over"
    )
    await notice_queue.release(sessions, [taken[1].id], lease_end=lease)
    assert [
        n.id for n in await notice_queue.claim(sessions, now=retry_at, lease=LEASE, limit=10)
    ] == [taken[1].id]
    outcomes = {r.id: (r.outcome, r.attempts) for r in await _queued(sessions)}
    assert outcomes[taken[0].id] == (notice_queue.NoticeOutcome.ABANDONED, 1)
    assert outcomes[taken[2].id] == (notice_queue.NoticeOutcome.SENT, 1)
    assert (await notice_queue.backlog(sessions)).pending == 1


async def test_a_notice_edited_in_the_database_is_handed_out_as_unverified(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    approval = await _requested(sessions)
    forged = {**approval.to_dict(), "request_price": "1.20000000"}
    async with engine.begin() as connection:
        await connection.execute(
            update(NoticeRow).where(NoticeRow.trade_id == approval.trade_id).values(payload=forged)
        )
    [taken] = await notice_queue.claim(sessions, now=datetime.now(UTC), lease=LEASE, limit=10)
    assert taken.trade_id == approval.trade_id
    assert taken.approval is None


async def test_notices_held_back_never_fill_a_claim(sessions: Sessions) -> None:
    """A trade's later notices waiting behind its failing first one are not taken at all, so a
    long queue of them cannot crowd out every other trade's (nor keep an idle poll writing)."""
    held = await _requested(sessions)
    await record_decision(sessions, _decided(held))
    other = await _requested(sessions)
    now = datetime.now(UTC)
    [head, follower, _] = await notice_queue.claim(sessions, now=now, lease=LEASE, limit=10)
    await notice_queue.mark_failed(
        sessions,
        head.id,
        now=now,
        lease_end=head.lease_end,
        retry_at=now + timedelta(minutes=1),
        error="Discord 503",
    )
    await notice_queue.release(sessions, [follower.id, _.id], lease_end=head.lease_end)

    # A claim of one takes the other trade's, not the held-back decision.
    [taken] = await notice_queue.claim(sessions, now=now, lease=LEASE, limit=1)
    assert taken.trade_id == other.trade_id
    assert not await notice_queue.due_any(sessions, now=now)


async def test_a_row_already_under_the_notices_key_does_not_block_the_change(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    """Someone with write access plants a notice under the key a decision's will use: the
    decision still commits (its transaction would otherwise fail, and be retried, forever)."""
    approval = await _requested(sessions, notify=False)
    planted = f"{approval.trade_id}:approval_decided:ACCEPTED:0"
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        await connection.execute(
            insert(NoticeRow).values(
                kind="approval_decided",
                trade_id=approval.trade_id,
                payload={},
                mac="00" * 32,
                mac_key_id="forged",
                correlation_id="c",
                idempotency_key=planted,
                created_at=now,
                give_up_at=now,
                next_attempt_at=now,
                attempts=0,
            )
        )
    result = await record_decision(sessions, _decided(approval))
    assert result.written and result.value.approval.status is TradeStatus.ACCEPTED
    [row] = await _queued(sessions, approval.trade_id)
    assert row.mac_key_id == "forged"  # the planted row stands, and fails its MAC when taken
