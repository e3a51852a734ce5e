"""A local stand-in for Discord's gateway (the websocket clicks arrive on), on 127.0.0.1.

It speaks what a discord.py client needs to connect and receive button clicks: HELLO, IDENTIFY
(checking the bot token), READY, heartbeats and their ACKs, RESUME (answered RESUMED), and
dispatches INTERACTION_CREATE payloads (built by ``FakeDiscord.click``) to every connected bot.
Messages go out as plain JSON text frames, which discord.py accepts whatever compression it
asked for. The tests can make it unreachable (stop listening) and reachable again on the same
port, or drop every connection, to play a Discord outage.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

# Discord's gateway opcodes.
DISPATCH = 0
HEARTBEAT = 1
IDENTIFY = 2
RESUME = 6
RECONNECT = 7
INVALID_SESSION = 9
HELLO = 10
HEARTBEAT_ACK = 11

AUTHENTICATION_FAILED = 4004
"""The close code Discord sends for a bad token."""


@dataclass
class Session:
    """One bot connection, once identified."""

    socket: web.WebSocketResponse
    session_id: str
    sequence: int = 0
    identified: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, payload: dict[str, Any]) -> None:
        """Send one gateway message."""
        await self.socket.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a DISPATCH with the next sequence number."""
        self.sequence += 1
        await self.send({"op": DISPATCH, "t": event, "s": self.sequence, "d": data})


@dataclass
class FakeGateway:
    """The fake gateway; ``start()`` serves it, ``stop()`` ends it."""

    bot_token: str
    bot_user: dict[str, Any]
    """The READY user object (``FakeDiscord.user(..., bot=True)``)."""
    application_id: int
    heartbeat_interval_ms: int = 1_000
    port: int = 0
    sessions: list[Session] = field(default_factory=list)
    identifies: int = 0
    """IDENTIFY payloads received (each connection that logged in)."""
    heartbeats: int = 0
    resumes: int = 0
    refused_tokens: int = 0
    _runner: web.AppRunner | None = None
    _site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        """Where the bot connects (``DISCORD_GATEWAY_URL``)."""
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Listen on a free loopback port (or the same port again after ``unreachable()``)."""
        if self.port == 0:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_get("/", self._connection)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        await self.drop_connections()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def unreachable(self) -> None:
        """A Discord outage: connections dropped, nothing listening (connections refused)."""
        await self.stop()

    async def reachable(self) -> None:
        """Back from an outage, on the same address."""
        await self.start()

    async def drop_connections(self, code: int = 1011) -> None:
        """Close every open connection (the bot should reconnect by itself)."""
        for session in list(self.sessions):
            await session.socket.close(code=code)
        self.sessions.clear()

    async def wait_identified(self, count: int = 1, timeout: float = 30.0) -> Session:
        """Wait until ``count`` identifications happened; the newest live session."""
        async with asyncio.timeout(timeout):
            while self.identifies < count or not self._live():  # noqa: ASYNC110 - two counters
                await asyncio.sleep(0.02)
        return self._live()[-1]

    def _live(self) -> list[Session]:
        return [s for s in self.sessions if s.identified.is_set() and not s.socket.closed]

    async def interaction(self, payload: dict[str, Any]) -> None:
        """Deliver an INTERACTION_CREATE (a button click) to every connected bot."""
        live = self._live()
        if not live:
            raise AssertionError("no bot is connected to the fake gateway")
        for session in live:
            await session.dispatch("INTERACTION_CREATE", payload)

    # --- the protocol ---------------------------------------------------------------------------

    async def _connection(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        session = Session(socket=ws, session_id=secrets.token_hex(16))
        self.sessions.append(session)
        await session.send({"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for message in ws:
                if message.type is not WSMsgType.TEXT:
                    continue
                await self._receive(session, json.loads(message.data))
        finally:
            if session in self.sessions:
                self.sessions.remove(session)
        return ws

    async def _receive(self, session: Session, message: dict[str, Any]) -> None:
        op = message.get("op")
        data: Any = message.get("d")
        if op == HEARTBEAT:
            self.heartbeats += 1
            await session.send({"op": HEARTBEAT_ACK})
        elif op == IDENTIFY:
            if data.get("token") != self.bot_token:
                self.refused_tokens += 1
                await session.socket.close(code=AUTHENTICATION_FAILED, message=b"bad token")
                return
            self.identifies += 1
            await session.dispatch("READY", self._ready(session))
            session.identified.set()
        elif op == RESUME:
            if data.get("token") != self.bot_token:
                await session.socket.close(code=AUTHENTICATION_FAILED, message=b"bad token")
                return
            self.resumes += 1
            # Nothing was missed that a test cares about: resume where the bot says it is.
            session.sequence = int(data.get("seq") or 0)
            session.session_id = str(data.get("session_id") or session.session_id)
            await session.dispatch("RESUMED", {})
            session.identified.set()

    def _ready(self, session: Session) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot_user,
            "guilds": [],
            "session_id": session.session_id,
            "resume_gateway_url": self.url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
