"""``WS /ws/hitl``: hitl.created, hitl.decided, hitl.expired (and lifecycle) events with the full
approval, from the outbox, resumable: reconnect with ``?after=<last id>`` and miss nothing.

Who sees what follows the HTTP routes: operators and admins every approval's events, a bot only
those of the approvals it requested; the Guardian role is refused. Tokens never travel in the URL
(addresses end up in logs and browser history): send ``Authorization: Bearer <token>`` with the
handshake or, where a browser cannot set headers, ``{"type": "auth", "token": "<token>"}`` as the
first message within 5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from api.auth import Authenticated, authenticate_token, bearer_token, still_valid
from api.correlation import current_correlation_id
from api.limits import client_address
from api.services import Services
from api.stream_limits import (
    AUTH_TIMEOUT_SECONDS,
    FORBIDDEN_CLOSE,
    MAX_CLIENT_MESSAGE_BYTES,
    MESSAGE_TOO_BIG_CLOSE,
    TOKEN_RECHECK_SECONDS,
    TOO_MANY_CLOSE,
    UNAUTHENTICATED_CLOSE,
)
from hitl.decisions import MAY_READ, SEES_ALL_APPROVALS
from hitl.errors import ErrorCode, HITLError
from hitl.principals import Principal
from store.events import StreamEvent, events_after, latest_event_id
from store.ownership import requesters_of

router = APIRouter(tags=["events"])


class _MessageTooBig(Exception):
    """The client sent more than MAX_CLIENT_MESSAGE_BYTES in one message."""


async def _send_error(websocket: WebSocket, exc: HITLError, *, code: int) -> None:
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.send_json(
            {
                "error_code": exc.error.code,
                "message": exc.message,
                "correlation_id": current_correlation_id(),
            }
        )
        await websocket.close(code=code)


async def _receive_text(websocket: WebSocket) -> str:
    text = await websocket.receive_text()
    if len(text.encode("utf-8")) > MAX_CLIENT_MESSAGE_BYTES:
        raise _MessageTooBig
    return text


async def _first_message_token(websocket: WebSocket) -> str | None:
    """The token of a first ``{"type": "auth", "token": …}`` message, or None."""
    try:
        async with asyncio.timeout(AUTH_TIMEOUT_SECONDS):
            text = await _receive_text(websocket)
    except TimeoutError:
        return None
    try:
        message: Any = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get("type") != "auth":
        return None
    token = message.get("token")
    return token if isinstance(token, str) and token else None


async def _authenticate(websocket: WebSocket, services: Services) -> Authenticated:
    if "token" in websocket.query_params:
        raise HITLError(
            ErrorCode.UNAUTHENTICATED,
            "tokens are not accepted in the URL; send the Authorization header, or "
            '{"type": "auth", "token": …} as the first message',
        )
    token = bearer_token(websocket.headers.get("authorization"))
    if token is None:
        token = await _first_message_token(websocket)
    try:
        if token is None:
            raise HITLError(ErrorCode.UNAUTHENTICATED)
        async with services.sessions() as session:
            return await authenticate_token(
                token, declared=services.declared_tokens, session=session
            )
    except HITLError:
        services.failed_logins.note(client_address(websocket.scope))
        raise


async def _visible(
    services: Services, principal: Principal, events: list[StreamEvent]
) -> list[StreamEvent]:
    """The events ``principal`` may see: all of them, or those of its own approvals."""
    if principal.role in SEES_ALL_APPROVALS or not events:
        return events
    async with services.sessions() as session:
        owners = await requesters_of(session, {event.trade_id for event in events})
    return [event for event in events if owners.get(event.trade_id) == principal.id]


@router.websocket("/ws/hitl")
async def event_stream(websocket: WebSocket, after: int | None = None) -> None:
    """Stream outbox events after ``after`` (default: only new ones).

    Each message is a JSON event whose ``id`` is the resume cursor. Close codes: 4401 no valid
    token or the token ended (revoked or expired: within 5 s), 4403 a role that may not follow
    the stream, 4429 too many open streams for this principal, 1009 a client message over
    4 KiB.
    """
    services: Services = websocket.app.state.services
    await websocket.accept()
    try:
        caller = await _authenticate(websocket, services)
    except HITLError as exc:
        await _send_error(websocket, exc, code=UNAUTHENTICATED_CLOSE)
        return
    except _MessageTooBig:
        await websocket.close(code=MESSAGE_TOO_BIG_CLOSE)
        return
    except WebSocketDisconnect:
        return
    principal = caller.principal
    if principal.role not in MAY_READ:
        refusal = HITLError(
            ErrorCode.UNAUTHORISED_OPERATOR,
            f"the {principal.role.value} role may not follow the event stream",
        )
        await _send_error(websocket, refusal, code=FORBIDDEN_CLOSE)
        return
    try:
        with services.stream_connections.hold(principal.id):
            await _stream(websocket, services, caller, after)
    except HITLError as exc:
        await _send_error(websocket, exc, code=TOO_MANY_CLOSE)


async def _stream(
    websocket: WebSocket, services: Services, caller: Authenticated, after: int | None
) -> None:
    principal = caller.principal
    cursor = after if after is not None and after >= 0 else await latest_event_id(services.sessions)
    await websocket.send_json({"type": "stream.ready", "cursor": cursor})
    closed = asyncio.ensure_future(_until_closed(websocket))
    loop = asyncio.get_running_loop()
    next_check = loop.time() + TOKEN_RECHECK_SECONDS
    try:
        while not closed.done():
            if loop.time() >= next_check:
                if not await still_valid(caller, sessions=services.sessions):
                    ended = HITLError(
                        ErrorCode.UNAUTHENTICATED, "the stream's token was revoked or expired"
                    )
                    await _send_error(websocket, ended, code=UNAUTHENTICATED_CLOSE)
                    return
                next_check = loop.time() + TOKEN_RECHECK_SECONDS
            events = await events_after(services.sessions, cursor)
            for event in await _visible(services, principal, events):
                await websocket.send_text(event.model_dump_json())
            if events:
                # Past other principals' events too: they are never sent, nor looked at again.
                cursor = events[-1].id
                continue
            waker = asyncio.ensure_future(services.events.wait())
            await asyncio.wait(
                {waker, closed},
                timeout=max(0.0, next_check - loop.time()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            waker.cancel()
        if isinstance(closed.exception(), _MessageTooBig):
            await websocket.close(code=MESSAGE_TOO_BIG_CLOSE)
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-send; it resumes from its last id
    finally:
        closed.cancel()
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await websocket.close()


async def _until_closed(websocket: WebSocket) -> None:
    # Clients send nothing more we need; reading is how a disconnect (or abuse) is noticed.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await _receive_text(websocket)
