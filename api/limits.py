"""Abuse limits at the API's door: request body size, and request rates per client address
(before any token is looked up) and per principal (after).

Both limits count in the ``limits`` library (moving windows). By default each API process counts
in its own memory, so N processes admit N times the limit; with ``HITL_RATE_LIMIT_STORAGE`` set
to a Redis URL (``redis://host:6379/0``) every process counts in the same Redis and the limits
hold across them.

A limit store that fails (Redis down) admits the request and logs the failure: a rate limit is a
defence against floods, and must never be the thing that keeps an operator or the Guardian's
kill-switch from reaching the gateway.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import cast

import coredis
import structlog
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.correlation import current_correlation_id
from api.errors import ErrorBody
from hitl.errors import ErrorCode, HITLError

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024
"""The largest request body the API reads; larger ones get 413 before they are parsed."""

STORE_TIMEOUT_SECONDS = 0.5
"""How long a request may wait on the limit store before it is admitted uncounted."""

RATE_LIMITED_CLOSE = 4429
"""The WebSocket close code of a connection refused by a rate limit (before it is accepted,
which clients see as a refused handshake)."""


class LimitStore:
    """Where the limits count: process memory, or a Redis shared by every API process."""

    def __init__(self, uri: str = "") -> None:
        """``""`` (or ``memory://``) for process memory; ``redis://host:6379/0`` (or
        ``rediss://``) for a shared Redis, reached with the asyncio client ``coredis``."""
        self._pool: coredis.ConnectionPool | None = None
        if not uri or uri == "memory://":
            self.storage: Storage = MemoryStorage()
            return
        scheme = uri.split("://", 1)[0]
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"rate limits count in memory or in Redis, not in {scheme}")
        # The pool is ours so that close() can release its connections; its timeouts keep a
        # dead Redis from holding requests up (they are admitted uncounted, see above).
        self._pool = coredis.ConnectionPool.from_url(
            uri, connect_timeout=STORE_TIMEOUT_SECONDS, stream_timeout=STORE_TIMEOUT_SECONDS
        )
        # limits passes ``connection_pool`` through to coredis (its documented use); its
        # options are typed as scalars only, hence the cast.
        pool = cast(str, self._pool)
        self.storage = RedisStorage(f"async+{uri}", connection_pool=pool)

    @property
    def shared(self) -> bool:
        """Whether the counts are shared between processes."""
        return self._pool is not None

    def close(self) -> None:
        """Release the store's connections."""
        if self._pool is not None:
            self._pool.disconnect()


class RateLimiter:
    """Moving-window limits in the ``limits`` notation (``10/second;120/minute``), counted per
    key (a principal, a client address) in one namespace of a shared store."""

    def __init__(self, spec: str, *, store: LimitStore, namespace: str) -> None:
        self._items: list[RateLimitItem] = parse_many(spec) if spec else []
        self._limiter = MovingWindowRateLimiter(store.storage)
        self._namespace = namespace

    async def retry_after(self, key: str) -> int | None:
        """Count one request for ``key``: None when admitted, else the seconds to wait."""
        try:
            async with asyncio.timeout(STORE_TIMEOUT_SECONDS):
                for item in self._items:
                    if not await self._limiter.hit(item, self._namespace, key):
                        stats = await self._limiter.get_window_stats(item, self._namespace, key)
                        now = datetime.now(UTC).timestamp()
                        return max(1, int(stats.reset_time - now) + 1)
        except Exception as exc:  # any store failure: admit (see the module docstring)
            log.error(
                "rate limit store failed; request admitted uncounted",
                actor="api",
                action="rate_limit.check",
                result="admitted",
                error=f"{type(exc).__name__}: {exc}",
            )
        return None

    async def hit(self, key: str) -> None:
        """Count one request for ``key``; SEC-002 with ``retry_after`` seconds when over."""
        retry_after = await self.retry_after(key)
        if retry_after is not None:
            raise HITLError(ErrorCode.RATE_LIMITED, retry_after=retry_after)


def client_address(scope: Scope) -> str:
    """The address a request came from, as the ASGI server reports it.

    Behind a reverse proxy that is the proxy; run uvicorn with ``--forwarded-allow-ips`` naming
    the proxy so that it reports the client from ``X-Forwarded-For`` instead.
    """
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _refusal(
    error: ErrorCode, message: str | None = None, *, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(
        error_code=error.code,
        message=message or error.message,
        correlation_id=current_correlation_id(),
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=error.http_status,
        headers=headers,
    )


class ClientAddressRateLimit:
    """Pure ASGI middleware: every HTTP request and WebSocket handshake counts against its
    client address before anything else runs, so a flood of bad tokens costs no token lookup
    and gets 429 with ``Retry-After``."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        retry_after = await self.limiter.retry_after(address)
        if retry_after is None:
            await self.app(scope, receive, send)
            return
        log.warning(
            "request refused by the client address limit",
            actor=address,
            action="rate_limit.address",
            result="429",
            error_code=ErrorCode.RATE_LIMITED.code,
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": RATE_LIMITED_CLOSE})
            return
        response = _refusal(ErrorCode.RATE_LIMITED, headers={"Retry-After": str(retry_after)})
        await response(scope, receive, send)


class BodySizeLimit:
    """Pure ASGI middleware: a request body over ``max_bytes`` gets 413 before the application
    reads any of it.

    A declared ``Content-Length`` over the bound is refused without reading; otherwise the body
    is read here, at most ``max_bytes`` plus one chunk, and handed on only when it fits.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break  # a disconnect: let the application see it
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if buffered:
                return buffered.pop(0)
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        log.warning(
            "request body too large",
            actor=client_address(scope),
            action="request.refused",
            result="413",
            error_code=ErrorCode.PAYLOAD_TOO_LARGE.code,
            path=scope.get("path", ""),
        )
        message = f"request bodies are limited to {self.max_bytes} bytes"
        await _refusal(ErrorCode.PAYLOAD_TOO_LARGE, message)(scope, receive, send)
