"""How the worker, the API and the Discord bot talk to the reconciler: the startup pass, the
status ``/readyz`` shows, and the bot's report of its gateway connection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from activities.reconcile import ReconcileReport, reconciler_workflow_id
from workflows.reconciler import (
    DiscordStatus,
    ReconcileNow,
    ReconcilerInput,
    ReconcilerStatus,
    ReconcilerWorkflow,
)


class ReconcilerClient:
    """The gateway's one reconciler (started by whoever needs it first)."""

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str,
        interval_seconds: int = 60,
        full_interval_seconds: int = 3600,
    ) -> None:
        self._client = client
        self._task_queue = task_queue
        self._interval = interval_seconds
        self._full_interval = full_interval_seconds

    @property
    def workflow_id(self) -> str:
        """The reconciler's workflow id."""
        return reconciler_workflow_id(self._task_queue)

    def _start(self) -> WithStartWorkflowOperation[ReconcilerWorkflow, None]:
        return WithStartWorkflowOperation(
            ReconcilerWorkflow.run,
            self._input(),
            id=self.workflow_id,
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )

    def _input(self) -> ReconcilerInput:
        return ReconcilerInput(
            task_queue=self._task_queue,
            interval_seconds=self._interval,
            full_interval_seconds=self._full_interval,
        )

    async def startup_pass(self) -> ReconcileReport:
        """Start the reconciler if it is not running, run a pass now, and keep its report as
        the startup summary; the intervals become this process's settings."""
        report: ReconcileReport = await self._client.execute_update_with_start_workflow(
            ReconcilerWorkflow.reconcile_now,
            ReconcileNow(
                interval_seconds=self._interval,
                full_interval_seconds=self._full_interval,
                startup=True,
            ),
            start_workflow_operation=self._start(),
        )
        return report

    async def status(self, *, rpc_timeout: timedelta = timedelta(seconds=2)) -> ReconcilerStatus:
        """The startup summary, the last pass and Discord's connection (a query: needs a
        worker)."""
        handle = self._client.get_workflow_handle_for(ReconcilerWorkflow.run, self.workflow_id)
        status: ReconcilerStatus = await handle.query(
            ReconcilerWorkflow.status, rpc_timeout=rpc_timeout
        )
        return status

    async def report_discord(self, *, connected: bool, detail: str = "") -> None:
        """The Discord bot's word on its gateway connection (starts the reconciler if need be)."""
        await self._client.start_workflow(
            ReconcilerWorkflow.run,
            self._input(),
            id=self.workflow_id,
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="discord_status",
            start_signal_args=[
                DiscordStatus(connected=connected, detail=detail, at=datetime.now(UTC))
            ],
        )
