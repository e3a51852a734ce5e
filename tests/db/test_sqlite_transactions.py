"""On SQLite, a transaction's reads belong to the transaction that writes: pysqlite's own
deferred BEGIN (issued at the first write) would let another writer commit between a read and
the write that depends on it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from migrations.runner import upgrade_to_head
from store.engine import create_engine, session_factory


async def test_a_read_then_write_transaction_excludes_other_writers(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hitl.db'}"
    await asyncio.to_thread(upgrade_to_head, url)
    engine = create_engine(url, connect_args={"timeout": 5})
    sessions = session_factory(engine, writer=True)
    read_done = asyncio.Event()
    order: list[str] = []

    async def read_then_write() -> None:
        async with sessions.begin() as session:
            version = (
                await session.execute(text("SELECT version FROM guardian_state WHERE id = 1"))
            ).scalar_one()
            read_done.set()
            await asyncio.sleep(0.3)  # another writer tries to get in here
            await session.execute(
                text("UPDATE guardian_state SET version = :v WHERE id = 1"), {"v": version + 1}
            )
            order.append("first")

    async def other_writer() -> None:
        await read_done.wait()
        async with sessions.begin() as session:
            await session.execute(text("UPDATE guardian_state SET version = version + 10"))
            order.append("second")

    await asyncio.gather(read_then_write(), other_writer())
    async with sessions() as session:
        version = (
            await session.execute(text("SELECT version FROM guardian_state WHERE id = 1"))
        ).scalar_one()
    await engine.dispose()
    # Serialised: no update was lost (1 + 10), and the second writer waited for the first.
    assert order == ["first", "second"]
    assert version == 11
