"""The API under test: the real FastAPI app over httpx's ASGI transport, a real Temporal dev
server with an in-process worker, and a real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from hitl.settings import (
    ApiSettings,
    DatabaseSettings,
    HITLSettings,
    Settings,
    TemporalSettings,
    load_settings,
)
from tests.temporal_fixtures import Gateway, start_gateway

TOKENS = {
    "bot-1": ("bot", "bot-token"),
    "bot-2": ("bot", "bot-2-token"),  # another bot: bot-1's approvals do not exist for it
    "alice": ("operator", "alice-token"),
    "bob": ("operator", "bob-token"),
    "carol": ("operator", "carol-token"),  # an operator by role, not on the allowed list
    "admin": ("admin", "admin-token"),
    "guardian": ("guardian", "guardian-token"),  # the risk engine: Guardian status and switch
}


def auth(principal: str) -> dict[str, str]:
    """The Authorization header of a test principal."""
    return {"Authorization": f"Bearer {TOKENS[principal][1]}"}


def api_settings(
    *,
    database_url: str,
    temporal_address: str,
    task_queue: str,
    timeout_seconds: int = 300,
    **api: Any,
) -> Settings:
    """Settings for the app under test."""
    base = load_settings()
    api.setdefault("rate_limit", "1000/second")  # tests that want a limit set their own
    api.setdefault("address_rate_limit", "1000/second")
    return Settings(
        hitl=HITLSettings(
            allowed_operators=frozenset({"alice", "bob"}), timeout_seconds=timeout_seconds
        ),
        database=DatabaseSettings(url=database_url),
        temporal=TemporalSettings(address=temporal_address, task_queue=task_queue),
        market_data=base.market_data,
        worker=base.worker,
        discord=base.discord,
        api=ApiSettings(
            tokens=SecretStr(",".join(f"{p}:{r}:{t}" for p, (r, t) in TOKENS.items())),
            **api,
        ),
    )


@dataclass
class Api:
    """An HTTP client on the app, and the gateway behind it."""

    http: httpx.AsyncClient
    gw: Gateway
    settings: Settings
    app: FastAPI


async def start_api(gw: Gateway, database_url: str, **options: Any) -> AsyncIterator[Api]:
    """Run the app's lifespan and yield a client on it."""
    settings = api_settings(
        database_url=database_url,
        temporal_address=gw.env.client.service_client.config.target_host,
        task_queue=gw.task_queue,
        **options,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield Api(http=http, gw=gw, settings=settings, app=app)


@pytest.fixture
async def api(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[Api]:
    """The app on SQLite, with a running worker."""
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        async for client in start_api(gw, sqlite_url):
            yield client


@dataclass
class Served:
    """The app served by a real uvicorn on 127.0.0.1."""

    base_url: str
    ws_url: str
    gw: Gateway
    settings: Settings


async def serve_api(gw: Gateway, database_url: str, **options: Any) -> AsyncIterator[Served]:
    """Run the app under uvicorn on a free loopback port until the test ends."""
    import asyncio
    import socket

    import uvicorn

    settings = api_settings(
        database_url=database_url,
        temporal_address=gw.env.client.service_client.config.target_host,
        task_queue=gw.task_queue,
        **options,
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield Served(
            base_url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}",
            gw=gw,
            settings=settings,
        )
    finally:
        server.should_exit = True
        await task
