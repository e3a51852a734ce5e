"""Readiness: wait until Temporal, the worker and the API answer, or say why they did not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client

from hitl.settings import Settings
from launcher.errors import StartupError
from launcher.supervisor import Child, Supervisor
from workflows.connection import connect_temporal
from workflows.guardian import guardian_task_queue

T = TypeVar("T")

TEMPORAL_READY_SECONDS = 30.0
GATEWAY_READY_SECONDS = 60.0
POLL_SECONDS = 0.25


async def _retry_until(
    attempt: Callable[[], Awaitable[T | None]],
    *,
    supervisor: Supervisor,
    seconds: float,
    what: str,
) -> T:
    # Each attempt returns None (not yet) or raises (not yet, with a reason to report at the end).
    last_problem = "no answer"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        supervisor.check_alive()
        try:
            result = await attempt()
        # Any failure here only means "not ready yet"; the last one is reported on time-out.
        except Exception as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        else:
            if result is not None:
                return result
        if loop.time() >= deadline:
            raise StartupError(f"{what} was not ready after {seconds:.0f} s ({last_problem})")
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_temporal(settings: Settings, supervisor: Supervisor) -> Client:
    """A client of the Temporal server, once it answers and knows our namespace."""

    async def attempt() -> Client:
        async with asyncio.timeout(5):
            client = await connect_temporal(settings)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=settings.temporal.namespace)
            )
        return client

    return await _retry_until(
        attempt,
        supervisor=supervisor,
        seconds=TEMPORAL_READY_SECONDS,
        what=f"Temporal at {settings.temporal.address}",
    )


async def wait_for_worker(
    client: Client, settings: Settings, worker: Child, supervisor: Supervisor
) -> None:
    """Wait until the worker process polls both its task queues for workflow tasks: the
    approvals' and the Guardian's own."""
    # The SDK's default identity is "<pid>@<host>": this tells our worker apart from pollers a
    # previous run left behind in the server's memory.
    identity = f"{worker.process.pid}@"
    queue = settings.temporal.task_queue
    requests = [
        DescribeTaskQueueRequest(
            namespace=settings.temporal.namespace,
            task_queue=TaskQueue(name=name, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        for name in (queue, guardian_task_queue(queue))
    ]

    async def polled(request: DescribeTaskQueueRequest) -> bool:
        answer = await client.workflow_service.describe_task_queue(request)
        return any(p.identity.startswith(identity) for p in answer.pollers)

    async def attempt() -> bool | None:
        return True if all([await polled(request) for request in requests]) else None

    await _retry_until(
        attempt, supervisor=supervisor, seconds=GATEWAY_READY_SECONDS, what="the worker"
    )


async def wait_for_api(api_url: str, supervisor: Supervisor) -> None:
    """Wait until ``GET /readyz`` answers 200."""
    async with httpx.AsyncClient(base_url=api_url, timeout=5.0) as http:

        async def attempt() -> bool | None:
            answer = await http.get("/readyz")
            if answer.status_code == httpx.codes.OK:
                return True
            raise StartupError(f"/readyz answered {answer.status_code}")

        await _retry_until(
            attempt, supervisor=supervisor, seconds=GATEWAY_READY_SECONDS, what="the API"
        )
