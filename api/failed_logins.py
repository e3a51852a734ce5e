"""Failed authentications, audited in aggregate: one entry per client address and minute.

Every failed login is a refusal and belongs in the audit trail, but one entry per attempt would
let a flood of bad tokens swamp the trail (and the database). So attempts are counted in memory
per (address, minute) and written once the minute is over, with the count; what is still counted
when the process stops is written then.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import structlog

from hitl.errors import ErrorCode
from store.audit import AuditEntry, record_audit
from store.engine import Sessions

log = structlog.get_logger(__name__)

ACTION = "login.failed"
TARGET_TYPE = "api"
FLUSH_SECONDS = 10.0
"""How often closed minutes are written."""


def _minute(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


class FailedLogins:
    """Counts failed authentications per client address and minute, and audits the counts."""

    def __init__(self, sessions: Sessions, *, clock: Callable[[], datetime] | None = None) -> None:
        self._sessions = sessions
        self._clock = clock or (lambda: datetime.now(UTC))
        self._counts: dict[tuple[str, datetime], int] = {}
        # Each process writes its own counts: its id keeps two processes' entries apart.
        self._process = uuid.uuid4().hex[:12]
        self._task: asyncio.Task[None] | None = None

    def note(self, address: str) -> None:
        """Count one failed authentication from ``address`` now."""
        key = (address, _minute(self._clock()))
        self._counts[key] = self._counts.get(key, 0) + 1

    async def flush(self, *, everything: bool = False) -> int:
        """Audit the counts of minutes that are over (all of them with ``everything``);
        returns how many entries were written."""
        current = _minute(self._clock())
        due = [key for key in self._counts if everything or key[1] < current]
        written = 0
        for address, minute in due:
            count = self._counts.pop((address, minute))
            entry = AuditEntry(
                actor_id=address,
                action=ACTION,
                target_type=TARGET_TYPE,
                target_id="authentication",
                correlation_id=f"login-failures-{minute:%Y%m%dT%H%M}",
                error_code=ErrorCode.UNAUTHENTICATED.code,
                payload={
                    "address": address,
                    "minute": minute.isoformat(),
                    "until": (minute + timedelta(minutes=1)).isoformat(),
                    "count": count,
                },
                idempotency_key=f"{ACTION}:{address}:{minute:%Y%m%dT%H%M}:{self._process}",
            )
            try:
                written += await record_audit(self._sessions, entry, once=True)
            except Exception as exc:  # keep counting; the database may be back next time
                self._counts[(address, minute)] = self._counts.get((address, minute), 0) + count
                log.error(
                    "failed logins could not be audited",
                    actor="api",
                    action="audit.write",
                    result="retry",
                    error=f"{type(exc).__name__}: {exc}",
                )
                break
        return written

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self.flush()

    def start(self) -> None:
        """Write closed minutes every :data:`FLUSH_SECONDS` until :meth:`stop`."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the writer and write everything still counted."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush(everything=True)
