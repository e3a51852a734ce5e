"""The process supervisor: starts child processes, notices when one dies, stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import structlog

from launcher.errors import ChildExited

log = structlog.get_logger("launcher.supervisor")

# Linux only: the child asks the kernel for SIGTERM when the supervisor dies, then becomes the
# real program (exec keeps the pid). Without it a supervisor killed by SIGKILL would leave the
# servers running and holding their ports. Done in a tiny interpreter rather than a preexec_fn,
# which is unsafe once the Temporal client has started its threads.
ORPHAN_GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"  # 1 = PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(70)\n"  # the supervisor died before prctl
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


RESTART_FIRST_SECONDS = 1.0
RESTART_MAX_SECONDS = 30.0
STEADY_SECONDS = 60.0
"""A child that ran this long before it crashed is restarted after the first delay again."""


@dataclass
class Child:
    """One supervised process."""

    name: str
    process: asyncio.subprocess.Process
    stop_seconds: float
    argv: Sequence[str] = ()
    """What started it, to start it again after a crash."""
    started_at: float = 0.0
    """When it started (the event loop's clock)."""
    restarts: int = 0
    """Crashes in a row, each restarted (reset once it ran ``STEADY_SECONDS``)."""


def restart_delay(restarts: int) -> float:
    """Seconds before the ``restarts``-th restart in a row: 1, 2, 4, … up to 30 (compose's
    restart policy backs off the same way)."""
    return float(min(RESTART_FIRST_SECONDS * 2 ** max(restarts - 1, 0), RESTART_MAX_SECONDS))


class Supervisor:
    """Starts child processes, notices when one dies, stops them in reverse order."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = dict(environ)
        self.children: list[Child] = []

    async def start(self, name: str, argv: Sequence[str], *, stop_seconds: float) -> Child:
        """Start ``argv`` with the supervisor's environment, stdout and stderr."""
        child = Child(
            name=name,
            process=await self._spawn(name, argv),
            stop_seconds=stop_seconds,
            argv=tuple(argv),
            started_at=asyncio.get_running_loop().time(),
        )
        self.children.append(child)
        return child

    async def _spawn(self, name: str, argv: Sequence[str]) -> asyncio.subprocess.Process:
        command = list(argv)
        if sys.platform == "linux":
            command = [sys.executable, "-I", "-S", "-c", ORPHAN_GUARD, str(os.getpid()), *command]
        process = await asyncio.create_subprocess_exec(
            *command,
            env=self.environ,
            # Its own process group: Ctrl-C in the terminal reaches only the supervisor, which
            # then stops the children in order (the API before the worker before the server).
            process_group=0,
        )
        log.info(
            "child started",
            actor="supervisor",
            action="child.start",
            result="ok",
            child=name,
            pid=process.pid,
        )
        return process

    async def keep_running(self) -> None:
        """Restart every child that ends, with backoff and a log line, until cancelled (Ctrl-C:
        the caller then stops them all). A crash loop backs off to one try every 30 s rather
        than taking the rest of the gateway down with it."""
        loop = asyncio.get_running_loop()
        while True:
            child = await self.first_exit()
            ran = loop.time() - child.started_at
            child.restarts = 1 if ran >= STEADY_SECONDS else child.restarts + 1
            delay = restart_delay(child.restarts)
            code = child.process.returncode
            log.warning(
                "child crashed; restarting",
                actor="supervisor",
                action="child.restart",
                result="restarting",
                child=child.name,
                returncode=code,
                ran_seconds=round(ran, 1),
                restart_in_seconds=delay,
                restarts_in_a_row=child.restarts,
            )
            await asyncio.sleep(delay)
            child.process = await self._spawn(child.name, child.argv)
            child.started_at = loop.time()

    def check_alive(self) -> None:
        """Raise ChildExited if any child has ended."""
        for child in self.children:
            if child.process.returncode is not None:
                raise ChildExited(child.name, child.process.returncode)

    async def first_exit(self) -> Child:
        """Wait until some child ends and return it."""
        waits = {asyncio.create_task(child.process.wait()): child for child in self.children}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return waits[next(iter(done))]

    async def stop_all(self) -> None:
        """Stop every child, newest first: SIGTERM, then SIGKILL after its grace period."""
        for child in reversed(self.children):
            process = child.process
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    async with asyncio.timeout(child.stop_seconds):
                        await process.wait()
                except TimeoutError:
                    log.warning(
                        "child killed",
                        actor="supervisor",
                        action="child.stop",
                        result="killed",
                        child=child.name,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            log.info(
                "child stopped",
                actor="supervisor",
                action="child.stop",
                result="ok",
                child=child.name,
                returncode=process.returncode,
            )

    def kill_all(self) -> None:
        """SIGKILL every child still running (a second Ctrl-C: the human is in a hurry)."""
        for child in self.children:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
