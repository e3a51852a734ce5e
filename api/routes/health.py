"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from api.deps import ServicesDep, SessionDep
from api.services import Services
from hitl import metrics as hitl_metrics
from store.audit import verification_status
from store.health import pending_count, ping
from store.metrics import decision_totals
from store.notice_queue import backlog
from workflows.reconciler import DISCORD_REPORT_SECONDS
from workflows.reconciler_client import ReconcilerClient

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT = timedelta(seconds=2)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable."}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the database answers, Temporal answers, a worker polls the task queue, and
    the worker's last check of the audit chain found it intact."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT.total_seconds()):
            await ping(services.engine)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        description = await services.temporal.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=services.settings.temporal.namespace,
                task_queue=TaskQueue(name=services.settings.temporal.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=_CHECK_TIMEOUT,
        )
        checks["temporal"] = "ok"
        checks["worker"] = "ok" if description.pollers else "no worker polling the task queue"
    except Exception as exc:
        checks["temporal"] = f"unreachable: {type(exc).__name__}"
        checks["worker"] = "unknown"
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT.total_seconds()):
            audit = await verification_status(services.engine)
        # A record the worker found broken stops the gateway being ready: nothing more should
        # be decided on top of it until it is looked at (docs/audit.md).
        checks["audit"] = "ok" if audit is None or audit.intact else f"broken: {audit.problem}"
    except Exception as exc:
        checks["audit"] = f"unreadable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    notices = await _notices_view(services) if checks["database"] == "ok" else None
    reconciliation, discord = await _reconciler_view(
        services, temporal_ok=checks["temporal"] == "ok"
    )
    # Discord is shown, not required: without the bot clicks fail, everything else serves.
    checks["discord"] = discord
    return JSONResponse(
        {
            "ready": ready,
            "checks": checks,
            "reconciliation": reconciliation,
            "notices": notices,
        },
        status_code=200 if ready else 503,
    )


async def _notices_view(services: Services) -> dict[str, Any] | None:
    """The operators' notices still to go (shown, not required: a notifier that is down delays
    them, it does not stop decisions); None when the database does not answer in time."""
    try:
        async with asyncio.timeout(_CHECK_TIMEOUT.total_seconds()):
            notices = await backlog(services.sessions)
    except Exception:
        return None
    oldest = notices.oldest_queued_at
    return {
        "pending": notices.pending,
        "failing": notices.failing,
        "oldest_queued_at": oldest.isoformat() if oldest else None,
    }


DISCORD_SILENCE = timedelta(seconds=3 * DISCORD_REPORT_SECONDS)
"""A bot that has not reported for this long is taken for down (it reports every 30 s)."""


async def _reconciler_view(
    services: Services, *, temporal_ok: bool
) -> tuple[dict[str, Any] | None, str]:
    """The reconciler's startup summary and last pass, and Discord's connection as the bot last
    reported it (issue 16); unknown when Temporal or every worker is away."""
    configured = services.settings.discord.enabled
    if not temporal_ok:
        return None, "unknown" if configured else "not configured"
    try:
        status = await ReconcilerClient(
            services.temporal, task_queue=services.settings.temporal.task_queue
        ).status(rpc_timeout=_CHECK_TIMEOUT)
    except Exception:  # not started yet, or no worker to answer the query
        return None, "unknown" if configured else "not configured"
    full = status.last_full
    view = {
        "startup": status.startup.summary() if status.startup else None,
        "last": status.last.summary() if status.last else None,
        "last_at": status.last.at.isoformat() if status.last else None,
        # Between full passes the periodic ones look only at what ended: what stands (an
        # accepted trade flagged, integrity failures) is the last full pass's word.
        "last_full": full.summary() if full else None,
        "last_full_at": full.at.isoformat() if full else None,
        "mismatches": full.mismatches if full else None,
    }
    if not configured:
        return view, "not configured"
    reported = status.discord
    if reported is None:
        return view, "down: the bot has not reported"
    if datetime.now(UTC) - reported.at > DISCORD_SILENCE:
        return view, f"down: no word from the bot since {reported.at.isoformat()}"
    return view, "ok" if reported.connected else f"down: {reported.detail}"


@router.get("/metrics", response_class=Response)
async def metrics(session: SessionDep) -> Response:
    """This API process's Prometheus metrics, with the seed's approval metrics and the pending
    count read from the database: figures every replica agrees on (which scrape holds which:
    ``hitl.metrics``)."""
    hitl_metrics.PENDING.set(await pending_count(session))
    totals = await decision_totals(session)
    return Response(hitl_metrics.exposition(totals), media_type=CONTENT_TYPE_LATEST)
