"""The worker's notice dispatcher (issue 19): what the store queued goes out through the notifier,
each trade's notices in the order queued, each once; a failing notice is retried with backoff and
holds its trade's later ones back; past the approval's window it is abandoned; a notice edited in
the database is never sent and raises a security alert. On PostgreSQL and SQLite, with a clock of
the test's."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from activities import notice_dispatch
from activities.notice_dispatch import NoticeDispatcher, retry_delay
from hitl.messages import GuardianCascadeSummary, ReminderKind, SecurityAlertInput
from hitl.models import ApprovalRequest, DecisionChannel, DecisionReason, TradeStatus
from hitl.notices import NoticeKind
from store import notice_queue
from store.engine import Sessions, session_factory
from store.notice_queue import NoticeOutcome, queue_notice
from store.tables import NoticeRow
from tests.store.helpers import new_approval

Sent = tuple[uuid.UUID, NoticeKind, TradeStatus, int]
"""A notice as the notifier received it: trade, kind, status, approvers so far."""


@dataclass
class Clock:
    """The dispatchers' clock, moved by the test."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class FlakyNotifier:
    """Stands in for Discord: fails each notice its first ``failures[(trade, kind)]`` times."""

    failures: dict[tuple[uuid.UUID, NoticeKind], int] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    attempts: Counter[tuple[uuid.UUID, NoticeKind]] = field(default_factory=Counter)
    alerts: list[SecurityAlertInput] = field(default_factory=list)

    async def _deliver(self, kind: NoticeKind, approval: ApprovalRequest) -> None:
        key = (approval.trade_id, kind)
        self.attempts[key] += 1
        await asyncio.sleep(0)  # another dispatcher may run here
        if self.attempts[key] <= self.failures.get(key, 0):
            raise ConnectionError("Discord answered 503")
        self.sent.append((approval.trade_id, kind, approval.status, len(approval.approvers)))

    async def approval_requested(self, approval: ApprovalRequest) -> None:
        await self._deliver(NoticeKind.APPROVAL_REQUESTED, approval)

    async def approval_decided(self, approval: ApprovalRequest) -> None:
        await self._deliver(NoticeKind.APPROVAL_DECIDED, approval)

    async def approval_expired(self, approval: ApprovalRequest) -> None:
        await self._deliver(NoticeKind.APPROVAL_EXPIRED, approval)

    async def approval_reminder(self, approval: ApprovalRequest, kind: ReminderKind) -> None:
        raise AssertionError("reminders are not queued")

    async def security_alert(self, alert: SecurityAlertInput) -> None:
        self.alerts.append(alert)

    async def guardian_cascade(self, summary: GuardianCascadeSummary) -> None:
        raise AssertionError("cascades are not queued")


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    """The worker's writer sessions."""
    return session_factory(engine, writer=True)


def _story(approval: ApprovalRequest, ending: str) -> list[tuple[NoticeKind, ApprovalRequest]]:
    """The notices of one approval, in the order its changes queue them."""
    decided_at = approval.requested_at + timedelta(seconds=40)
    notices = [(NoticeKind.APPROVAL_REQUESTED, approval)]
    if ending == "four-eyes":
        once = approval.model_copy(update={"approvers": ("alice",)})
        notices.append((NoticeKind.APPROVAL_DECIDED, once))
        approval = once
    if ending == "expired":
        expired = approval.model_copy(
            update={
                "status": TradeStatus.REJECTED,
                "decided_at": approval.expires_at,
                "decided_by": "system",
                "decision_channel": DecisionChannel.SYSTEM,
                "decision_reason": DecisionReason.HITL_TIMEOUT,
            }
        )
        notices.append((NoticeKind.APPROVAL_EXPIRED, expired))
    else:
        accepted = approval.model_copy(
            update={
                "status": TradeStatus.ACCEPTED,
                "decided_at": decided_at,
                "decided_by": "bob",
                "decision_channel": DecisionChannel.API,
                "decision_reason": DecisionReason.OPERATOR_APPROVED,
                "approvers": (*approval.approvers, "bob"),
            }
        )
        notices.append((NoticeKind.APPROVAL_DECIDED, accepted))
    return notices


async def _queue(
    sessions: Sessions, notices: list[tuple[NoticeKind, ApprovalRequest]], *, at: datetime
) -> None:
    for kind, approval in notices:
        async with sessions.begin() as session:  # each change its own transaction
            await queue_notice(session, kind, approval, now=at)


async def _rows(sessions: Sessions) -> list[NoticeRow]:
    async with sessions() as session:
        return list((await session.scalars(select(NoticeRow).order_by(NoticeRow.id))).all())


def _expected(notices: list[tuple[NoticeKind, ApprovalRequest]]) -> list[Sent]:
    return [(a.trade_id, kind, a.status, len(a.approvers)) for kind, a in notices]


async def test_notices_go_out_in_order_once(sessions: Sessions) -> None:
    clock = Clock()
    first = _story(new_approval(), "accepted")
    second = _story(new_approval(), "expired")
    await _queue(sessions, first[:1] + second[:1] + first[1:] + second[1:], at=clock.now)
    notifier = FlakyNotifier()
    dispatcher = NoticeDispatcher(sessions, notifier, clock=clock)

    await dispatcher.drain()
    await dispatcher.drain()

    assert sorted(notifier.sent) == sorted(_expected(first) + _expected(second))
    for story in (first, second):
        trade = story[0][1].trade_id
        assert [s for s in notifier.sent if s[0] == trade] == _expected(story)
    assert {(r.outcome, r.attempts) for r in await _rows(sessions)} == {(NoticeOutcome.SENT, 1)}


async def test_a_failing_notice_is_retried_and_holds_its_trade_back(sessions: Sessions) -> None:
    clock = Clock()
    held = _story(new_approval(), "accepted")
    other = _story(new_approval(), "accepted")[:1]
    await _queue(sessions, held + other, at=clock.now)
    trade = held[0][1].trade_id
    notifier = FlakyNotifier(failures={(trade, NoticeKind.APPROVAL_REQUESTED): 2})
    dispatcher = NoticeDispatcher(sessions, notifier, clock=clock)

    await dispatcher.dispatch_once()
    assert notifier.sent == _expected(other)  # the held trade's decision waits for its request
    await dispatcher.dispatch_once()
    assert notifier.attempts[(trade, NoticeKind.APPROVAL_REQUESTED)] == 1  # not due yet

    clock.advance(retry_delay(1))
    await dispatcher.dispatch_once()
    assert notifier.attempts[(trade, NoticeKind.APPROVAL_REQUESTED)] == 2
    assert [s for s in notifier.sent if s[0] == trade] == []
    clock.advance(retry_delay(2) - timedelta(milliseconds=1))
    await dispatcher.dispatch_once()
    assert notifier.attempts[(trade, NoticeKind.APPROVAL_REQUESTED)] == 2  # backoff doubled
    clock.advance(timedelta(milliseconds=1))
    await dispatcher.dispatch_once()
    assert [s for s in notifier.sent if s[0] == trade] == _expected(held)
    rows = {r.kind: r for r in await _rows(sessions) if r.trade_id == trade}
    assert rows[NoticeKind.APPROVAL_REQUESTED.value].attempts == 3
    assert (
        rows[NoticeKind.APPROVAL_REQUESTED.value].last_error
        == "ConnectionError: Discord answered 503"
    )


async def test_a_notice_failing_past_the_window_is_abandoned_and_its_trade_goes_on(
    sessions: Sessions,
) -> None:
    clock = Clock()
    story = _story(new_approval(expires_in=timedelta(minutes=2)), "expired")
    await _queue(sessions, story[:1], at=clock.now)
    trade = story[0][1].trade_id
    notifier = FlakyNotifier(failures={(trade, NoticeKind.APPROVAL_REQUESTED): 1000})
    dispatcher = NoticeDispatcher(sessions, notifier, clock=clock)

    for step in range(10):  # 1, 2, 4, 8, 16, 30, 30… s: the window of 2 minutes runs out
        if step == 4:  # the deadline: the expiry's notice is queued behind the failing one
            await _queue(sessions, story[1:], at=clock.now)
        clock.advance(timedelta(seconds=30))
        await dispatcher.dispatch_once()
    assert notifier.sent == _expected(story[1:])
    outcomes = [(r.kind, r.outcome) for r in await _rows(sessions)]
    assert outcomes == [
        (NoticeKind.APPROVAL_REQUESTED.value, NoticeOutcome.ABANDONED),
        (NoticeKind.APPROVAL_EXPIRED.value, NoticeOutcome.SENT),
    ]


async def test_a_notice_edited_in_the_database_is_not_sent_and_raises_an_alert(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    clock = Clock()
    story = _story(new_approval(), "accepted")
    await _queue(sessions, story, at=clock.now)
    async with engine.begin() as connection:  # an attacker's direct write: a better price
        await connection.execute(
            update(NoticeRow)
            .where(NoticeRow.kind == NoticeKind.APPROVAL_REQUESTED.value)
            .values(payload={**story[0][1].to_dict(), "request_price": "1.15000000"})
        )
    notifier = FlakyNotifier()

    await NoticeDispatcher(sessions, notifier, clock=clock).drain()

    assert notifier.sent == _expected(story[1:])
    assert [(a.trade_id, a.error_code) for a in notifier.alerts] == [
        (story[0][1].trade_id, "SEC-080")
    ]
    assert [r.outcome for r in await _rows(sessions)] == [
        NoticeOutcome.ABANDONED,
        NoticeOutcome.SENT,
    ]


async def test_a_notice_first_taken_after_the_window_is_abandoned_unsent(
    sessions: Sessions,
) -> None:
    clock = Clock()
    story = _story(new_approval(expires_in=timedelta(minutes=2)), "accepted")
    await _queue(sessions, story, at=clock.now)
    clock.advance(timedelta(minutes=3))  # every dispatcher was down meanwhile
    notifier = FlakyNotifier()

    await NoticeDispatcher(sessions, notifier, clock=clock).drain()

    assert notifier.sent == [] and notifier.attempts == Counter()
    assert [r.outcome for r in await _rows(sessions)] == [NoticeOutcome.ABANDONED] * 2


async def test_a_database_error_in_one_trade_keeps_the_others_marked_sent(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    failing = _story(new_approval(), "accepted")
    fine = _story(new_approval(), "accepted")[:1]
    await _queue(sessions, failing + fine, at=clock.now)
    trade = failing[0][1].trade_id
    notifier = FlakyNotifier(failures={(trade, NoticeKind.APPROVAL_REQUESTED): 1})

    async def release_fails(*args: object, **kwargs: object) -> None:
        raise ConnectionError("database went away")

    monkeypatch.setattr(notice_queue, "release", release_fails)
    with pytest.raises(ConnectionError):
        await NoticeDispatcher(sessions, notifier, clock=clock).dispatch_once()

    assert notifier.sent == _expected(fine)
    outcomes = {(r.trade_id, r.kind): r.outcome for r in await _rows(sessions)}
    assert outcomes[(fine[0][1].trade_id, NoticeKind.APPROVAL_REQUESTED.value)] == "sent"
    assert outcomes[(trade, NoticeKind.APPROVAL_REQUESTED.value)] is None  # retried later


@dataclass
class HangingNotifier(FlakyNotifier):
    """A notifier whose request notices never answer (a Discord that accepts and hangs)."""

    async def approval_requested(self, approval: ApprovalRequest) -> None:
        self.attempts[(approval.trade_id, NoticeKind.APPROVAL_REQUESTED)] += 1
        await asyncio.Event().wait()


async def test_a_hanging_send_times_out_and_is_retried(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notice_dispatch, "SEND_TIMEOUT", timedelta(milliseconds=100))
    clock = Clock()
    story = _story(new_approval(), "accepted")
    await _queue(sessions, story, at=clock.now)
    notifier = HangingNotifier()

    await NoticeDispatcher(sessions, notifier, clock=clock).dispatch_once()

    assert notifier.sent == []
    [request, decision] = await _rows(sessions)
    assert (request.attempts, request.done_at, request.claimed_until) == (1, None, None)
    assert request.last_error is not None and request.last_error.startswith("TimeoutError")
    assert (decision.attempts, decision.claimed_until) == (0, None)  # given back, unsent


async def test_no_send_starts_once_the_lease_would_not_cover_it(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notice_dispatch, "START_SENDS_WITHIN", timedelta(0))
    clock = Clock()
    await _queue(sessions, _story(new_approval(), "accepted"), at=clock.now)
    notifier = FlakyNotifier()

    assert await NoticeDispatcher(sessions, notifier, clock=clock).dispatch_once() == 2

    assert notifier.attempts == Counter()
    assert [(r.attempts, r.claimed_until, r.done_at) for r in await _rows(sessions)] == [
        (0, None, None),
        (0, None, None),
    ]


@settings(
    max_examples=12,
    deadline=None,
    # Safe to share the function-scoped engine: each example queues fresh trades and checks
    # only what it queued.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    endings=st.lists(st.sampled_from(["accepted", "four-eyes", "expired"]), min_size=1, max_size=4),
    failures=st.lists(st.integers(min_value=0, max_value=3), min_size=12, max_size=12),
    steps=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=8),
)
async def test_property_every_trades_notices_arrive_once_in_order_across_two_dispatchers(
    sessions: Sessions, endings: list[str], failures: list[int], steps: list[int]
) -> None:
    """Two dispatchers (two worker processes) share the queue, notices fail at random and the
    clock moves at random: every notice is sent exactly once, each trade's in the order its
    changes queued them."""
    clock = Clock(now=datetime.now(UTC) + timedelta(days=1))
    # Windows of an hour: nothing is abandoned in the 400 s the clock moves at most.
    stories = [_story(new_approval(expires_in=timedelta(hours=1)), e) for e in endings]
    # Interleaved, as concurrent approvals' changes would queue them.
    queued = [story[step] for step in range(3) for story in stories if step < len(story)]
    await _queue(sessions, queued, at=clock.now)
    notifier = FlakyNotifier(
        failures={
            (approval.trade_id, kind): failures[index % len(failures)]
            for index, (kind, approval) in enumerate(queued)
        }
    )
    dispatchers = [NoticeDispatcher(sessions, notifier, clock=clock) for _ in range(2)]
    trades = {s[0][1].trade_id for s in stories}

    for rounds in range(40):
        await asyncio.gather(*(d.dispatch_once() for d in dispatchers))
        clock.advance(timedelta(seconds=steps[rounds % len(steps)]))
        if len([s for s in notifier.sent if s[0] in trades]) == len(queued):
            break

    mine = [s for s in notifier.sent if s[0] in trades]
    assert sorted(mine) == sorted(_expected(queued))  # each once
    for story in stories:
        trade = story[0][1].trade_id
        assert [s for s in mine if s[0] == trade] == _expected(story)
