"""ReconcilerWorkflow: every ``HITL_RECONCILE_SECONDS``, one reconciliation pass (and one at once
when a worker starts and asks for its startup summary).

A pass is full (every open row against every running workflow) when a worker asks for one and
every ``HITL_RECONCILE_FULL_SECONDS``; the periodic passes between look only at the approval
workflows terminated, failed, timed out or cancelled since the pass before (less an overlap), so
that their cost follows what ended so rather than what is pending: a full pass at 10,000 pending
cost the worker about 2 s of CPU and the dev server a listing of them all, and every minute it
delayed decisions by seconds (docs/benchmarks.md).

A long-lived workflow rather than a Temporal Schedule (docs/reliability.md says why): one
workflow per gateway (its id names the task queue), started by whichever worker comes first and
left running by the others, so passes never overlap however many workers run. It keeps the last
pass's report for ``/readyz`` (a query) and the Discord bot's last word about its gateway
connection (a signal), and it continues as new now and then so that its history stays short.
A pass that cannot finish (the database or Temporal down) is retried until it can; nothing in
this workflow fails it.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.notifications import NotificationActivities
    from activities.reconcile import (
        ALERT_CODES,
        ReconcileActivities,
        ReconcileInput,
        ReconcileReport,
    )
    from hitl.messages import SecurityAlertInput
    from hitl.models import UtcDatetime

CLOSED_OVERLAP = timedelta(minutes=5)
"""A periodic pass looks at workflows closed since the previous pass was scheduled, less this:
the listing (Temporal's visibility store) may show a close a little late."""

PASS_TIMEOUT = timedelta(minutes=5)
PASS_HEARTBEAT = timedelta(seconds=60)
# A pass retries until the database and Temporal answer again, backing off to 30 s.
PASS_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
ALERT_TIMEOUT = timedelta(seconds=30)
ALERT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)
ALERT_GIVE_UP = timedelta(minutes=10)
"""A notifier that stays down must not stop the passes: an alert is given up after this (the
finding stays in the audit trail, the metric and the log)."""


DISCORD_REPORT_SECONDS = 30.0
"""How often the Discord bot repeats its connection status; ``/readyz`` takes a much longer
silence for a dead bot."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DiscordStatus(_Message):
    """The Discord bot's connection to Discord's gateway, as the bot last reported it."""

    connected: bool
    detail: str = ""
    at: UtcDatetime


class ReconcilerInput(_Message):
    """What starts (or continues) the reconciler."""

    task_queue: str
    interval_seconds: Annotated[int, Field(gt=0)] = 60
    full_interval_seconds: Annotated[int, Field(gt=0)] = 3600
    """How often a periodic pass is a full one."""
    passes_per_run: Annotated[int, Field(gt=0)] = 100
    """Passes before continuing as new (about 100 minutes at the default interval)."""
    orphan_grace_seconds: Annotated[int, Field(ge=0)] = 60
    last: ReconcileReport | None = None
    last_full: ReconcileReport | None = None
    """The last full pass's report (``/readyz``: what stands between full passes)."""
    last_began: UtcDatetime | None = None
    """When the last pass was scheduled, by the Temporal server's clock (which stamps the
    closes a periodic pass lists)."""
    startup: ReconcileReport | None = None
    discord: DiscordStatus | None = None


class ReconcileNow(_Message):
    """Run a pass now and answer with its report (the worker's startup summary)."""

    interval_seconds: Annotated[int, Field(gt=0)] | None = None
    """When given, the interval from now on (the worker's setting wins over the one the
    workflow was started with)."""
    full_interval_seconds: Annotated[int, Field(gt=0)] | None = None
    """When given, how often a full pass runs from now on (as ``interval_seconds``)."""
    startup: bool = False
    """A worker asks as it starts: the report is kept as the startup summary."""


class ReconcilerStatus(_Message):
    """What ``/readyz`` shows."""

    startup: ReconcileReport | None = None
    """The pass a worker asked for as it started: the startup summary."""
    last: ReconcileReport | None = None
    last_full: ReconcileReport | None = None
    """The last full pass (the same as ``last`` when that was full)."""
    discord: DiscordStatus | None = None
    interval_seconds: int
    full_interval_seconds: int = 3600


@workflow.defn(name="ReconcilerWorkflow")
class ReconcilerWorkflow:
    """Runs reconciliation passes for ever, one at a time."""

    @workflow.init
    def __init__(self, data: ReconcilerInput) -> None:
        self._interval = data.interval_seconds
        self._full_interval = data.full_interval_seconds
        # A run continued from before the periodic passes knows no last_full: its last was.
        self._last_full = data.last_full or (data.last if data.last and data.last.full else None)
        self._last_began = data.last_began
        self._startup = data.startup
        self._last = data.last
        self._discord = data.discord
        self._started = 0
        self._completed = 0
        self._wanted = 0
        """The pass a ``reconcile_now`` waits for (a pass started after it asked)."""

    @workflow.run
    async def run(self, data: ReconcilerInput) -> None:
        """Sleep, pass, sleep…; a pass asked for runs at once. Continues as new after
        ``passes_per_run`` passes."""
        while True:
            while self._started < data.passes_per_run or self._wanted > self._started:
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._wanted > self._started,
                        timeout=timedelta(seconds=self._interval),
                    )
                await self._pass(data)
            # A pass asked for while the handlers finish is run before continuing as new.
            await workflow.wait_condition(
                lambda: workflow.all_handlers_finished() or self._wanted > self._started
            )
            if self._wanted <= self._started:
                break
        workflow.continue_as_new(
            data.model_copy(
                update={
                    "interval_seconds": self._interval,
                    "full_interval_seconds": self._full_interval,
                    "last": self._last,
                    "last_full": self._last_full,
                    "last_began": self._last_began,
                    "startup": self._startup,
                    "discord": self._discord,
                }
            )
        )

    def _closed_since(self) -> datetime | None:
        """None when this pass must be full: asked for, the first, or a full one is due."""
        began, full = self._last_began, self._last_full
        if self._wanted > self._started or began is None or full is None:
            return None
        if workflow.now() - full.at >= timedelta(seconds=self._full_interval):
            return None
        return began - CLOSED_OVERLAP

    async def _pass(self, data: ReconcilerInput) -> None:
        closed_since = self._closed_since()
        self._last_began = workflow.now()
        self._started += 1
        report = await workflow.execute_activity_method(
            ReconcileActivities.reconcile,
            ReconcileInput(
                task_queue=data.task_queue,
                orphan_grace_seconds=data.orphan_grace_seconds,
                closed_since=closed_since,
            ),
            start_to_close_timeout=PASS_TIMEOUT,
            heartbeat_timeout=PASS_HEARTBEAT,
            retry_policy=PASS_RETRY,
        )
        self._last = report
        if report.full:
            self._last_full = report
        self._completed += 1
        for finding in report.alerts():
            await self._alert(
                SecurityAlertInput(
                    trade_id=finding.trade_id,
                    error_code=ALERT_CODES[finding.kind].code,
                    message=finding.message,
                    correlation_id=finding.correlation_id,
                    detected_at=report.at,
                )
            )

    async def _alert(self, alert: SecurityAlertInput) -> None:
        try:
            await workflow.execute_activity_method(
                NotificationActivities.notify_security_alert,
                alert,
                start_to_close_timeout=ALERT_TIMEOUT,
                schedule_to_close_timeout=ALERT_GIVE_UP,
                retry_policy=ALERT_RETRY,
            )
        except ActivityError as exc:
            workflow.logger.warning("reconciliation alert not delivered: %s", exc.cause)

    @workflow.update
    async def reconcile_now(self, request: ReconcileNow) -> ReconcileReport:
        """Run a pass as soon as the one under way (if any) ends, and return its report."""
        if request.interval_seconds is not None:
            self._interval = request.interval_seconds
        if request.full_interval_seconds is not None:
            self._full_interval = request.full_interval_seconds
        wanted = self._started + 1
        self._wanted = max(self._wanted, wanted)
        await workflow.wait_condition(lambda: self._completed >= wanted)
        assert self._last is not None, "a completed pass leaves its report"
        if request.startup:
            self._startup = self._last
        return self._last

    @workflow.signal
    def discord_status(self, status: DiscordStatus) -> None:
        """The Discord bot reports its gateway connection (connected, or why not)."""
        if self._discord is None or status.at >= self._discord.at:
            self._discord = status

    @workflow.query
    def status(self) -> ReconcilerStatus:
        """The startup summary, the last pass and Discord's connection."""
        return ReconcilerStatus(
            startup=self._startup,
            last=self._last,
            last_full=self._last_full,
            discord=self._discord,
            interval_seconds=self._interval,
            full_interval_seconds=self._full_interval,
        )
