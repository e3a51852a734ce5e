"""An approval's steps that each took two local activities, as one (``approval-v9``).

Every local activity costs the worker a round trip through the SDK (a command, the activity's
dispatch, a workflow activation, payloads encoded and decoded) and the server a marker in the
history. A request and its acceptance took six: the admission, the request's write, the
decision's quote, the decision's write, the snapshot's quote and the snapshot's write. Here the
admission and the request's write are one, and so are the acceptance's write and its snapshot.
The decision's quote stays one of its own: it is recorded in history before the
decision is computed from it, so a retried write never meets a different price. Three in all.

Each step is the existing activities' work, called in order; a retry runs them again, and each is
idempotent (the request and the decision hand back what a first run stored, the snapshot is
stored once per approval).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from temporalio import activity

from activities.market_providers import MarketDataError, MarketDataFailure, MarketDataProvider
from activities.persistence import PersistenceActivities
from activities.policy import WorkerTrust
from hitl.market import MarketQuote
from hitl.messages import (
    AcceptanceRecorded,
    AdmitAndRecordInput,
    ApprovalAdmission,
    RecordDecisionInput,
    RecordRequestInput,
    RecordSnapshotInput,
)
from hitl.models import ApprovalRequest, TradeStatus

log = structlog.get_logger(__name__)

SNAPSHOT_QUOTE_ATTEMPTS = 3
"""Tries for the snapshot's quote before the acceptance is kept without one, as the workflow's
quote retry policy (``QUOTE_RETRY``) gave it when the snapshot was an activity of its own."""
SNAPSHOT_QUOTE_BACKOFF = 0.2
"""Seconds before the second try; doubled before each later one."""


class ApprovalStepActivities:
    """Admission with the request's write, and an acceptance with its snapshot; built in
    ``worker.py`` on the same trust, store and market as the single-step activities."""

    def __init__(
        self,
        trust: WorkerTrust,
        persistence: PersistenceActivities,
        provider: MarketDataProvider,
    ) -> None:
        self._trust = trust
        self._persistence = persistence
        self._provider = provider

    @activity.defn(name="admit_and_record")
    async def admit_and_record(self, data: AdmitAndRecordInput) -> ApprovalAdmission:
        """Whether the start is the gateway's and, if so, its request stored under this
        worker's policy; a refused start writes nothing.

        The proof's window is checked on the worker's clock, as ``admit_approval`` does; a retry
        (the write failed: the first attempt admitted the start) checks it as of the first
        attempt's scheduling, so a database down for longer than the window does not turn an
        admitted start into a refused one."""
        start = data.start
        info = activity.info()
        admission = self._trust.admit(
            start,
            workflow_id=data.workflow_id,
            at=info.scheduled_time if info.attempt > 1 else None,
        )
        policy = admission.policy
        if policy is None:
            return admission
        draft = ApprovalRequest.from_proposal(
            start.proposal,
            requested_at=data.requested_at,
            expires_at=data.requested_at + timedelta(seconds=policy.timeout_seconds),
        )
        approval = await self._persistence.record_request(
            RecordRequestInput(
                approval=draft, requested_by=start.requested_by, notify=policy.enabled
            )
        )
        return admission.model_copy(update={"approval": approval})

    @activity.defn(name="record_acceptance")
    async def record_acceptance(self, data: RecordDecisionInput) -> AcceptanceRecorded:
        """Record an acceptance as ``record_decision`` does and, when what was stored is an
        acceptance, its post-trade snapshot (the seed's Property 13). No quote for the snapshot
        leaves the acceptance standing without one, with a warning."""
        recorded = await self._persistence.record_decision(data)
        result = AcceptanceRecorded(
            approval=recorded.approval,
            integrity_failure=recorded.integrity_failure,
            guardian_blocked=recorded.guardian_blocked,
        )
        approval = recorded.approval
        if approval.status is not TradeStatus.ACCEPTED:
            return result
        quote = await self._snapshot_quote(approval)
        if quote is None:
            return result
        snapshot = await self._persistence.record_snapshot(
            RecordSnapshotInput(approval=approval, quote=quote)
        )
        return result.model_copy(update={"snapshot": snapshot})

    async def _snapshot_quote(self, approval: ApprovalRequest) -> MarketQuote | None:
        delay = SNAPSHOT_QUOTE_BACKOFF
        attempt = 1
        while True:
            try:
                return await self._provider.quote(approval.instrument)
            except MarketDataError as exc:
                if (
                    exc.failure is MarketDataFailure.UNKNOWN_INSTRUMENT
                    or attempt == SNAPSHOT_QUOTE_ATTEMPTS
                ):
                    log.warning(
                        "no post-trade snapshot: no quote",
                        correlation_id=approval.correlation_id,
                        actor="system",
                        action="snapshot.skipped",
                        result="no_quote",
                        error_code=exc.error.code,
                        attempts=attempt,
                        trade_id=str(approval.trade_id),
                    )
                    return None
            await asyncio.sleep(delay)
            delay *= 2
            attempt += 1
