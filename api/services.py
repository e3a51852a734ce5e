"""What one API process holds for its lifetime: settings, database engine, Temporal client,
declared tokens, the rate limiter, the failed-login counts, the open streams, the waiters on
approvals and the market of the slippage preview. Built in the lifespan hook, disposed at
shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from temporalio.client import Client

from activities.market_providers import MarketDataProvider, market_from_settings
from api.failed_logins import FailedLogins
from api.limits import LimitStore, RateLimiter
from api.stream_limits import ConnectionCap
from hitl.errors import ConfigurationError, ErrorCode, HITLError
from hitl.principals import Principal, parse_declared_tokens
from hitl.settings import Settings
from hitl.signing import CommandSigner
from store.audit import AuditEntry, record_audit
from store.engine import AsyncEngine, Sessions, create_engine, session_factory
from store.events import ApprovalWatch, EventWaker
from workflows.client import ApprovalClient, GuardianClient
from workflows.connection import connect_temporal

T = TypeVar("T")


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
    failed_logins: FailedLogins
    stream_connections: ConnectionCap
    limit_store: LimitStore
    approval_watch: ApprovalWatch
    """Where ``?wait=`` waits for an approval's news (one outbox reader for all waiters)."""
    market: MarketDataProvider | None
    """The worker's market, built from the same settings, for the operators' slippage preview
    only (decisions take the workflow's own quote); None when the settings name none."""
    market_problem: str | None
    """Why there is no market (the settings' SEC-040 message), else None."""

    @classmethod
    async def start(cls, settings: Settings, *, limit_store: LimitStore | None = None) -> Services:
        """Build everything; Temporal is connected lazily, so the API starts (and reports
        itself unready) while Temporal is still coming up. ``limit_store`` is where the
        per-principal limits count (shared with the client-address limit; default: memory)."""
        engine = create_engine(settings.database_url)
        sessions = session_factory(engine)
        store = limit_store or LimitStore()
        failed_logins = FailedLogins(sessions)
        failed_logins.start()
        temporal = await connect_temporal(settings, lazy=True)
        # Every command the API sends is signed (issue 14); no keyring, no start (SEC-040).
        signer = CommandSigner.from_keys_dir(settings.keys_dir)
        events = EventWaker(settings.database_url)
        await events.start()
        market: MarketDataProvider | None = None
        market_problem: str | None = None
        try:
            market = market_from_settings(settings, sessions=sessions)
        except ConfigurationError as exc:
            # The preview is advice: without a market the API still serves everything else.
            market_problem = exc.message
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            temporal=temporal,
            approvals=ApprovalClient(
                temporal, task_queue=settings.temporal.task_queue, signer=signer
            ),
            declared_tokens=parse_declared_tokens(settings.api.tokens.get_secret_value()),
            rate_limiter=RateLimiter(settings.api.rate_limit, store=store, namespace="principal"),
            events=events,
            guardian=GuardianClient(
                temporal, task_queue=settings.temporal.task_queue, signer=signer
            ),
            failed_logins=failed_logins,
            stream_connections=ConnectionCap(),
            limit_store=store,
            approval_watch=ApprovalWatch(sessions, events),
            market=market,
            market_problem=market_problem,
        )

    async def bounded(self, call: Awaitable[T]) -> T:
        """Never hang on Temporal: past the configured time the caller gets 503 (SEC-070). An
        unreachable server answers SEC-070 sooner, from the clients themselves
        (``ApprovalClient``, ``GuardianClient``: ``workflows.connection.unless_unreachable``)."""
        try:
            return await asyncio.wait_for(call, self.settings.api.decision_timeout_seconds)
        except TimeoutError:
            raise HITLError(
                ErrorCode.SERVICE_UNAVAILABLE,
                "no answer from the workflows in time; is a worker running?",
            ) from None

    async def close(self) -> None:
        """Write the failed-login counts, release the LISTEN connection and the database pool."""
        await self.failed_logins.stop()
        await self.approval_watch.close()
        await self.events.stop()
        if self.market is not None:
            await self.market.aclose()
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
