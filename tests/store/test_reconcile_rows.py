"""What the reconciler reads: the open rows, all of them (a full pass) or those of the trades
whose workflows closed (a periodic pass), read a partition at a time, each with whether its MAC
holds; on SQLite without holding the write lock. On PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.models import TradeStatus
from store import reconcile
from store.approvals import close_lost_approval
from store.engine import create_engine, read_session, session_factory
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


def _can_write(path: str) -> bool:
    """Whether another connection could take SQLite's write lock now."""
    other = sqlite3.connect(path, timeout=0.2)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.rollback()
        return True
    except sqlite3.OperationalError:  # database is locked
        return False
    finally:
        other.close()


async def test_the_reconcilers_reads_leave_sqlites_write_lock_to_the_decisions(
    sqlite_url: str,
) -> None:
    """The worker's sessions are writers (BEGIN IMMEDIATE from their first read); the
    reconciler's long read of every open row goes through a reader of theirs instead."""
    engine = create_engine(sqlite_url)
    sessions = session_factory(engine, writer=True)
    await stored_approval(sessions)
    path = sqlite_url.removeprefix("sqlite+aiosqlite:///")
    try:
        async with sessions() as writer:
            await writer.execute(select(ApprovalRow.id))
            assert not await asyncio.to_thread(_can_write, path)  # what a writer's read does
        async with read_session(sessions) as reader:
            await reader.execute(select(ApprovalRow.id))
            assert reader.in_transaction()
            assert await asyncio.to_thread(_can_write, path)
    finally:
        await engine.dispose()
