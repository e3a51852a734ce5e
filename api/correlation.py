"""Correlation ids: taken from ``X-Correlation-ID`` or created, echoed back, bound to the logs."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Correlation-ID"
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_current: ContextVar[str] = ContextVar("correlation_id", default="-")


def current_correlation_id() -> str:
    """The correlation id of the request being served."""
    return _current.get()


def accept_or_create(value: str | None) -> str:
    """A caller's id if well-formed (it reaches logs and the audit trail), else a new one."""
    if value and _VALID.match(value):
        return value
    return f"corr-{uuid.uuid4()}"


class CorrelationIdMiddleware:
    """Pure ASGI middleware, so that it also covers WebSocket connections."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        correlation_id = accept_or_create(headers.get(HEADER.lower()))
        token = _current.set(correlation_id)
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (HEADER.encode("latin-1"), correlation_id.encode("latin-1")),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            structlog.contextvars.unbind_contextvars("correlation_id")
            _current.reset(token)
