"""The limits at the door, on a bare ASGI app: the body-size bound and the client-address rate
limit answer before the application runs; rate limits count in memory or in a shared Redis."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from api.correlation import CorrelationIdMiddleware
from api.limits import (
    MAX_BODY_BYTES,
    BodySizeLimit,
    ClientAddressRateLimit,
    LimitStore,
    RateLimiter,
)
from hitl.errors import ErrorCode, HITLError

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return True
    except OSError:
        return False


class Seen:
    """What reached the application."""

    def __init__(self) -> None:
        self.bodies: list[int] = []


def bare_app(seen: Seen) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        seen.bodies.append(len(body))
        return JSONResponse({"size": len(body)})

    return Starlette(routes=[Route("/echo", echo, methods=["GET", "POST"])])


@pytest.fixture
async def body_limited() -> AsyncIterator[tuple[httpx.AsyncClient, Seen]]:
    seen = Seen()
    app = CorrelationIdMiddleware(BodySizeLimit(bare_app(seen)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        yield http, seen


async def test_a_body_at_the_bound_is_read(
    body_limited: tuple[httpx.AsyncClient, Seen],
) -> None:
    http, seen = body_limited
    response = await http.post("/echo", content=b"x" * MAX_BODY_BYTES)
    assert response.status_code == 200
    assert response.json() == {"size": MAX_BODY_BYTES}
    assert seen.bodies == [MAX_BODY_BYTES]


async def test_a_declared_oversized_body_is_refused_unread(
    body_limited: tuple[httpx.AsyncClient, Seen],
) -> None:
    http, seen = body_limited
    response = await http.post("/echo", content=b"x" * (1024 * 1024))
    assert response.status_code == 413
    body = response.json()
    assert body["error_code"] == ErrorCode.PAYLOAD_TOO_LARGE.code
    assert body["correlation_id"] == response.headers["X-Correlation-ID"]
    assert seen.bodies == []


async def test_a_streamed_oversized_body_is_refused_before_the_application(
    body_limited: tuple[httpx.AsyncClient, Seen],
) -> None:
    http, seen = body_limited

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):  # no Content-Length: 40 chunks of 4 KiB, 160 KiB in all
            yield b"y" * 4096

    response = await http.post("/echo", content=chunks())
    assert response.status_code == 413
    assert response.json()["error_code"] == ErrorCode.PAYLOAD_TOO_LARGE.code
    assert seen.bodies == []


async def test_the_client_address_limit_answers_429_with_retry_after() -> None:
    seen = Seen()
    limiter = RateLimiter("3/minute", store=LimitStore(), namespace="address")
    app = CorrelationIdMiddleware(ClientAddressRateLimit(bare_app(seen), limiter=limiter))
    first = httpx.ASGITransport(app=app, client=("192.0.2.1", 1000))
    other = httpx.ASGITransport(app=app, client=("192.0.2.2", 1000))
    async with (
        httpx.AsyncClient(transport=first, base_url="http://gateway") as http,
        httpx.AsyncClient(transport=other, base_url="http://gateway") as elsewhere,
    ):
        statuses = [(await http.get("/echo")).status_code for _ in range(3)]
        limited = await http.get("/echo")
        from_elsewhere = await elsewhere.get("/echo")
    assert statuses == [200, 200, 200]
    assert limited.status_code == 429
    assert limited.json()["error_code"] == ErrorCode.RATE_LIMITED.code
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    assert from_elsewhere.status_code == 200  # counted per address
    assert len(seen.bodies) == 4


async def test_the_memory_limiter_counts_per_key_and_raises_sec_002() -> None:
    limiter = RateLimiter("2/second", store=LimitStore(), namespace="principal")
    await limiter.hit("alice")
    await limiter.hit("alice")
    await limiter.hit("bob")
    with pytest.raises(HITLError) as limited:
        await limiter.hit("alice")
    assert limited.value.error is ErrorCode.RATE_LIMITED
    assert limited.value.details["retry_after"] >= 1


@pytest.mark.skipif(not _redis_answers(), reason="no Redis on 127.0.0.1:6379")
async def test_two_limiters_on_one_redis_share_the_count() -> None:
    # Two API processes are two limiters on one store: the second sees the first's requests.
    namespace = f"test-{uuid.uuid4()}"
    stores = LimitStore(REDIS_URL), LimitStore(REDIS_URL)
    try:
        assert all(store.shared for store in stores)
        one, two = (RateLimiter("3/minute", store=s, namespace=namespace) for s in stores)
        assert await one.retry_after("198.51.100.7") is None
        assert await two.retry_after("198.51.100.7") is None
        assert await one.retry_after("198.51.100.7") is None
        retry_after = await two.retry_after("198.51.100.7")
        assert retry_after is not None and 1 <= retry_after <= 61
        assert await one.retry_after("198.51.100.8") is None  # another address, its own count
    finally:
        for store in stores:
            store.close()


async def test_an_unreachable_store_admits_rather_than_locking_everyone_out() -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    store = LimitStore("redis://127.0.0.1:9/0")
    try:
        limiter = RateLimiter("1/minute", store=store, namespace="x")
        assert await limiter.retry_after("a") is None
        assert await limiter.retry_after("a") is None
    finally:
        store.close()


def test_an_unknown_store_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="nosuch"):
        LimitStore("nosuch://host")
