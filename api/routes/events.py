"""``WS /ws/hitl``: hitl.created, hitl.decided, hitl.expired (and lifecycle) events with the full
approval, from the outbox, resumable: reconnect with ``?after=<last id>`` and miss nothing."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from api.auth import authenticate
from api.correlation import current_correlation_id
from api.services import Services
from hitl.errors import HITLError
from store.events import events_after, latest_event_id

router = APIRouter(tags=["events"])

UNAUTHENTICATED_CLOSE = 4401


@router.websocket("/ws/hitl")
async def event_stream(websocket: WebSocket, after: int | None = None) -> None:
    """Stream outbox events after ``after`` (default: only new ones).

    Authenticate with ``Authorization: Bearer <token>`` or, where a browser cannot set headers,
    ``?token=<token>``. Each message is a JSON event whose ``id`` is the resume cursor.
    """
    services: Services = websocket.app.state.services
    await websocket.accept()
    token = websocket.query_params.get("token")
    header = websocket.headers.get("authorization") or (f"Bearer {token}" if token else None)
    try:
        async with services.sessions() as session:
            await authenticate(header, declared=services.declared_tokens, session=session)
    except HITLError as exc:
        await websocket.send_json(
            {
                "error_code": exc.error.code,
                "message": exc.message,
                "correlation_id": current_correlation_id(),
            }
        )
        await websocket.close(code=UNAUTHENTICATED_CLOSE)
        return
    cursor = after if after is not None and after >= 0 else await latest_event_id(services.sessions)
    await websocket.send_json({"type": "stream.ready", "cursor": cursor})
    closed = asyncio.ensure_future(_until_closed(websocket))
    try:
        while not closed.done():
            for event in await events_after(services.sessions, cursor):
                await websocket.send_text(event.model_dump_json())
                cursor = event.id
            waker = asyncio.ensure_future(services.events.wait())
            await asyncio.wait({waker, closed}, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-send; it resumes from its last id
    finally:
        closed.cancel()
        if websocket.client_state is WebSocketState.CONNECTED:
            with contextlib.suppress(RuntimeError):
                await websocket.close()


async def _until_closed(websocket: WebSocket) -> None:
    # Clients send nothing we need; reading is how a disconnect is noticed.
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.receive_text()
