"""What the reconciler reads, and the audit entry that flags a mismatch it may not repair.

The one write that repairs (closing a lost approval REJECTED) lives with the other approval
writes; here are the reads of the open rows and the "flagged" entries, written once per finding so
that a mismatch seen on every pass is alerted on only the first time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from pydantic import ValidationError
from sqlalchemy import select

from hitl.messages import SYSTEM_ACTOR
from hitl.models import TradeStatus
from store.audit import AuditEntry, record_audit
from store.engine import Sessions, read_session
from store.integrity import approval_mac_ok, legacy_approval_last_id
from store.tables import ApprovalRow, approval_from_row

LIFECYCLE_OPEN: frozenset[TradeStatus] = frozenset(
    {TradeStatus.ACCEPTED, TradeStatus.FILLED, TradeStatus.CLOSED}
)
"""Accepted trades whose workflow still follows them to SETTLED."""

_CHUNK = 500
"""Trade ids per ``IN (...)`` list (SQLite allows at most 32,766 parameters; keep it small)."""


@dataclass(frozen=True, slots=True)
class OpenRow:
    """An approval row that is still open: awaiting a decision or an accepted trade."""

    trade_id: UUID
    status: TradeStatus
    correlation_id: str
    intact: bool
    """Its MAC matches its content."""


_PARTITION = 500
"""Rows read and checked at a time: between partitions the worker's event loop runs the rest of
its work (at 10,000 pending, one read of them all held it for 0.7 s). The read is a reader's
(:func:`store.engine.read_session`): on SQLite a writer's would hold the write lock meanwhile."""


async def open_rows(sessions: Sessions, trade_ids: Sequence[UUID] | None = None) -> list[OpenRow]:
    """Every row AWAITING_APPROVAL or in an open lifecycle state, with whether it is intact;
    only those of ``trade_ids`` when given."""
    statuses = [TradeStatus.AWAITING_APPROVAL.value, *(s.value for s in LIFECYCLE_OPEN)]
    query = select(ApprovalRow).where(ApprovalRow.status.in_(statuses))
    if trade_ids is None:
        queries = [query]
    else:
        queries = [query.where(ApprovalRow.trade_id.in_(chunk)) for chunk in _chunks(trade_ids)]
    rows: list[OpenRow] = []
    async with read_session(sessions) as session:
        legacy = await legacy_approval_last_id(session)
        for each in queries:
            found = await session.stream_scalars(each.execution_options(yield_per=_PARTITION))
            async for partition in found.partitions():
                rows.extend(_open_row(row, legacy) for row in partition)
    return rows


def _chunks(trade_ids: Sequence[UUID]) -> list[Sequence[UUID]]:
    """``trade_ids`` in lists short enough for one ``IN (...)``."""
    return [trade_ids[start : start + _CHUNK] for start in range(0, len(trade_ids), _CHUNK)]


def _open_row(row: ApprovalRow, legacy_last_id: int) -> OpenRow:
    try:
        # The keyed MAC, as every integrity check (issue 15).
        intact = approval_mac_ok(row, approval_from_row(row), legacy_last_id=legacy_last_id)
    except ValidationError:  # values no record could hold
        intact = False
    return OpenRow(
        trade_id=row.trade_id,
        status=TradeStatus(row.status),
        correlation_id=row.correlation_id,
        intact=intact,
    )


async def trade_ids_without_row(sessions: Sessions, trade_ids: Sequence[UUID]) -> list[UUID]:
    """Those of ``trade_ids`` that have no approval row at all."""
    known: set[UUID] = set()
    async with read_session(sessions) as session:
        for chunk in _chunks(trade_ids):
            found = await session.execute(
                select(ApprovalRow.trade_id).where(ApprovalRow.trade_id.in_(chunk))
            )
            known.update(found.scalars())
    return [trade_id for trade_id in trade_ids if trade_id not in known]


async def record_reconcile_finding(
    sessions: Sessions,
    *,
    kind: str,
    trade_id: UUID,
    correlation_id: str,
    workflow_state: str,
) -> bool:
    """Audit a mismatch the reconciler flags without changing anything; once per finding.

    Returns whether this call wrote the entry (the first pass to see it raises the alert).
    """
    return await record_audit(
        sessions,
        AuditEntry(
            actor_id=SYSTEM_ACTOR,
            action=f"reconcile.{kind.lower()}",
            target_id=trade_id,
            correlation_id=correlation_id,
            payload={"kind": kind, "workflow_state": workflow_state},
            idempotency_key=f"{trade_id}:reconcile:{kind.lower()}",
        ),
        once=True,
    )
