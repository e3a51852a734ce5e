"""The FastAPI application: middleware, error handlers and routers; ``create_app()`` builds it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.correlation import CorrelationIdMiddleware, current_correlation_id
from api.errors import ErrorBody
from api.limits import (
    MAX_BODY_BYTES,
    BodySizeLimit,
    ClientAddressRateLimit,
    LimitStore,
    RateLimiter,
)
from api.routes import approvals, codec, deep_links, events, guardian, health, page
from api.services import Services
from hitl.errors import ConfigurationError, ErrorCode, HITLError
from hitl.logs import configure_logging
from hitl.settings import Settings, get_settings
from store.engine import is_outage

log = structlog.get_logger(__name__)


def _error(
    error: ErrorCode,
    message: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    decision: dict[str, object] | None = None,
) -> JSONResponse:
    body = ErrorBody(
        error_code=error.code,
        message=message or error.message,
        correlation_id=current_correlation_id(),
        decision=decision,
    )
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True),
        status_code=error.http_status,
        headers=headers,
    )


async def _hitl_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HITLError)
    headers: dict[str, str] = {}
    if exc.error is ErrorCode.RATE_LIMITED:
        headers["Retry-After"] = str(exc.details.get("retry_after", 1))
    if exc.error is ErrorCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    approval = exc.details.get("approval")
    decision = approval.to_dict() if approval is not None else None
    level = "error" if exc.error.http_status >= 500 else "warning"
    getattr(log, level)(
        exc.message,
        actor="api",
        action="request.refused",
        result=str(exc.error.http_status),
        error_code=exc.error.code,
    )
    return _error(exc.error, exc.message, headers=headers, decision=decision)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )
    return _error(ErrorCode.INVALID_INPUT, f"invalid request: {fields}")


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    by_status = {
        404: ErrorCode.NO_SUCH_ROUTE,
        405: ErrorCode.METHOD_NOT_ALLOWED,
        422: ErrorCode.INVALID_INPUT,
    }
    error = by_status.get(exc.status_code, ErrorCode.INVALID_INPUT)
    return _error(error, str(exc.detail))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    if is_outage(exc):
        # The database is down or restarting: nothing was decided, the client may retry.
        log.error(
            "database unavailable",
            actor="api",
            action="request.refused",
            result="503",
            error_code=ErrorCode.SERVICE_UNAVAILABLE.code,
            cause=repr(exc),
        )
        return _error(ErrorCode.SERVICE_UNAVAILABLE, "the database is unavailable; retry shortly")
    log.exception(
        "unhandled error",
        actor="api",
        action="request.failed",
        result="500",
        error_code=ErrorCode.INTERNAL.code,
    )
    return _error(ErrorCode.INTERNAL)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway's HTTP API; settings default to the environment (SEC-040 if invalid)."""
    settings = settings or get_settings()

    try:
        limit_store = LimitStore(settings.hitl.rate_limit_storage.get_secret_value())
    except ValueError as exc:
        raise ConfigurationError("HITL_RATE_LIMIT_STORAGE", f"is invalid: {exc}") from None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await Services.start(settings, limit_store=limit_store)
        app.state.services = services
        try:
            yield
        finally:
            await services.close()
            limit_store.close()

    configure_logging()
    app = FastAPI(
        title="HITL Approval Gateway",
        summary="Every trade the bot proposes waits for a human decision.",
        version="0.1.0",
        lifespan=lifespan,
    )
    # The last added runs first: correlation ids on every answer, then the client-address
    # limit before anything is read or looked up, then the body bound before any parsing.
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    address_limiter = RateLimiter(
        settings.api.address_rate_limit, store=limit_store, namespace="address"
    )
    app.add_middleware(ClientAddressRateLimit, limiter=address_limiter)
    app.add_middleware(CorrelationIdMiddleware)
    app.add_exception_handler(HITLError, _hitl_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.include_router(approvals.router)
    app.include_router(approvals.page_router)
    app.include_router(guardian.router)
    app.include_router(deep_links.router)
    app.include_router(events.router)
    app.include_router(health.router)
    app.include_router(page.router)
    app.include_router(codec.router)
    return app
