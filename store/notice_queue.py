"""The operators' notices, queued in the transaction of the change they tell and taken from
there by the worker's dispatcher (``activities/notice_dispatch.py``).

A notice is the approval as its change left it, MAC'd with the RECORD key (a row edited in the
database is not sent: it is abandoned, with a log line at CRITICAL). Notices of one trade go out
in the order they were queued, one dispatcher at a time: a dispatcher takes a trade's notices
only from its earliest one not yet done, under a lease, and a later notice of the trade waits
while an earlier one is retried. A notice that cannot be sent within the approval's window is
abandoned, as the workflow's own notices were given up after it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import aliased

from hitl.models import ApprovalRequest
from hitl.notices import NoticeKind
from hitl.record_mac import MacCheck, RecordKind, RecordSigner
from store.engine import AsyncSession, Sessions, read_session
from store.integrity import record_keys, seal
from store.tables import NoticeRow

MIN_WINDOW = timedelta(minutes=1)
"""The least time a notice is retried for, however short its approval's window."""
ERROR_LENGTH = 500


class NoticeOutcome:
    """What became of a notice (the ``outcome`` column)."""

    SENT = "sent"
    ABANDONED = "abandoned"
    """Not sent within the approval's window, or failed its MAC."""


@dataclass(frozen=True, slots=True)
class QueuedNotice:
    """A notice a dispatcher has taken: send it, then mark it."""

    id: int
    kind: str
    """Its kind as stored (a :class:`NoticeKind` unless the row was edited)."""
    trade_id: UUID
    approval: ApprovalRequest | None
    """The approval it tells of; None when the row failed its MAC (never sent)."""
    attempts: int
    give_up_at: datetime
    lease_end: datetime
    """The claim's lease, also its token: marks of a claim whose lease another dispatcher has
    since taken over change nothing."""


def _content(kind: NoticeKind, approval: ApprovalRequest) -> dict[str, object]:
    return {"kind": kind.value, "approval": approval.to_dict()}


async def queue_notice(
    session: AsyncSession, kind: NoticeKind, approval: ApprovalRequest, *, now: datetime
) -> None:
    """Queue ``kind`` about ``approval`` in the caller's transaction (the change's own).

    The change's transaction writes it once; its key (trade, kind, status, approvers so far)
    keeps a second out.
    """
    sealed = seal(RecordKind.NOTICE, _content(kind, approval))
    window = max(approval.expires_at - approval.requested_at, MIN_WINDOW)
    values = {
        "kind": kind.value,
        "trade_id": approval.trade_id,
        "payload": approval.to_dict(),
        "mac": sealed.mac,
        "mac_key_id": sealed.key_id,
        "correlation_id": approval.correlation_id,
        "idempotency_key": (
            f"{approval.trade_id}:{kind.value}:{approval.status.value}:{len(approval.approvers)}"
        ),
        "created_at": now,
        "give_up_at": now + window,
        "next_attempt_at": now,
        "attempts": 0,
    }
    # A row already under that key (written behind the gateway's back) must not fail the
    # change's transaction forever: the change commits, the existing row stands (and is sent
    # only if its MAC holds).
    insert = postgresql.insert if session.bind.dialect.name == "postgresql" else sqlite.insert
    await session.execute(
        insert(NoticeRow)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
    )


def _verified(row: NoticeRow) -> ApprovalRequest | None:
    try:
        kind = NoticeKind(row.kind)
        approval = ApprovalRequest.from_dict(row.payload)
    except ValueError:  # pydantic's ValidationError is one
        return None
    check = RecordSigner(record_keys()).check(
        RecordKind.NOTICE,
        _content(kind, approval),
        mac=row.mac,
        key_id=row.mac_key_id,
        at=approval.requested_at,
    )
    return approval if check is MacCheck.VALID and approval.trade_id == row.trade_id else None


def _free(row: type[NoticeRow], now: datetime) -> ColumnElement[bool]:
    """Not done, due, and nobody's (no lease, or a lapsed one)."""
    return and_(
        row.done_at.is_(None),
        row.next_attempt_at <= now,
        or_(row.claimed_until.is_(None), row.claimed_until < now),
    )


def _takeable(now: datetime) -> ColumnElement[bool]:
    """Free, and no earlier notice of its trade is held back (waiting for its retry, or
    another dispatcher's): without this a queue's first rows, all waiting behind one failing
    notice, would fill every batch and starve the rest."""
    earlier = aliased(NoticeRow)
    held = (
        select(earlier.id)
        .where(
            earlier.trade_id == NoticeRow.trade_id,
            earlier.id < NoticeRow.id,
            earlier.done_at.is_(None),
            or_(earlier.next_attempt_at > now, earlier.claimed_until >= now),
        )
        .exists()
    )
    return and_(_free(NoticeRow, now), ~held)


async def due_any(sessions: Sessions, *, now: datetime) -> bool:
    """Whether a notice is due and not taken (a reader's query: an idle dispatcher's poll takes
    no lock)."""
    async with read_session(sessions) as session:
        found = await session.scalar(select(NoticeRow.id).where(_takeable(now)).limit(1))
    return found is not None


async def claim(
    sessions: Sessions, *, now: datetime, lease: timedelta, limit: int
) -> list[QueuedNotice]:
    """Take up to ``limit`` due notices for ``lease``, in queue order, each trade's only from
    its earliest notice not yet done (a later one waits for the earlier to go or be abandoned).
    """
    async with sessions.begin() as session:
        query = select(NoticeRow).where(_takeable(now)).order_by(NoticeRow.id).limit(limit)
        if session.bind.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = list((await session.scalars(query)).all())
        if not rows:
            return []
        # The query's rule cannot see a head another claim has locked but not yet leased
        # (SKIP LOCKED passes over it, not over its trade's later rows): only trades whose
        # earliest notice not done is in this batch are taken.
        heads = dict(
            (
                await session.execute(
                    select(NoticeRow.trade_id, func.min(NoticeRow.id))
                    .where(
                        NoticeRow.done_at.is_(None),
                        NoticeRow.trade_id.in_({row.trade_id for row in rows}),
                    )
                    .group_by(NoticeRow.trade_id)
                )
            )
            .tuples()
            .all()
        )
        by_trade: dict[UUID, list[NoticeRow]] = defaultdict(list)
        for row in rows:
            by_trade[row.trade_id].append(row)
        taken = [
            row
            for trade_id, queued in by_trade.items()
            if queued[0].id == heads.get(trade_id)
            for row in queued
        ]
        if not taken:
            return []
        lease_end = now + lease
        await session.execute(
            update(NoticeRow)
            .where(NoticeRow.id.in_([row.id for row in taken]))
            .values(claimed_until=lease_end)
        )
    taken.sort(key=lambda row: row.id)
    return [
        QueuedNotice(
            id=row.id,
            kind=row.kind,
            trade_id=row.trade_id,
            approval=_verified(row),
            attempts=row.attempts,
            give_up_at=row.give_up_at,
            lease_end=lease_end,
        )
        for row in taken
    ]


def _mine(notice_ids: Sequence[int], lease_end: datetime) -> ColumnElement[bool]:
    return and_(NoticeRow.id.in_(notice_ids), NoticeRow.claimed_until == lease_end)


async def mark_sent(
    sessions: Sessions, notice_ids: Sequence[int], *, now: datetime, lease_end: datetime
) -> int:
    """Record notices sent (one transaction for a dispatcher's batch); how many were still
    this claim's (the others' lease lapsed: whoever took them over sends them again)."""
    if not notice_ids:
        return 0
    async with sessions.begin() as session:
        result = await session.execute(
            update(NoticeRow)
            .where(_mine(notice_ids, lease_end))
            .values(
                done_at=now,
                outcome=NoticeOutcome.SENT,
                claimed_until=None,
                attempts=NoticeRow.attempts + 1,
            )
        )
    return int(getattr(result, "rowcount", 0) or 0)


async def abandon(
    sessions: Sessions, notice_id: int, *, now: datetime, lease_end: datetime, error: str
) -> None:
    """Record a notice abandoned, with why (its trade's later notices go on)."""
    async with sessions.begin() as session:
        await session.execute(
            update(NoticeRow)
            .where(_mine([notice_id], lease_end))
            .values(
                done_at=now,
                outcome=NoticeOutcome.ABANDONED,
                claimed_until=None,
                last_error=error[:ERROR_LENGTH],
            )
        )


async def mark_failed(
    sessions: Sessions,
    notice_id: int,
    *,
    now: datetime,
    lease_end: datetime,
    retry_at: datetime,
    error: str,
) -> None:
    """Record a failed attempt: the notice is due again at ``retry_at`` (its trade's later
    notices wait for it)."""
    async with sessions.begin() as session:
        await session.execute(
            update(NoticeRow)
            .where(_mine([notice_id], lease_end))
            .values(
                next_attempt_at=retry_at,
                claimed_until=None,
                attempts=NoticeRow.attempts + 1,
                last_error=error[:ERROR_LENGTH],
            )
        )


async def release(sessions: Sessions, notice_ids: Sequence[int], *, lease_end: datetime) -> None:
    """Give back notices taken but not attempted (an earlier one of their trade failed, or the
    lease would not cover their send)."""
    if not notice_ids:
        return
    async with sessions.begin() as session:
        await session.execute(
            update(NoticeRow).where(_mine(notice_ids, lease_end)).values(claimed_until=None)
        )


@dataclass(frozen=True, slots=True)
class NoticeBacklog:
    """The notices not yet sent or abandoned (``/readyz`` shows it)."""

    pending: int
    failing: int
    """Of them, those that failed at least once (a notifier down, retrying)."""
    oldest_queued_at: datetime | None


async def backlog(sessions: Sessions) -> NoticeBacklog:
    """The queue's backlog, in one read of its partial index's rows (a reader's session)."""
    async with read_session(sessions) as session:
        row = (
            await session.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(case((NoticeRow.attempts > 0, 1), else_=0)), 0),
                    func.min(NoticeRow.created_at),
                ).where(NoticeRow.done_at.is_(None))
            )
        ).one()
    return NoticeBacklog(pending=int(row[0]), failing=int(row[1]), oldest_queued_at=row[2])
