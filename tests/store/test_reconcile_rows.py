"""What the reconciler reads: the open rows, all of them (a full pass) or those of the trades
whose workflows closed (a periodic pass), read a partition at a time, each with whether its MAC
holds. On PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.models import TradeStatus
from store import reconcile
from store.approvals import close_lost_approval
from store.engine import session_factory
from store.reconcile import open_rows
from store.tables import ApprovalRow
from tests.store.helpers import stored_approval


async def test_open_rows_all_or_of_some_trades_across_partitions_and_chunks(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small partitions and IN lists, so that five rows cross both boundaries.
    monkeypatch.setattr(reconcile, "_PARTITION", 2)
    monkeypatch.setattr(reconcile, "_CHUNK", 2)
    sessions = session_factory(engine, writer=True)
    trades = [(await stored_approval(sessions)).trade_id for _ in range(5)]
    assert await close_lost_approval(
        sessions, trades[0], at=datetime.now(UTC), workflow_state="TERMINATED"
    )
    # An attacker's direct write: the row stays open and is read as not intact.
    async with sessions() as session, session.begin():
        await session.execute(
            update(ApprovalRow).where(ApprovalRow.trade_id == trades[1]).values(risk_pct="9.5")
        )

    every = await open_rows(sessions)
    assert sorted(r.trade_id for r in every) == sorted(trades[1:])
    assert {r.trade_id: r.intact for r in every} == {
        trades[1]: False,
        trades[2]: True,
        trades[3]: True,
        trades[4]: True,
    }
    assert {r.status for r in every} == {TradeStatus.AWAITING_APPROVAL}

    unknown = uuid.uuid4()
    some = await open_rows(sessions, [trades[0], trades[2], unknown, trades[4], trades[1]])
    assert sorted(r.trade_id for r in some) == sorted([trades[1], trades[2], trades[4]])
    assert await open_rows(sessions, []) == []
