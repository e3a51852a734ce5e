"""Bounds on the event stream (``WS /ws/hitl``): open connections per principal, the size of a
client's message, and how soon a connection learns that its token has ended."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from hitl.errors import ErrorCode, HITLError

MAX_CONNECTIONS_PER_PRINCIPAL = 5
"""Open streams one principal may hold in one API process (a few tabs, a bot and its restarts)."""
MAX_CLIENT_MESSAGE_BYTES = 4096
"""The largest message a client may send (clients send only their token, once)."""
WS_MAX_FRAME_BYTES = 65_536
"""uvicorn's ``--ws-max-size`` wherever the API runs (``hitl run``, the Dockerfile, compose): the
protocol layer closes a connection sending a bigger message (1009) before buffering it, where
uvicorn's default would read up to 16 MiB before the check above could refuse it."""
AUTH_TIMEOUT_SECONDS = 5.0
"""How long a connection may stay open before its first message authenticates it."""
TOKEN_RECHECK_SECONDS = 2.0
"""How often an open stream checks that its token is still valid: a revoked or expired token's
stream is closed within this (plus one database read), well inside 5 s."""

UNAUTHENTICATED_CLOSE = 4401
"""Close code: no valid token (SEC-001), or the token ended while the stream was open."""
FORBIDDEN_CLOSE = 4403
"""Close code: the role may not follow the stream (SEC-090)."""
TOO_MANY_CLOSE = 4429
"""Close code: too many open streams for this principal (SEC-002)."""
MESSAGE_TOO_BIG_CLOSE = 1009
"""RFC 6455's close code for a message too big to process."""


class ConnectionCap:
    """Counts each principal's open streams in this process and refuses one past the cap."""

    def __init__(self, cap: int = MAX_CONNECTIONS_PER_PRINCIPAL) -> None:
        self.cap = cap
        self._open: Counter[str] = Counter()

    def open_count(self, principal: str) -> int:
        """How many streams ``principal`` holds open now."""
        return self._open[principal]

    @contextmanager
    def hold(self, principal: str) -> Iterator[None]:
        """Hold one of ``principal``'s places for the ``with`` block; SEC-002 when none is free."""
        if self._open[principal] >= self.cap:
            raise HITLError(
                ErrorCode.RATE_LIMITED,
                f"{principal} already holds {self.cap} open event streams; close one first",
                retry_after=1,
            )
        self._open[principal] += 1
        try:
            yield
        finally:
            self._open[principal] -= 1
            if self._open[principal] <= 0:
                del self._open[principal]
