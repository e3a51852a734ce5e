"""The worker's notice dispatcher: sends the notices the store queued with their changes
(``store/notice_queue.py``) through the worker's notifier (the console, or Discord).

Approvals started before ``NOTICE_OUTBOX`` send their notices as activities, as they always
did; from it on, the workflow asks the store to queue a notice with the change it tells, which
removes two activity tasks and two workflow tasks from every approval (issue 19). What the
workflow's activities guaranteed, this keeps: a notice is retried (1 s, doubling to 30 s) until
the approval's window has gone by, then abandoned with a warning; a trade's notices go out in
order (a decision's after its request's, an outcome's after a first of two approvals'); a
crash between sending and marking sends again (Discord's messages are posted once by their
own key, ``activities/discord_rest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import Enum

import structlog

from activities.notifications import Notifier
from hitl.errors import ErrorCode
from hitl.messages import SecurityAlertInput
from hitl.metrics import NOTICE_FAILURES, NOTICES
from hitl.models import ApprovalRequest
from hitl.notices import NoticeKind
from store import notice_queue
from store.engine import Sessions
from store.notice_queue import NoticeOutcome, QueuedNotice

log = structlog.get_logger(__name__)

POLL_SECONDS = 0.2
"""How often an idle dispatcher looks for due notices (a reader's query, no lock)."""
LEASE = timedelta(seconds=60)
"""How long a taken notice is this dispatcher's: another takes it after (a crash)."""
SEND_TIMEOUT = timedelta(seconds=20)
"""One send's limit (a notifier that hangs counts as failed, and is retried)."""
START_SENDS_WITHIN = LEASE - SEND_TIMEOUT - timedelta(seconds=10)
"""No send starts later than this after the claim, so that every send ends within the lease
(what is left is given back): two dispatchers never send the same notice at once."""
BATCH = 100
CONCURRENCY = 8
"""Trades whose notices are sent at once (each trade's in order)."""
FIRST_RETRY = timedelta(seconds=1)
LAST_RETRY = timedelta(seconds=30)


def retry_delay(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failure: 1 s, doubling, at most 30 s (the retry
    policy the notify activities had)."""
    doubled: timedelta = FIRST_RETRY * (2 ** max(attempts - 1, 0))
    return min(doubled, LAST_RETRY)


class _Attempt(Enum):
    SENT = "sent"
    RETRY = "retry"
    ABANDONED = "abandoned"
    """Done without sending (and marked so)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def send(notifier: Notifier, kind: NoticeKind, approval: ApprovalRequest) -> None:
    """Send one notice through ``notifier``."""
    match kind:
        case NoticeKind.APPROVAL_REQUESTED:
            await notifier.approval_requested(approval)
        case NoticeKind.APPROVAL_DECIDED:
            await notifier.approval_decided(approval)
        case NoticeKind.APPROVAL_EXPIRED:
            await notifier.approval_expired(approval)


class NoticeDispatcher:
    """Takes due notices from the queue and sends them; ``run()`` until cancelled."""

    def __init__(
        self,
        sessions: Sessions,
        notifier: Notifier,
        *,
        poll_seconds: float = POLL_SECONDS,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._sessions = sessions
        self._notifier = notifier
        self._poll_seconds = poll_seconds
        self._clock = clock
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        """Dispatch until cancelled; a database outage is logged and waited out."""
        while True:
            try:
                taken = await self.dispatch_once()
            except Exception as exc:  # the queue keeps them; the next poll tries again
                log.warning(
                    "notice dispatch failed",
                    correlation_id="-",
                    actor="worker",
                    action="notify.dispatch",
                    result="failed",
                    error=f"{type(exc).__name__}: {exc}",
                )
                taken = 0
            if taken < BATCH:
                await asyncio.sleep(self._poll_seconds)

    async def drain(self, *, seconds: float = 30.0) -> None:
        """Dispatch until no notice is due (tests, and a worker's last act before it stops)."""
        async with asyncio.timeout(seconds):
            while await notice_queue.due_any(self._sessions, now=self._clock()):
                if not await self.dispatch_once():
                    await asyncio.sleep(0.05)

    async def dispatch_once(self) -> int:
        """Take the due notices (up to a batch) and send them; how many were taken."""
        if not await notice_queue.due_any(self._sessions, now=self._clock()):
            return 0
        # Both read before the claim waits for the database: its wait counts against the lease.
        now, started = self._clock(), asyncio.get_running_loop().time()
        notices = await notice_queue.claim(self._sessions, now=now, lease=LEASE, limit=BATCH)
        if not notices:
            return 0
        lease_end = notices[0].lease_end
        trades: dict[object, list[QueuedNotice]] = {}
        for notice in notices:
            trades.setdefault(notice.trade_id, []).append(notice)
        sent: list[int] = []
        stop_at = started + START_SENDS_WITHIN.total_seconds()
        try:
            outcomes = await asyncio.gather(
                *(self._send_trade(queued, sent, stop_at) for queued in trades.values()),
                return_exceptions=True,
            )
        finally:
            # Whatever happened to the other trades (a database error, a cancellation), what
            # went out is marked: the rest goes again after the lease.
            marked = await asyncio.shield(
                notice_queue.mark_sent(self._sessions, sent, now=self._clock(), lease_end=lease_end)
            )
        if marked < len(sent):
            log.warning(
                "notices sent after their lease lapsed: another dispatcher may send them again",
                correlation_id="-",
                actor="worker",
                action="notify.dispatch",
                result="lease_lapsed",
                sent=len(sent),
                marked=marked,
            )
        for notice in notices:
            if notice.id in sent:
                NOTICES.labels(kind=notice.kind, outcome=NoticeOutcome.SENT).inc()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(notices)

    async def _send_trade(
        self, queued: list[QueuedNotice], sent: list[int], stop_at: float
    ) -> None:
        """Send one trade's notices in order; the first failure holds back the rest, and none
        starts after ``stop_at`` (the loop's clock): every send ends within the lease. A
        cancellation gives back what was not attempted."""
        lease_end = queued[0].lease_end
        index = 0
        try:
            async with self._slots:
                for index, notice in enumerate(queued):
                    if asyncio.get_running_loop().time() >= stop_at:
                        break
                    outcome = await self._send_one(notice)
                    if outcome is _Attempt.RETRY:
                        index += 1
                        break
                    if outcome is _Attempt.SENT:
                        sent.append(notice.id)
                else:
                    return
            rest = [n.id for n in queued[index:]]
            await notice_queue.release(self._sessions, rest, lease_end=lease_end)
        except asyncio.CancelledError:
            rest = [n.id for n in queued if n.id not in sent]
            await asyncio.shield(notice_queue.release(self._sessions, rest, lease_end=lease_end))
            raise

    async def _send_one(self, notice: QueuedNotice) -> _Attempt:
        """Send ``notice``. A failure is retried later (its trade's later notices wait) or, past
        the approval's window, abandoned (they go on)."""
        if notice.approval is None:
            await self._abandon_altered(notice)
            return _Attempt.ABANDONED
        if self._clock() >= notice.give_up_at:
            # First taken after the approval's window (dispatchers down, or held back behind
            # an earlier notice): too late to tell, as the activity's schedule-to-close was.
            await self._abandon(notice, error="not sent within the approval's window")
            return _Attempt.ABANDONED
        kind = NoticeKind(notice.kind)  # a verified row's kind is one
        try:
            async with asyncio.timeout(SEND_TIMEOUT.total_seconds()):
                await send(self._notifier, kind, notice.approval)
        except Exception as exc:  # any notifier failure (or hang): retried, as the activity was
            error = f"{type(exc).__name__}: {exc}"
            NOTICE_FAILURES.labels(kind=notice.kind).inc()
            now = self._clock()
            if now >= notice.give_up_at:
                await self._abandon(notice, error=error)
                return _Attempt.ABANDONED
            retry_at = now + retry_delay(notice.attempts + 1)
            log.info(
                f"notification {notice.kind} failed; retried",
                correlation_id=notice.approval.correlation_id,
                actor="worker",
                action=f"notify.{notice.kind}",
                result="retry",
                trade_id=str(notice.trade_id),
                attempts=notice.attempts + 1,
                retry_at=retry_at.isoformat(),
                error=error,
            )
            await notice_queue.mark_failed(
                self._sessions,
                notice.id,
                now=now,
                lease_end=notice.lease_end,
                retry_at=retry_at,
                error=error,
            )
            return _Attempt.RETRY
        return _Attempt.SENT

    async def _abandon(self, notice: QueuedNotice, *, error: str) -> None:
        """Give a notice up after the approval's window, with a warning."""
        log.warning(
            f"notification {notice.kind} abandoned after the approval's window",
            correlation_id=notice.approval.correlation_id if notice.approval else "-",
            actor="worker",
            action=f"notify.{notice.kind}",
            result="abandoned",
            trade_id=str(notice.trade_id),
            attempts=notice.attempts,
            error=error,
        )
        await self._mark_abandoned(notice, now=self._clock(), error=error)

    async def _mark_abandoned(self, notice: QueuedNotice, *, now: datetime, error: str) -> None:
        await notice_queue.abandon(
            self._sessions, notice.id, now=now, lease_end=notice.lease_end, error=error
        )
        NOTICES.labels(kind=notice.kind, outcome=NoticeOutcome.ABANDONED).inc()

    async def _abandon_altered(self, notice: QueuedNotice) -> None:
        """A queued notice that fails its MAC was written or edited behind the gateway's back:
        it is never sent, and the operators are alerted (SEC-080)."""
        now = self._clock()
        message = f"queued {notice.kind} notice failed its integrity check; not sent"
        log.critical(
            message,
            correlation_id="-",
            actor="worker",
            action=f"notify.{notice.kind}",
            result="integrity_failure",
            error_code=ErrorCode.INTEGRITY_FAILURE.code,
            trade_id=str(notice.trade_id),
        )
        await self._mark_abandoned(notice, now=now, error=message)
        with contextlib.suppress(Exception):  # the log line above stands if the alert fails
            await self._notifier.security_alert(
                SecurityAlertInput(
                    trade_id=notice.trade_id,
                    error_code=ErrorCode.INTEGRITY_FAILURE.code,
                    message=message,
                    correlation_id="-",
                    detected_at=now,
                )
            )
