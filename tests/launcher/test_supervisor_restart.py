"""The supervisor restarts a crashed child with backoff and stops everything when told
(issue #16, item 5)."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from launcher.supervisor import Supervisor, restart_delay


def test_restart_delays_back_off_to_thirty_seconds() -> None:
    assert [restart_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


async def test_a_crashing_child_is_restarted_with_backoff_until_stopped() -> None:
    supervisor = Supervisor({})
    crasher = await supervisor.start(
        "crasher", [sys.executable, "-c", "raise SystemExit(3)"], stop_seconds=5
    )
    sleeper = await supervisor.start(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], stop_seconds=5
    )
    first = crasher.process.pid
    watching = asyncio.create_task(supervisor.keep_running())
    try:
        async with asyncio.timeout(20):
            while crasher.restarts < 2 or crasher.process.pid == first:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert sleeper.process.returncode is None  # the others were left alone
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        await supervisor.stop_all()
    assert sleeper.process.returncode is not None
    assert [child.name for child in supervisor.children] == ["crasher", "sleeper"]
