"""What one API process holds for its lifetime: settings, database engine, Temporal client,
declared tokens and the rate limiter. Built in the lifespan hook, disposed at shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from temporalio.client import Client

from hitl.errors import ErrorCode, HITLError
from hitl.principals import Principal, parse_declared_tokens
from hitl.settings import Settings
from store.audit import AuditEntry, record_audit
from store.engine import AsyncEngine, Sessions, create_engine, session_factory
from store.events import EventWaker
from workflows.client import ApprovalClient, GuardianClient
from workflows.connection import connect_temporal

T = TypeVar("T")


class RateLimiter:
    """Per-principal limits, from the maintained ``limits`` library (moving window)."""

    def __init__(self, spec: str) -> None:
        self._items: list[RateLimitItem] = parse_many(spec)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    async def hit(self, principal: str) -> None:
        """Count one request; SEC-002 with ``retry_after`` seconds when over a limit."""
        for item in self._items:
            if not await self._limiter.hit(item, principal):
                stats = await self._limiter.get_window_stats(item, principal)
                retry_after = max(1, int(stats.reset_time - datetime.now(UTC).timestamp()) + 1)
                raise HITLError(ErrorCode.RATE_LIMITED, retry_after=retry_after)


@dataclass
class Services:
    """The API process's long-lived dependencies."""

    settings: Settings
    engine: AsyncEngine
    sessions: Sessions
    temporal: Client
    approvals: ApprovalClient
    declared_tokens: dict[str, Principal]
    rate_limiter: RateLimiter
    events: EventWaker
    guardian: GuardianClient

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        """Build everything; Temporal is connected lazily, so the API starts (and reports
        itself unready) while Temporal is still coming up."""
        engine = create_engine(settings.database_url)
        temporal = await connect_temporal(settings, lazy=True)
        events = EventWaker(settings.database_url)
        await events.start()
        return cls(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            temporal=temporal,
            approvals=ApprovalClient(temporal, task_queue=settings.temporal.task_queue),
            declared_tokens=parse_declared_tokens(settings.api.tokens.get_secret_value()),
            rate_limiter=RateLimiter(settings.api.rate_limit),
            events=events,
            guardian=GuardianClient(temporal, task_queue=settings.temporal.task_queue),
        )

    async def bounded(self, call: Awaitable[T]) -> T:
        """Never hang on Temporal: past the configured time the caller gets 503 (SEC-070)."""
        try:
            return await asyncio.wait_for(call, self.settings.api.decision_timeout_seconds)
        except TimeoutError:
            raise HITLError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "no answer from the workflows in time; is a worker running?",
            ) from None

    async def close(self) -> None:
        """Release the LISTEN connection and the database pool."""
        await self.events.stop()
        await self.engine.dispose()

    async def audit(
        self,
        *,
        actor_id: str,
        action: str,
        target_id: str,
        correlation_id: str,
        error_code: str | None,
        payload: dict[str, Any],
    ) -> None:
        """Record a refusal made at the API's door (nothing reached the workflow)."""
        await record_audit(
            self.sessions,
            AuditEntry(
                actor_id=actor_id,
                action=action,
                target_id=target_id,
                correlation_id=correlation_id,
                error_code=error_code,
                payload=payload,
            ),
        )
