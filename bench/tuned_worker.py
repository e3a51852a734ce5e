"""``python -m bench.tuned_worker``: the gateway's worker with Worker options to try, for tuning
experiments only (``python -m bench --worker-options '{...}'``).

It builds exactly what ``worker.py`` builds, then hands the options of ``BENCH_WORKER_OPTIONS``
(JSON) to ``temporalio.worker.Worker``. Besides Worker's own keyword arguments it understands:

- ``"sandbox": "off"``: run the workflows without the sandbox (UnsandboxedWorkflowRunner);
- ``"passthrough": ["module", ...]``: pass these modules through the sandbox instead of
  re-importing them in every workflow run.

The production worker stays ``worker.py``; a tuning this proves belongs there.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import timedelta
from typing import Any

import uvloop
from prometheus_client import REGISTRY, start_http_server
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.market_providers import provider_from_settings
from activities.notice_dispatch import NoticeDispatcher
from activities.notifications import ConsoleNotifier
from hitl.logs import configure_logging
from hitl.settings import get_settings
from store.engine import create_engine, session_factory
from worker import SdkMetrics, activities_for, connect, runtime_with_sdk_metrics
from workflows.approval import ApprovalWorkflow
from workflows.guardian import GuardianWorkflow

OPTIONS_VARIABLE = "BENCH_WORKER_OPTIONS"


def worker_options(raw: str) -> dict[str, Any]:
    """Worker keyword arguments from the JSON of ``BENCH_WORKER_OPTIONS``."""
    options: dict[str, Any] = json.loads(raw or "{}")
    sandbox = options.pop("sandbox", "on")
    passthrough = options.pop("passthrough", [])
    if sandbox == "off":
        options["workflow_runner"] = UnsandboxedWorkflowRunner()
    elif passthrough:
        restrictions = SandboxRestrictions.default.with_passthrough_modules(*passthrough)
        options["workflow_runner"] = SandboxedWorkflowRunner(restrictions=restrictions)
    return options


async def main() -> None:
    """Run the tuned worker until SIGINT or SIGTERM."""
    settings = get_settings()
    configure_logging()
    runtime, sdk_metrics_url = runtime_with_sdk_metrics()
    REGISTRY.register(SdkMetrics(sdk_metrics_url))
    start_http_server(settings.worker.metrics_port, addr="127.0.0.1")
    client = await connect(settings, runtime)
    engine = create_engine(settings.database_url)
    provider = provider_from_settings(settings.market_data)
    options = {
        "max_cached_workflows": settings.worker.max_cached_workflows,
        "graceful_shutdown_timeout": timedelta(seconds=10),
        **worker_options(os.environ.get(OPTIONS_VARIABLE, "")),
    }
    sessions = session_factory(engine, writer=True)
    notifier = ConsoleNotifier()
    worker = Worker(
        client,
        task_queue=settings.temporal.task_queue,
        workflows=[ApprovalWorkflow, GuardianWorkflow],
        activities=activities_for(
            sessions=sessions, provider=provider, notifier=notifier, client=client
        ),
        **options,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        dispatching = asyncio.create_task(NoticeDispatcher(sessions, notifier).run())
        await stop.wait()
        dispatching.cancel()
    await provider.aclose()
    await engine.dispose()


if __name__ == "__main__":
    uvloop.run(main())  # as the shipped worker runs
