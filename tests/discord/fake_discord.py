"""A local stand-in for Discord's REST API on 127.0.0.1: just the endpoints discord.py calls here.

It keeps what Discord would keep (messages per channel, with ``enforce_nonce``; interaction
responses and the webhook-backed original response), records every request, and can be told to
answer the next matching calls with 500 or 429 (Discord's rate-limit body and headers), before or
after doing the work. It also builds the INTERACTION_CREATE payloads Discord's gateway delivers
for a button click, for the tests to feed to a real discord.py client.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import math
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
EPHEMERAL = 1 << 6
"""The message flag of a reply only its recipient sees."""

# Interaction callback types (Discord's InteractionResponseType).
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7


@dataclass(frozen=True)
class Call:
    """One request as the fake received it."""

    method: str
    path: str
    """Without the ``/api/v10`` prefix, e.g. ``/channels/1/messages``."""
    query: dict[str, str]
    body: dict[str, Any] | None
    status: int
    """What the fake answered."""


@dataclass
class Fault:
    """Answer the next ``times`` requests matching ``method`` and ``path`` with ``status``."""

    status: int
    times: int
    method: str
    path: re.Pattern[str]
    retry_after: float = 0.3
    after_effect: bool = False
    """Do the work first, then answer the error (Discord created the message, then failed)."""


@dataclass
class _Interaction:
    token: str
    channel_id: int
    message_id: int
    acknowledged: bool = False
    original: dict[str, Any] | None = None


@dataclass
class FakeDiscord:
    """The fake; ``start()`` serves it, ``stop()`` ends it."""

    bot_token: str = field(default_factory=lambda: f"fake.{secrets.token_urlsafe(24)}")
    guild_id: int = 0
    channel_id: int = 0
    application_id: int = 0
    bot_user_id: int = 0
    calls: list[Call] = field(default_factory=list)
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Every channel message by id, as it stands now."""
    faults: list[Fault] = field(default_factory=list)
    url: str = ""
    gateway_url: str = ""
    """What ``GET /gateway/bot`` names (a ``FakeGateway``'s URL); empty: Discord's own."""
    _counter: itertools.count[int] = field(default_factory=itertools.count)
    _nonces: dict[tuple[int, str], int] = field(default_factory=dict)
    _interactions: dict[int, _Interaction] = field(default_factory=dict)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.guild_id = self.guild_id or self.snowflake()
        self.channel_id = self.channel_id or self.snowflake()
        self.application_id = self.application_id or self.snowflake()
        self.bot_user_id = self.bot_user_id or self.application_id

    # --- serving -------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The base URL discord.py should use (``DISCORD_API_BASE_URL``)."""
        return f"{self.url}{API_PREFIX}"

    async def start(self) -> None:
        """Serve on a free loopback port until ``stop()``."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(), host="127.0.0.1", port=port, log_config=None, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        """Stop serving."""
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task

    def _app(self) -> Starlette:
        p = API_PREFIX
        return Starlette(
            routes=[
                Route(f"{p}/users/@me", self._me, methods=["GET"]),
                Route(f"{p}/gateway/bot", self._gateway, methods=["GET"]),
                Route(f"{p}/oauth2/applications/@me", self._application, methods=["GET"]),
                Route(f"{p}/channels/{{channel_id:int}}/messages", self._create, methods=["POST"]),
                Route(
                    f"{p}/channels/{{channel_id:int}}/messages/{{message_id:int}}",
                    self._edit,
                    methods=["PATCH"],
                ),
                Route(
                    f"{p}/interactions/{{interaction_id:int}}/{{token}}/callback",
                    self._callback,
                    methods=["POST"],
                ),
                Route(
                    f"{p}/webhooks/{{application_id:int}}/{{token}}/messages/@original",
                    self._edit_original,
                    methods=["PATCH"],
                ),
            ]
        )

    # --- failure injection --------------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        method: str = "POST",
        path: str = r"/channels/\d+/messages",
        retry_after: float = 0.3,
        after_effect: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (500, 429, ...)."""
        self.faults.append(
            Fault(
                status=status,
                times=times,
                method=method,
                path=re.compile(path),
                retry_after=retry_after,
                after_effect=after_effect,
            )
        )

    def _fault_for(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and fault.path.fullmatch(path):
                fault.times -= 1
                return fault
        return None

    def _error(self, fault: Fault) -> Response:
        if fault.status == 429:
            # What Discord sends when a bucket is exhausted.
            reset_after = f"{fault.retry_after:.3f}"
            return JSONResponse(
                {
                    "message": "You are being rate limited.",
                    "retry_after": fault.retry_after,
                    "global": False,
                },
                status_code=429,
                headers={
                    "Via": "1.1 google",
                    "Retry-After": str(math.ceil(fault.retry_after)),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
                    "X-RateLimit-Reset-After": reset_after,
                    "X-RateLimit-Bucket": "fake-bucket",
                    "X-RateLimit-Scope": "user",
                },
            )
        return JSONResponse(
            {"message": "500: Internal Server Error", "code": 0},
            status_code=fault.status,
            headers={"Via": "1.1 google"},
        )

    async def _serve(self, request: Request, work: Any) -> Response:
        path = request.url.path.removeprefix(API_PREFIX)
        raw = await request.body()
        body = None
        if raw:
            body = await request.json()
        fault = self._fault_for(request.method, path)
        if fault is not None and not fault.after_effect:
            response = self._error(fault)
        else:
            response = await work(request, body)
            if fault is not None:
                response = self._error(fault)
        self.calls.append(
            Call(
                method=request.method,
                path=path,
                query=dict(request.query_params),
                body=body,
                status=response.status_code,
            )
        )
        return response

    # --- Discord's objects ---------------------------------------------------------------------

    def snowflake(self) -> int:
        """A new id, shaped like Discord's (its creation time in the top bits)."""
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(self._counter) % 4096)

    def user(self, user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
        """A user object."""
        return {
            "id": str(user_id),
            "username": name,
            "global_name": name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }

    @staticmethod
    def _now() -> str:
        return datetime.now(UTC).isoformat()

    def _message(self, channel_id: int, body: dict[str, Any], *, flags: int = 0) -> dict[str, Any]:
        message = {
            "id": str(self.snowflake()),
            "channel_id": str(channel_id),
            "author": self.user(self.bot_user_id, "hitl-bot", bot=True),
            "content": body.get("content") or "",
            "timestamp": self._now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": body.get("embeds") or [],
            "components": body.get("components") or [],
            "pinned": False,
            "type": 0 if "message_reference" not in body else 19,
            "flags": flags | body.get("flags", 0),
        }
        # Discord leaves out what a message does not have, and answers ids as strings.
        if body.get("nonce") is not None:
            message["nonce"] = str(body["nonce"])
        reference = body.get("message_reference")
        if reference is not None:
            message["message_reference"] = {
                "type": reference.get("type", 0),
                "message_id": str(reference["message_id"]),
                "channel_id": str(reference.get("channel_id", channel_id)),
            }
        return message

    @staticmethod
    def _apply_edit(message: dict[str, Any], body: dict[str, Any]) -> None:
        cleared: dict[str, Any] = {"content": "", "embeds": [], "components": []}
        for name, empty in cleared.items():
            if name in body:
                message[name] = empty if body[name] is None else body[name]
        message["edited_timestamp"] = FakeDiscord._now()

    # --- endpoints -----------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.bot_token}"

    async def _me(self, request: Request) -> Response:
        async def work(request: Request, _: Any) -> Response:
            if not self._authorised(request):
                return JSONResponse({"message": "401: Unauthorized", "code": 0}, 401)
            return JSONResponse(self.user(self.bot_user_id, "hitl-bot", bot=True))

        return await self._serve(request, work)

    async def _gateway(self, request: Request) -> Response:
        async def work(request: Request, _: Any) -> Response:
            if not self._authorised(request):
                return JSONResponse({"message": "401: Unauthorized", "code": 0}, 401)
            limits = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
            return JSONResponse(
                {
                    "url": self.gateway_url or "wss://gateway.discord.gg",
                    "shards": 1,
                    "session_start_limit": limits,
                }
            )

        return await self._serve(request, work)

    async def _application(self, request: Request) -> Response:
        async def work(request: Request, _: Any) -> Response:
            return JSONResponse(
                {
                    "id": str(self.application_id),
                    "name": "HITL Gateway",
                    "icon": None,
                    "description": "",
                    "bot_public": False,
                    "bot_require_code_grant": False,
                    "owner": self.user(self.snowflake(), "owner"),
                    "verify_key": "0" * 64,
                    "flags": 0,
                    "team": None,
                    "summary": "",
                    "rpc_origins": [],
                }
            )

        return await self._serve(request, work)

    async def _create(self, request: Request) -> Response:
        async def work(request: Request, body: dict[str, Any]) -> Response:
            channel_id = int(request.path_params["channel_id"])
            nonce = body.get("nonce")
            if body.get("enforce_nonce") and nonce is not None:
                existing = self._nonces.get((channel_id, str(nonce)))
                if existing is not None:
                    # Discord hands back the message the same nonce created, unchanged.
                    return JSONResponse(self.messages[existing])
            message = self._message(channel_id, body)
            self.messages[int(message["id"])] = message
            if nonce is not None:
                self._nonces[(channel_id, str(nonce))] = int(message["id"])
            return JSONResponse(message)

        return await self._serve(request, work)

    async def _edit(self, request: Request) -> Response:
        async def work(request: Request, body: dict[str, Any]) -> Response:
            message = self.messages.get(int(request.path_params["message_id"]))
            if message is None:
                return JSONResponse({"message": "Unknown Message", "code": 10008}, 404)
            self._apply_edit(message, body)
            return JSONResponse(message)

        return await self._serve(request, work)

    async def _callback(self, request: Request) -> Response:
        async def work(request: Request, body: dict[str, Any]) -> Response:
            interaction_id = int(request.path_params["interaction_id"])
            interaction = self._interactions.get(interaction_id)
            if interaction is None or interaction.token != request.path_params["token"]:
                return JSONResponse({"message": "Unknown interaction", "code": 10062}, 404)
            if interaction.acknowledged:
                return JSONResponse(
                    {"message": "Interaction has already been acknowledged.", "code": 40060}, 400
                )
            interaction.acknowledged = True
            kind = body["type"]
            data = body.get("data") or {}
            flags = data.get("flags", 0)
            resource: dict[str, Any] = {"type": kind}
            if kind == CHANNEL_MESSAGE:
                interaction.original = self._message(interaction.channel_id, data, flags=flags)
                resource["message"] = interaction.original
            elif kind == DEFERRED_CHANNEL_MESSAGE:
                interaction.original = self._message(interaction.channel_id, {}, flags=flags)
            elif kind == UPDATE_MESSAGE:
                self._apply_edit(self.messages[interaction.message_id], data)
            return JSONResponse(
                {
                    "interaction": {
                        "id": str(interaction_id),
                        "type": 3,
                        "response_message_id": (
                            interaction.original["id"] if interaction.original else None
                        ),
                        "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
                        "response_message_ephemeral": bool(flags & EPHEMERAL),
                    },
                    "resource": resource,
                }
            )

        return await self._serve(request, work)

    async def _edit_original(self, request: Request) -> Response:
        async def work(request: Request, body: dict[str, Any]) -> Response:
            token = request.path_params["token"]
            interaction = next((i for i in self._interactions.values() if i.token == token), None)
            if interaction is None or not interaction.acknowledged:
                return JSONResponse({"message": "Unknown Webhook", "code": 10015}, 404)
            if interaction.original is None:
                # After a deferred update, the original response is the clicked message.
                target = self.messages[interaction.message_id]
            else:
                target = interaction.original
            self._apply_edit(target, body)
            return JSONResponse(target)

        return await self._serve(request, work)

    # --- the gateway's side --------------------------------------------------------------------

    def click(
        self, message_id: int, custom_id: str, *, user_id: int, username: str = "operator"
    ) -> dict[str, Any]:
        """The INTERACTION_CREATE payload of ``user_id`` clicking ``custom_id`` on a message, as
        the message stands now. Discord refuses a click on a button the message no longer shows
        ("This interaction failed") and never delivers it: so does this fake. A click that raced
        an edit is a payload taken before the edit and delivered after it."""
        message = self.messages[message_id]
        shown = {
            button.get("custom_id")
            for row in message.get("components") or []
            for button in row.get("components") or []
        }
        if custom_id not in shown:
            raise AssertionError(f"message {message_id} shows no button {custom_id!r} to click")
        channel_id = int(message["channel_id"])
        interaction_id = self.snowflake()
        token = f"interaction.{secrets.token_urlsafe(32)}"
        self._interactions[interaction_id] = _Interaction(
            token=token, channel_id=channel_id, message_id=message_id
        )
        return {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": 3,
            "token": token,
            "version": 1,
            "data": {"custom_id": custom_id, "component_type": 2},
            "guild_id": str(self.guild_id),
            "channel_id": str(channel_id),
            "channel": {
                "id": str(channel_id),
                "type": 0,
                "guild_id": str(self.guild_id),
                "name": "approvals",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
                "rate_limit_per_user": 0,
                "topic": None,
                "last_message_id": None,
                "flags": 0,
            },
            "member": {
                "user": self.user(user_id, username),
                "roles": [],
                "joined_at": self._now(),
                "deaf": False,
                "mute": False,
                "flags": 0,
                "pending": False,
                "nick": None,
                "avatar": None,
                "premium_since": None,
                "permissions": "3072",
            },
            "message": copy.deepcopy(message),
            "app_permissions": "84992",
            "locale": "en-GB",
            "guild_locale": "en-GB",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0,
            "attachment_size_limit": 10_485_760,
        }

    # --- what the tests look at ----------------------------------------------------------------

    def requests(self, method: str, path: str) -> list[Call]:
        """Every recorded call whose path fully matches the regular expression ``path``."""
        pattern = re.compile(path)
        return [c for c in self.calls if c.method == method and pattern.fullmatch(c.path)]

    def channel_messages(self, channel_id: int | None = None) -> list[dict[str, Any]]:
        """The messages of a channel (the approvals channel by default), oldest first."""
        wanted = str(channel_id or self.channel_id)
        return [m for m in self.messages.values() if m["channel_id"] == wanted]

    def original_response(self, interaction: dict[str, Any]) -> dict[str, Any] | None:
        """The interaction's own response message (ephemeral or not), as it stands now."""
        return self._interactions[int(interaction["id"])].original
