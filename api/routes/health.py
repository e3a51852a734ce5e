"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from api.deps import ServicesDep, SessionDep
from hitl import metrics as hitl_metrics
from store.health import pending_count, ping

router = APIRouter(tags=["health"])

_CHECK_TIMEOUT = timedelta(seconds=2)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable."}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the database answers, Temporal answers and a worker polls the task queue."""
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
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", response_class=Response)
async def metrics(session: SessionDep) -> Response:
    """This API process's Prometheus metrics, with the pending count read from the database
    (the one figure every replica agrees on)."""
    hitl_metrics.PENDING.set(await pending_count(session))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
