"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from api.deps import ServicesDep, SessionDep
from hitl import metrics as hitl_metrics
from store.audit import verification_status
from store.health import pending_count, ping
from store.metrics import decision_totals

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
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(session: SessionDep) -> Response:
    """This API process's Prometheus metrics, with the seed's approval metrics and the pending
    count read from the database: figures every replica agrees on (which scrape holds which:
    ``hitl.metrics``)."""
    hitl_metrics.PENDING.set(await pending_count(session))
    totals = await decision_totals(session)
    return Response(hitl_metrics.exposition(totals), media_type=CONTENT_TYPE_LATEST)
