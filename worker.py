"""The Temporal worker: builds the client, the activity objects and the worker; nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import structlog
import uvloop
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.approval_steps import ApprovalStepActivities
from activities.audit import AuditActivities
from activities.discord_notifier import notifier_from_settings
from activities.guardian import GuardianActivities
from activities.market_providers import MarketDataProvider, market_from_settings
from activities.market_quotes import MarketDataActivities
from activities.notice_dispatch import NoticeDispatcher
from activities.notifications import NotificationActivities, Notifier
from activities.persistence import PersistenceActivities
from activities.policy import PolicyActivities, WorkerTrust, install_trust
from activities.reconcile import ReconcileActivities
from hitl.audit_chain import AuditCheckpointInput
from hitl.errors import ConfigurationError
from hitl.keys import KeyPurpose, KeyringFile
from hitl.logs import configure_logging
from hitl.messages import guardian_workflow_id
from hitl.paper_market import market_kind
from hitl.settings import Settings, get_settings
from hitl.signing import CommandSigner
from store.engine import Sessions, create_engine, session_factory
from workflows.approval import ApprovalWorkflow
from workflows.audit_checkpoint import AuditCheckpointWorkflow, checkpoint_workflow_id
from workflows.connection import connect_temporal
from workflows.guardian import MOVE_SIGNAL, GuardianWorkflow, guardian_task_queue
from workflows.reconciler import ReconcilerWorkflow
from workflows.reconciler_client import ReconcilerClient

log = structlog.get_logger(__name__)


def activities_for(
    *,
    sessions: Sessions,
    provider: MarketDataProvider,
    notifier: Notifier,
    client: Client,
    trust: WorkerTrust | None = None,
    signer: CommandSigner | None = None,
) -> Sequence[Any]:
    """Every activity the workflows call, bound to its dependencies (the trust and the signer
    of lock notices default to the settings' keys folder and policy)."""
    persistence = PersistenceActivities(sessions)
    notifications = NotificationActivities(notifier, sessions)
    market = MarketDataActivities(provider)
    trust = trust or WorkerTrust.from_settings(get_settings())
    policy = PolicyActivities(trust)
    steps = ApprovalStepActivities(trust, persistence, provider)
    signer = signer or CommandSigner.from_keys_dir(get_settings().keys_dir)
    guardian = GuardianActivities(sessions, client, signer, notifier)
    reconcile = ReconcileActivities(sessions, client)
    return [
        guardian.engage_guardian_lock,
        guardian.release_guardian_lock,
        guardian.signal_guardian_lock,
        guardian.cascade_guardian_lock,
        persistence.record_request,
        persistence.record_decision,
        persistence.record_transition,
        persistence.record_audit,
        persistence.record_snapshot,
        notifications.notify_approval_requested,
        notifications.notify_approval_expired,
        notifications.notify_approval_decided,
        notifications.notify_approval_reminder,
        notifications.notify_security_alert,
        notifications.notify_guardian_cascade,
        market.fetch_quote,
        reconcile.reconcile,
        policy.admit_approval,
        steps.admit_and_record,
        steps.record_acceptance,
    ]


SHUTDOWN_DRAIN_SECONDS = 5.0
"""How long a stopping worker keeps sending the notices due."""

GUARDIAN_CACHED_WORKFLOWS = 10
"""The Guardian worker keeps its one workflow (and a few runs of it) cached."""


class GatewayWorkers:
    """The worker process's two Temporal workers, run together on one client: ``approvals``
    on the gateway's task queue (approvals, the reconciler, the audit checks) and ``guardian``
    on the Guardian's own queue (``guardian_task_queue``), so that thousands of approvals
    waiting for a slot never delay a lock or its cascade."""

    def __init__(
        self, approvals: Worker, guardian: Worker, notices: NoticeDispatcher | None = None
    ) -> None:
        self.approvals = approvals
        self.guardian = guardian
        self.notices = notices
        """The dispatcher of the notices the approvals' changes queue, run beside them."""
        self._stack: contextlib.AsyncExitStack | None = None
        self._dispatching: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GatewayWorkers:
        async with contextlib.AsyncExitStack() as stack:
            # The Guardian first: a lock never waits on the approvals' worker starting.
            await stack.enter_async_context(self.guardian)
            await stack.enter_async_context(self.approvals)
            self._stack = stack.pop_all()
        if self.notices is not None:
            self._dispatching = asyncio.create_task(self.notices.run(), name="notice-dispatch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        dispatching, self._dispatching = self._dispatching, None
        if dispatching is not None:
            dispatching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatching
        if self.notices is not None:
            # The last activities' notices, sent before the process goes (another worker, or
            # this one's next start, sends what is left).
            with contextlib.suppress(Exception):
                await self.notices.drain(seconds=SHUTDOWN_DRAIN_SECONDS)


WORKFLOW_RUNNER = UnsandboxedWorkflowRunner()
"""The workflows run without Temporal's sandbox in the worker (issue 19): the sandbox imports
``workflows/approval.py`` afresh for every workflow run, a third of the worker's CPU per approval
(docs/benchmarks.md). Its determinism checks are kept where they catch mistakes, in CI: the tests
replay every committed history, and histories the current code has just written, in the sandbox
(``tests/workflows/test_replay.py``); the workflows stay deterministic and free of I/O by the
same rules (``workflow.now()``, activities for every read and write)."""


def build_worker(
    client: Client,
    *,
    task_queue: str,
    activities: Sequence[Any],
    max_cached_workflows: int = 1000,
    trust: WorkerTrust | None = None,
    notices: NoticeDispatcher | None = None,
) -> GatewayWorkers:
    """The workers of ``task_queue`` and of the Guardian's own queue, with the activities
    bound to their dependencies; the workflows' validators check commands against ``trust``
    (default: from the settings).

    The approvals' worker still runs GuardianWorkflow: a Guardian started before it had a queue
    of its own runs there until it moves (``move_guardian_to_own_queue``). Both workers get
    every activity (registering one costs nothing); each workflow's activities are scheduled on
    its own queue, so the Guardian's run on the Guardian's worker.

    ``notices`` sends, while the workers run, the notices the approvals' changes queue: a
    worker process without one leaves them queued for another to send."""
    trust = trust or WorkerTrust.from_settings(get_settings())
    guardian_queue = guardian_task_queue(task_queue)
    install_trust(task_queue, trust)
    install_trust(guardian_queue, trust)
    approvals = Worker(
        client,
        task_queue=task_queue,
        workflows=[ApprovalWorkflow, GuardianWorkflow, ReconcilerWorkflow, AuditCheckpointWorkflow],
        activities=activities,
        max_cached_workflows=max_cached_workflows,
        graceful_shutdown_timeout=timedelta(seconds=10),
        workflow_runner=WORKFLOW_RUNNER,
    )
    guardian = Worker(
        client,
        task_queue=guardian_queue,
        workflows=[GuardianWorkflow],
        activities=activities,
        max_cached_workflows=GUARDIAN_CACHED_WORKFLOWS,
        graceful_shutdown_timeout=timedelta(seconds=10),
        workflow_runner=WORKFLOW_RUNNER,
    )
    return GatewayWorkers(approvals, guardian, notices)


async def move_guardian_to_own_queue(client: Client, task_queue: str) -> None:
    """Ask the gateway's Guardian workflow to run on its own queue: one started on the
    approvals' queue by an older version continues as new there; a Guardian already home
    ignores it; without one, it is started (idle) on its own queue."""
    await client.start_workflow(
        GuardianWorkflow.run,
        id=guardian_workflow_id(task_queue),
        task_queue=guardian_task_queue(task_queue),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal=MOVE_SIGNAL,
    )


class SdkMetrics(Collector):
    """Re-exports the Temporal SDK's own Prometheus metrics on our metrics port, so one port
    serves both."""

    def __init__(self, url: str) -> None:
        self._url = url

    def collect(self) -> Iterator[Metric]:
        import urllib.request

        try:
            with urllib.request.urlopen(self._url, timeout=2) as answer:  # noqa: S310 - loopback
                text = answer.read().decode()
        except OSError:
            return
        yield from text_string_to_metric_families(text)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime_with_sdk_metrics() -> tuple[Runtime, str]:
    """A Temporal runtime exporting the SDK's metrics on a free loopback port, and their URL
    (for :class:`SdkMetrics`)."""
    address = f"127.0.0.1:{_free_loopback_port()}"
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
    return runtime, f"http://{address}/metrics"


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """The worker's Temporal client: codec and transport security as every process has them
    (workflows/connection.py)."""
    return await connect_temporal(settings, runtime=runtime)


STARTUP_SUMMARY_SECONDS = 120.0
"""How long the worker waits for its startup pass before it logs that there is no summary."""


async def log_startup_summary(client: Client, settings: Settings) -> None:
    """Ask the reconciler for a pass (starting it if need be) and log the one startup line:
    approvals resumed, lifecycle trades open, integrity failures, mismatches found."""
    reconciler = ReconcilerClient(
        client,
        task_queue=settings.temporal.task_queue,
        interval_seconds=settings.hitl.reconcile_seconds,
        full_interval_seconds=settings.hitl.reconcile_full_seconds,
    )
    try:
        async with asyncio.timeout(STARTUP_SUMMARY_SECONDS):
            report = await reconciler.startup_pass()
    except Exception as exc:  # the worker serves regardless; the reconciler will catch up
        log.warning(
            "no startup summary",
            correlation_id="-",
            actor="worker",
            action="worker.startup_summary",
            result="unavailable",
            error=f"{type(exc).__name__}: {exc}",
        )
        return
    log.info(
        f"worker ready: {report.summary()}",
        correlation_id="-",
        actor="worker",
        action="worker.startup_summary",
        result="ok",
        approvals_resumed=report.approvals_resumed,
        lifecycle_open=report.lifecycle_open,
        integrity_failures=report.integrity_failures,
        mismatches=report.mismatches,
        repaired=report.repaired,
    )


async def start_audit_checks(client: Client, settings: Settings) -> None:
    """Start the task queue's AuditCheckpointWorkflow, or wake the running one: either way the
    audit chain is verified now, then every ``HITL_AUDIT_VERIFY_SECONDS``."""
    task_queue = settings.temporal.task_queue
    await client.start_workflow(
        AuditCheckpointWorkflow.run,
        AuditCheckpointInput(interval_seconds=settings.hitl.audit_verify_seconds),
        id=checkpoint_workflow_id(task_queue),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="check_now",
    )


async def main() -> None:
    """Run the worker until SIGINT or SIGTERM, then shut down gracefully."""
    settings = get_settings()
    configure_logging()
    # An ambiguous or incomplete market refuses to start (SEC-040) before anything connects.
    market_kind(settings)
    # Before anything else: without the commands keyring nothing could be verified (SEC-040).
    trust = WorkerTrust.from_settings(settings)
    signer = CommandSigner.from_keys_dir(settings.keys_dir)
    # Every audit entry and row is sealed with the RECORD key (SEC-040 when it is missing).
    record_keys = KeyringFile(settings.keys_dir, KeyPurpose.RECORD)
    runtime, sdk_metrics_url = runtime_with_sdk_metrics()
    REGISTRY.register(SdkMetrics(sdk_metrics_url))
    start_http_server(settings.worker.metrics_port, addr=settings.worker.metrics_host)
    client = await connect(settings, runtime)
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine, writer=True)
    # The paper market reads each instrument's first proposal; SEC-040 on an ambiguous market.
    provider = market_from_settings(settings, sessions=sessions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Discord when DISCORD_BOT_TOKEN is set, the console otherwise; closed after the worker.
    async with notifier_from_settings(settings, sessions) as notifier:
        audit = AuditActivities(
            engine=engine,
            sessions=sessions,
            notifier=notifier,
            keys=record_keys,
            data_dir=settings.hitl.data_dir,
        )
        worker = build_worker(
            client,
            task_queue=settings.temporal.task_queue,
            activities=[
                *activities_for(
                    sessions=sessions,
                    provider=provider,
                    notifier=notifier,
                    client=client,
                    trust=trust,
                    signer=signer,
                ),
                audit.verify_audit_chain,
            ],
            max_cached_workflows=settings.worker.max_cached_workflows,
            trust=trust,
            notices=NoticeDispatcher(sessions, notifier),
        )
        log.info(
            "worker started",
            correlation_id="-",
            actor="worker",
            action="worker.start",
            result="ok",
            task_queue=settings.temporal.task_queue,
            guardian_task_queue=guardian_task_queue(settings.temporal.task_queue),
            metrics_port=settings.worker.metrics_port,
            notifier=type(notifier).__name__,
        )
        async with worker:
            try:
                await start_audit_checks(client, settings)
            except Exception as exc:  # the worker serves regardless; a later start retries
                log.error(
                    "audit checks not started",
                    correlation_id="-",
                    actor="worker",
                    action="audit.start",
                    result="failed",
                    error=f"{type(exc).__name__}: {exc}",
                )
            try:
                await move_guardian_to_own_queue(client, settings.temporal.task_queue)
            except Exception as exc:  # the next lock (or worker start) finds it where it is
                log.error(
                    "guardian not moved to its own queue",
                    correlation_id="-",
                    actor="worker",
                    action="guardian.move",
                    result="failed",
                    error=f"{type(exc).__name__}: {exc}",
                )
            summary = asyncio.create_task(log_startup_summary(client, settings))
            await stop.wait()
            summary.cancel()
    await provider.aclose()
    await engine.dispose()
    log.info(
        "worker stopped", correlation_id="-", actor="worker", action="worker.stop", result="ok"
    )


if __name__ == "__main__":
    try:
        # uvloop, as uvicorn gives the API: the worker's event loop hands every activity's
        # database call to a driver thread and back, and every workflow task to the SDK's core;
        # the floor's writes took about a fifth less CPU on it (issue 19, docs/benchmarks.md).
        uvloop.run(main())
    except ConfigurationError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        sys.exit(2)
