"""ApprovalWorkflow: one trade's approval, from request to decision or expiry, then its lifecycle.

The workflow is the single writer of its approval: decisions arrive as Updates and are applied
one at a time under a lock, the deadline is a durable timer, and every write is an activity. After
a crash or restart, replay rebuilds this state; no recovery code of ours is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NoReturn, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.approval_steps import ApprovalStepActivities
    from activities.market_quotes import MarketDataActivities
    from activities.notifications import NotificationActivities
    from activities.persistence import PersistenceActivities
    from activities.policy import PolicyActivities, WorkerTrust, trust_for
    from hitl.decisions import (
        Refusal,
        approval_step,
        approvals_required,
        refusal_of_decision,
        refusal_of_standing,
    )
    from hitl.errors import ErrorCode
    from hitl.lifecycle import TERMINAL_STATES, validate_transition
    from hitl.market import MarketQuote
    from hitl.messages import (
        SYSTEM_ACTOR,
        AcceptanceRecorded,
        AdmitAndRecordInput,
        AdmitApprovalInput,
        ApprovalPolicy,
        ApprovalWorkflowInput,
        DecisionCommand,
        DecisionRecorded,
        FetchQuoteInput,
        GuardianLockNotice,
        LifecycleCommand,
        NotifyInput,
        PostTradeSnapshot,
        RecordAuditInput,
        RecordDecisionInput,
        RecordRequestInput,
        RecordSnapshotInput,
        RecordTransitionInput,
        ReminderInput,
        ReminderKind,
        SecurityAlertInput,
    )
    from hitl.models import (
        ApprovalRequest,
        Decision,
        DecisionChannel,
        DecisionReason,
        TradeStatus,
    )
    from hitl.notices import NoticeKind
    from hitl.signing import CommandAction, CommandProof, SeenProofs
    from hitl.slippage import SlippageGuard
    from workflows import search_attributes

DB_TIMEOUT = timedelta(seconds=30)
# Writes must land eventually: retry without limit, backing off to 10 s.
DB_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)
QUOTE_TIMEOUT = timedelta(seconds=5)
# An operator is waiting on the answer: a few quick tries, then the decision fails clearly.
QUOTE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3)
NOTIFY_TIMEOUT = timedelta(seconds=30)
NOTIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)
)


LOCAL_ACTIVITIES = "local-activities"
"""Patch id: approvals started from this version on run their short reads and writes as local
activities (the benchmark's tuning); older histories replay with regular ones."""

SIGNED_COMMANDS = "signed-commands"
"""Patch id: approvals started from this version on are admitted by the worker first (the start
must carry the gateway's proof) and take the worker's policy, recorded in history; older
histories replay with the policy their input carried. Their unsigned Guardian signal is ignored."""
ADMIT_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5)

OPERATOR_VIEW = "operator-view"
"""Patch id: approvals started from this version on upsert their search attributes and current
details at every change, summarise their timers and activities, and remind (then escalate to)
the operators on durable timers (issue 18); older histories replay without those commands."""

FOUR_EYES = "four-eyes"
"""Patch id: approvals started from this version on apply the worker's four-eyes rule (two
different operators above ``HITL_FOUR_EYES_RISK_PCT``): a first approval is recorded while the
approval keeps waiting, the second accepts. Older histories replay with one approval (their
policies had no threshold anyway)."""

NOTICE_OUTBOX = "notice-outbox"
"""Patch id: approvals started from this version on have the store queue their notices to the
operators with the changes they tell, for the worker's dispatcher to send
(``activities/notice_dispatch.py``), instead of sending each as an activity: two activity tasks
and two workflow tasks fewer per approval (issue 19). Older histories replay with theirs."""

APPROVAL_V8 = "approval-v8"
"""Patch id: approvals started from this version on ask no other patch (but for an unsigned
``guardian_locked`` signal in a run's first task, which asks ``SIGNED_COMMANDS`` to be ignored):
every one above holds for them. Each patch asked adds a marker and an upsert of
``TemporalChangeVersion`` to history, five of each per approval before this, one now (issue 19).
Such runs also keep one timer at a time, the next of reminder, escalation and deadline, where
older ones keep the deadline's and the reminders' side by side: one timer started (and cancelled
by a decision) instead of two. Older histories lack this marker and ask the others, as they did.
A later change adds the next version's patch, asked first, that holds this one and every
earlier one."""

APPROVAL_V9 = "approval-v9"
"""Patch id: approvals started from this version on hold ``APPROVAL_V8`` and every patch before
it, and take three local activities from request to a recorded acceptance where there were six
(issue 19): the admission with the request's write (``admit_and_record``), the decision's quote,
and the acceptance's write with its post-trade snapshot (``record_acceptance``). Older histories
lack this marker and run their steps one by one, as they did. The next change adds
``approval-v10``, asked first, holding this one."""

ArgT = TypeVar("ArgT")
RetT = TypeVar("RetT")


def _fail(error: ErrorCode, message: str, *details: Any) -> NoReturn:
    raise ApplicationError(
        f"{error.code}: {message}", *details, type=error.code, non_retryable=True
    )


def _refuse(refusal: Refusal) -> NoReturn:
    details = () if refusal.approval is None else (refusal.approval.to_dict(),)
    _fail(refusal.error, refusal.message, *details)


@workflow.defn(name="ApprovalWorkflow")
class ApprovalWorkflow:
    """A trade's approval and, once accepted, its lifecycle up to SETTLED."""

    @workflow.init
    def __init__(self, data: ApprovalWorkflowInput) -> None:
        self._input = data
        # The worker's policy, once admitted; histories from before SIGNED_COMMANDS use theirs.
        self._policy: ApprovalPolicy | None = None
        self._seen = SeenProofs()
        """Proofs this approval accepted that still hold: the same one twice is a replay."""
        self._approval: ApprovalRequest | None = None
        self._snapshot: PostTradeSnapshot | None = None
        self._lock = asyncio.Lock()
        self._guardian: GuardianLockNotice | None = None
        self._notices: list[asyncio.Task[None]] = []
        self._recorded_by: str | None = None
        """The id of the update whose decision was recorded, if an update's was."""
        self._first_approval_by: str | None = None
        """The id of the update that recorded a first of two approvals (four eyes)."""
        self._progress: asyncio.Task[None] | None = None
        """The notice of that first approval, which the outcome's notice follows."""
        self._visible = False
        """Whether this run shows itself to operators (``OPERATOR_VIEW``)."""
        self._published: tuple[Any, ...] | None = None
        """What the search attributes last upserted said, so an unchanged state adds nothing."""
        self._reminded: list[ReminderKind] = []
        """The reminder and escalation sent so far, in order."""
        self._four_eyes = False
        """Whether this run applies the four-eyes rule (``FOUR_EYES``)."""
        self._outbox = False
        """Whether the store queues this run's notices (``NOTICE_OUTBOX``)."""
        self._v9 = False
        """Whether this run joins its steps (``APPROVAL_V9``)."""
        self._v8 = False
        """Whether this run is of ``APPROVAL_V8``: every earlier patch holds, one timer at a time.
        Older runs ask the earlier patches where they need them."""

    @workflow.run
    async def run(self, data: ApprovalWorkflowInput) -> ApprovalRequest:
        """Record the request, wait for a decision or the deadline, then follow the trade."""
        policy = await self._admit(data)
        approval = self._approval or await self._record_request(data, policy)
        self._approval = approval
        self._publish()
        notified: asyncio.Task[None] | None = None
        reminders: asyncio.Task[None] | None = None
        if not policy.enabled:
            workflow.logger.warning(
                "HITL disabled: trade %s approved without a human decision", approval.trade_id
            )
            async with self._lock:
                await self._record(
                    status=TradeStatus.ACCEPTED,
                    reason=DecisionReason.HITL_DISABLED,
                    by=SYSTEM_ACTOR,
                    channel=DecisionChannel.SYSTEM,
                    at=workflow.now(),
                )
        elif not approval.is_decided:  # decided at once when the Guardian was locked
            if not self._outbox:
                notified = asyncio.create_task(self._notify("notify_approval_requested", approval))
            if self._v8:
                await self._await_decision_reminding()
            else:
                if self._visible:
                    reminders = asyncio.create_task(self._remind())
                await self._await_decision_or_expiry()
        if self._current.status is TradeStatus.ACCEPTED:
            if not self._v9:  # v9 runs stored the snapshot with the acceptance
                await self._capture_snapshot()
            await workflow.wait_condition(lambda: self._current.status in TERMINAL_STATES)
        if notified is not None:
            await notified
        if reminders is not None:
            await reminders
        await asyncio.gather(*self._notices)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._current

    async def _admit(self, data: ApprovalWorkflowInput) -> ApprovalPolicy:
        """The first thing an approval does: the worker checks the start is the gateway's and
        gives its policy. A refused start ends here, having written nothing and told nobody."""
        # Every patch is asked here, before the admission's local activity, so that its marker
        # comes first in new histories too: on replay a patch marker recorded after a local
        # activity in the same workflow task is not seen in time (a nondeterminism error with no
        # workflow cache).
        if workflow.patched(APPROVAL_V9):
            self._v9 = self._v8 = self._visible = self._four_eyes = self._outbox = True
            return await self._admit_and_record(data)
        if workflow.patched(APPROVAL_V8):
            self._v8 = signed = self._visible = self._four_eyes = self._outbox = True
        else:
            signed = workflow.patched(SIGNED_COMMANDS)
            workflow.patched(LOCAL_ACTIVITIES)
            self._visible = workflow.patched(OPERATOR_VIEW)
            self._four_eyes = workflow.patched(FOUR_EYES)
            self._outbox = workflow.patched(NOTICE_OUTBOX)
        if signed:
            admission = await workflow.execute_local_activity_method(
                PolicyActivities.admit_approval,
                AdmitApprovalInput(workflow_id=workflow.info().workflow_id, start=data),
                start_to_close_timeout=DB_TIMEOUT,
                retry_policy=ADMIT_RETRY,
            )
            if admission.error_code is not None:
                _fail(
                    ErrorCode.from_code(admission.error_code),
                    "the start was not the gateway's; nothing was recorded",
                )
            assert admission.policy is not None, "an admitted start has the worker's policy"
            self._policy = admission.policy
        else:
            assert data.policy is not None, "histories from before the worker's policy carry one"
            self._policy = data.policy
        return self._policy

    async def _admit_and_record(self, data: ApprovalWorkflowInput) -> ApprovalPolicy:
        """``_admit`` and the request's write in one local activity (``APPROVAL_V9``); the
        request is stored as of this first run's time, which its proof is checked at too."""
        admission = await workflow.execute_local_activity_method(
            ApprovalStepActivities.admit_and_record,
            AdmitAndRecordInput(
                workflow_id=workflow.info().workflow_id, start=data, requested_at=workflow.now()
            ),
            start_to_close_timeout=DB_TIMEOUT,
            retry_policy=DB_RETRY,
            summary="admit and record the request",
        )
        if admission.error_code is not None:
            _fail(
                ErrorCode.from_code(admission.error_code),
                "the start was not the gateway's; nothing was recorded",
            )
        assert admission.policy is not None, "an admitted start has the worker's policy"
        assert admission.approval is not None, "an admitted start is recorded"
        self._policy = admission.policy
        self._approval = admission.approval
        return admission.policy

    async def _record_request(
        self, data: ApprovalWorkflowInput, policy: ApprovalPolicy
    ) -> ApprovalRequest:
        """Store the request (runs from before ``APPROVAL_V9``, after their admission)."""
        now = workflow.now()
        draft = ApprovalRequest.from_proposal(
            data.proposal,
            requested_at=now,
            expires_at=now + timedelta(seconds=policy.timeout_seconds),
        )
        return await self._short(
            PersistenceActivities.record_request,
            RecordRequestInput(
                approval=draft,
                requested_by=data.requested_by,
                notify=self._outbox and policy.enabled,
            ),
            summary="record the request",
        )

    @property
    def _policy_now(self) -> ApprovalPolicy:
        assert self._policy is not None, "the policy is set before anything reads it"
        return self._policy

    def _trust(self) -> WorkerTrust:
        trust = trust_for(workflow.info().task_queue)
        if trust is None:
            _fail(ErrorCode.CONFIGURATION, "this worker has no commands keyring")
        return trust

    def _check_proof(
        self, proof: CommandProof | None, action: CommandAction, payload: Any, claimed_by: str
    ) -> WorkerTrust:
        """In a validator: refuse (SEC-092/093) a command the gateway did not sign for this
        approval and action, or one already used; nothing reaches history or the database."""
        trust = self._trust()
        refused = trust.refusal(
            proof,
            workflow_id=workflow.info().workflow_id,
            action=action,
            payload=payload,
            claimed_by=claimed_by,
            seen=self._seen,
        )
        if refused is not None:
            _fail(refused, f"{action.value} refused: not a valid command of the gateway")
        return trust

    def _accepted(self, proof: CommandProof | None) -> None:
        """Remember a proof once its command is accepted (handlers rebuild this on replay)."""
        if proof is not None:
            self._seen.remember(proof, now=workflow.now())

    @property
    def _current(self) -> ApprovalRequest:
        assert self._approval is not None, "the approval is recorded before anything reads it"
        return self._approval

    def _summary(self, text: str) -> str | None:
        """A short summary for a timer or activity, in runs that show themselves."""
        return text if self._visible else None

    def _publish(self) -> None:
        """Show the approval as it stands: search attributes (upserted only when they change:
        each upsert is an event in history) and current details (not in history)."""
        if not self._visible or self._approval is None:
            return
        approval = self._approval
        state = (approval.status, approval.decided_by, approval.expires_at)
        if state != self._published:
            workflow.upsert_search_attributes(
                search_attributes.updates_for(approval, requested_by=self._input.requested_by)
            )
            self._published = state
        workflow.set_current_details(
            search_attributes.current_details(approval, notices=self._reminded)
        )

    async def _short(
        self,
        activity: Callable[[Any, ArgT], Awaitable[RetT]],
        argument: ArgT,
        *,
        limit: timedelta = DB_TIMEOUT,
        retry: RetryPolicy = DB_RETRY,
        local: bool = True,
        summary: str | None = None,
    ) -> RetT:
        """Run a short read or write (a quote, one transaction). As a local activity it runs in
        this worker without a round trip through the server's task queues: about half the
        server's work per approval, and a decision answered sooner. Retries, idempotency and
        replay are the same; histories from before the patch keep their regular activities.

        ``local=False`` keeps a regular activity where nobody waits on the answer and many may
        come at once (expiries, a Guardian cascade): a local activity holds its workflow task
        open, so a hundred timers firing together would queue behind each other's writes.
        """
        if local and (self._v8 or workflow.patched(LOCAL_ACTIVITIES)):
            return await workflow.execute_local_activity_method(
                activity,
                argument,
                start_to_close_timeout=limit,
                retry_policy=retry,
                summary=self._summary(summary or activity.__name__),
            )
        return await workflow.execute_activity_method(
            activity,
            argument,
            start_to_close_timeout=limit,
            retry_policy=retry,
            summary=self._summary(summary or activity.__name__),
        )

    async def _await_decision_or_expiry(self) -> None:
        expires_at = self._current.expires_at
        while not self._current.is_decided:
            remaining = expires_at - workflow.now()
            if remaining > timedelta(0):
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._current.is_decided or self._guardian is not None,
                        timeout=remaining,
                        timeout_summary=self._summary("deadline"),
                    )
            if self._guardian is not None:
                await self._adopt_guardian_rejection(self._guardian)
                return
            await self._expire()

    async def _expire(self) -> None:
        """Reject the approval at its deadline, unless decided meanwhile. A decision already
        under way when the deadline passes is allowed to finish; the lock makes its outcome
        and the expiry mutually exclusive."""
        async with self._lock:
            if not self._current.is_decided and workflow.now() >= self._current.expires_at:
                await self._record(
                    status=TradeStatus.REJECTED,
                    reason=DecisionReason.HITL_TIMEOUT,
                    by=SYSTEM_ACTOR,
                    channel=DecisionChannel.SYSTEM,
                    at=workflow.now(),
                    event_type="hitl.expired",
                    local=False,
                    notice=NoticeKind.APPROVAL_EXPIRED,
                )
                # (A Guardian lock may have rejected it first; that is no expiry.)
                if (
                    not self._outbox
                    and self._current.decision_reason is DecisionReason.HITL_TIMEOUT
                ):
                    await self._after_progress()
                    await self._notify("notify_approval_expired", self._current)

    async def _await_decision_reminding(self) -> None:
        """Wait for a decision, reminding then escalating at the policy's points of the window,
        until the deadline: one durable timer at a time, the next of the three (``APPROVAL_V8``).
        A reminder is sent beside the wait, never holding the next timer back."""
        approval = self._current
        steps = deque(self._reminder_steps(approval))
        reminded: asyncio.Task[None] | None = None
        while not self._current.is_decided:
            if steps:
                due, percent, kind = steps[0]
                summary = f"{kind.value} at {percent} % of the window"
            else:
                due, summary = approval.expires_at, "deadline"
            delay = due - workflow.now()
            if delay > timedelta(0):
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._current.is_decided or self._guardian is not None,
                        timeout=delay,
                        timeout_summary=summary,
                    )
            if self._guardian is not None:
                await self._adopt_guardian_rejection(self._guardian)
                return
            if self._current.is_decided:
                return
            if steps:
                steps.popleft()
                reminded = asyncio.create_task(self._remind_after(reminded, kind, percent, due))
                self._notices.append(reminded)
                continue
            await self._expire()

    async def _remind_after(
        self,
        earlier: asyncio.Task[None] | None,
        kind: ReminderKind,
        percent: Decimal,
        due: datetime,
    ) -> None:
        """Send a reminder once the one before it has gone (operators are reminded before
        they are escalated to, as when one task sent both), and not once the approval is
        decided or the Guardian locked meanwhile."""
        if earlier is not None:
            await earlier
        if self._current.is_decided or self._guardian is not None:
            return
        await self._send_reminder(kind, percent, due)

    def _reminder_steps(
        self, approval: ApprovalRequest
    ) -> list[tuple[datetime, Decimal, ReminderKind]]:
        """When the policy reminds and escalates (none at 0 %), in order."""
        policy = self._policy_now
        window = approval.expires_at - approval.requested_at
        return sorted(
            (approval.requested_at + window * (float(percent) / 100), percent, kind)
            for kind, percent in (
                (ReminderKind.REMINDER, policy.remind_at_percent),
                (ReminderKind.ESCALATION, policy.escalate_at_percent),
            )
            if percent > 0
        )

    async def _remind(self) -> None:
        """Remind the operators, then escalate, at the policy's points of the window: once
        each, on durable timers, and not at all once the approval is decided (or the Guardian
        locked)."""

        def settled() -> bool:
            return self._current.is_decided or self._guardian is not None

        for due, percent, kind in self._reminder_steps(self._current):
            delay = due - workflow.now()
            if delay > timedelta(0):
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        settled,
                        timeout=delay,
                        timeout_summary=f"{kind.value} at {percent} % of the window",
                    )
            if settled():
                return
            await self._send_reminder(kind, percent, due)

    async def _send_reminder(self, kind: ReminderKind, percent: Decimal, due: datetime) -> None:
        """Remind (or escalate to) the operators, once; a failure is logged, not raised."""
        try:
            await workflow.execute_activity(
                "notify_approval_reminder",
                ReminderInput(approval=self._current, kind=kind, at_percent=percent, due_at=due),
                start_to_close_timeout=NOTIFY_TIMEOUT,
                # Pointless once the deadline has passed: the expiry notice follows.
                schedule_to_close_timeout=max(
                    self._current.expires_at - workflow.now(), timedelta(seconds=1)
                ),
                retry_policy=NOTIFY_RETRY,
                summary=f"{kind.value} to the operators",
            )
        except ActivityError as exc:
            workflow.logger.warning("%s failed: %s", kind.value, exc.cause)
        self._reminded.append(kind)
        self._publish()

    @workflow.signal
    def guardian_locked(self, notice: GuardianLockNotice) -> None:
        """The notice as a signal, from before notices were signed: kept for replaying those
        histories only. A signal is in history before anything can check it, so in a new run
        it is ignored (the signed ``adopt_guardian_lock`` Update replaces it)."""
        # (A signal in a run's first task comes before its admission: the patch is asked then.)
        if self._v8 or workflow.patched(SIGNED_COMMANDS):
            workflow.logger.warning("unsigned guardian_locked signal ignored")
            return
        self._guardian = notice

    @workflow.update
    def adopt_guardian_lock(self, notice: GuardianLockNotice) -> None:
        """The Guardian locked and rejected this approval: adopt that and end."""
        self._accepted(notice.proof)
        if self._guardian is None:
            self._guardian = notice

    @adopt_guardian_lock.validator
    def _validate_adopt_guardian_lock(self, notice: GuardianLockNotice) -> None:
        self._check_proof(notice.proof, CommandAction.LOCK_NOTICE, notice, notice.locked_by)
        self._accepted(notice.proof)

    async def _adopt_guardian_rejection(self, notice: GuardianLockNotice) -> None:
        async with self._lock:
            if self._current.is_decided:
                return
            await self._record(
                status=TradeStatus.REJECTED,
                reason=DecisionReason.GUARDIAN_LOCK,
                by=SYSTEM_ACTOR,
                channel=DecisionChannel.SYSTEM,
                at=notice.locked_at,
                comment=f"Guardian locked by {notice.locked_by}: {notice.reason}",
                local=False,
            )

    # --- decisions -------------------------------------------------------------------------

    @workflow.update
    async def approve(self, command: DecisionCommand) -> ApprovalRequest:
        """An operator approves: slippage is checked against the market, then ACCEPTED."""
        return await self._decide(command, Decision.APPROVE)

    @approve.validator
    def _validate_approve(self, command: DecisionCommand) -> None:
        self._validate_decision(command, Decision.APPROVE)

    @workflow.update
    async def reject(self, command: DecisionCommand) -> ApprovalRequest:
        """An operator rejects."""
        return await self._decide(command, Decision.REJECT)

    @reject.validator
    def _validate_reject(self, command: DecisionCommand) -> None:
        self._validate_decision(command, Decision.REJECT)

    def _validate_decision(self, command: DecisionCommand, decision: Decision) -> None:
        # Validators write nothing to history: refusals here cost the workflow nothing. They do
        # not run on replay either, so they may read the worker's current keyring and
        # allow-list: an operator removed while the approval waits can no longer decide it.
        action = CommandAction.APPROVE if decision is Decision.APPROVE else CommandAction.REJECT
        trust = self._check_proof(command.proof, action, command, command.operator_id)
        refusal = refusal_of_decision(
            command,
            decision,
            allowed_operators=trust.policy().allowed_operators,
            guardian=self._guardian,
            approval=self._approval,
            now=workflow.now(),
            requested_by=self._input.requested_by,
        )
        if refusal is not None:
            _refuse(refusal)
        # Remembered here too: two copies in one workflow task pass validation before either
        # handler runs.
        self._accepted(command.proof)

    async def _decide(self, command: DecisionCommand, decision: Decision) -> ApprovalRequest:
        self._accepted(command.proof)
        try:
            return await self._apply_decision(command, decision)
        finally:
            approval = self._approval
            update = workflow.current_update_info()
            if self._outbox:
                pass  # the store queued this decision's notice, if it owes one
            elif (
                update is not None
                and self._first_approval_by == update.id
                and approval is not None
                and approval.decision_channel is None
                and command.channel is not DecisionChannel.DISCORD
            ):
                # A first of two approvals (four eyes) made elsewhere: the Discord message shows
                # it (a click's own message is edited by the bot).
                self._progress = asyncio.create_task(
                    self._notify("notify_approval_decided", approval)
                )
                self._notices.append(self._progress)
            # Only the update that recorded the decision sends the notice; histories recorded
            # before this notice existed replay without it.
            if (
                not self._outbox
                and update is not None
                and self._recorded_by == update.id
                and approval is not None
                and approval.decision_channel is not DecisionChannel.DISCORD
                and approval.decision_reason is not DecisionReason.GUARDIAN_LOCK
                and workflow.patched("notify-approval-decided")
            ):
                self._notices.append(asyncio.create_task(self._notify_decided(approval)))

    async def _apply_decision(
        self, command: DecisionCommand, decision: Decision
    ) -> ApprovalRequest:
        received_at = workflow.now()
        await workflow.wait_condition(lambda: self._approval is not None)
        async with self._lock:
            approval = self._current
            refusal = refusal_of_standing(
                approval, operator_id=command.operator_id, decision=decision, at=received_at
            )
            if refusal is not None:
                _refuse(refusal)
            if approval.is_decided:
                return approval  # its own decider repeating it: the standing result
            # The decision's own request keeps its correlation id in the audit trail.
            request = {"request_correlation_id": command.correlation_id}
            if decision is Decision.REJECT:
                return await self._record(
                    status=TradeStatus.REJECTED,
                    reason=DecisionReason.OPERATOR_REJECTED,
                    by=command.operator_id,
                    channel=command.channel,
                    comment=command.comment,
                    at=received_at,
                    audit_payload=request,
                    notice=NoticeKind.APPROVAL_DECIDED,
                )
            step = approval_step(
                approval, command.operator_id, required=self._approvals_required(approval)
            )
            if not step.accepts:
                return await self._record_first_approval(command, step.approvers, received_at)
            quote = await self._quote(approval.instrument, command.correlation_id)
            current_price = quote.execution_price(approval.side)
            within, deviation = SlippageGuard(self._policy_now.slippage_max_percent).validate(
                approval.request_price, current_price
            )
            market = {
                "bid": str(quote.bid),
                "ask": str(quote.ask),
                "current_price": str(current_price),
                "deviation_pct": str(deviation),
                "max_slippage_pct": str(self._policy_now.slippage_max_percent),
            }
            if not within:
                rejected = await self._record(
                    status=TradeStatus.REJECTED,
                    reason=DecisionReason.SLIPPAGE_EXCEEDED,
                    by=command.operator_id,
                    channel=command.channel,
                    comment=command.comment,
                    at=received_at,
                    error_code=ErrorCode.SLIPPAGE_EXCEEDED.code,
                    audit_payload={"market": market, **request},
                    approvers=step.approvers,
                    notice=NoticeKind.APPROVAL_DECIDED,
                )
                _fail(
                    ErrorCode.SLIPPAGE_EXCEEDED,
                    f"price moved {deviation}% (limit {self._policy_now.slippage_max_percent}%)",
                    rejected.to_dict(),
                )
            return await self._record(
                status=TradeStatus.ACCEPTED,
                reason=DecisionReason.OPERATOR_APPROVED,
                by=command.operator_id,
                channel=command.channel,
                comment=command.comment,
                at=received_at,
                audit_payload={"market": market, **request},
                approvers=step.approvers,
                notice=NoticeKind.APPROVAL_DECIDED,
            )

    async def _after_progress(self) -> None:
        """Wait for the notice of a first of two approvals, if one is under way, so that the
        approval's outcome is shown after it, never overwritten by it."""
        if self._progress is not None:
            await self._progress

    async def _notify_decided(self, approval: ApprovalRequest) -> None:
        await self._after_progress()
        await self._notify("notify_approval_decided", approval)

    def _approvals_required(self, approval: ApprovalRequest) -> int:
        """How many operators must approve: the worker's four-eyes threshold, in runs that
        apply it (``FOUR_EYES``)."""
        if not self._four_eyes:
            return 1
        return approvals_required(approval.risk_pct, self._policy_now.four_eyes_risk_pct)

    async def _record_first_approval(
        self, command: DecisionCommand, approvers: tuple[str, ...], at: datetime
    ) -> ApprovalRequest:
        """Record one approval of the two the approval needs (callers hold the lock): the
        approvers so far, in the row (MAC'd), its audit entry and an event; the approval keeps
        waiting for a second, different operator, and its deadline keeps running."""
        expected = self._current
        approved = expected.model_copy(update={"approvers": approvers})
        result = await self._short(
            PersistenceActivities.record_decision,
            RecordDecisionInput(
                expected=expected,
                decided=approved,
                event_type="hitl.approved_once",
                audit_payload={
                    "request_correlation_id": command.correlation_id,
                    "approved_by": command.operator_id,
                    "channel": command.channel.value,
                    "comment": command.comment,
                    "approved_at": at.isoformat(),
                },
                notice=NoticeKind.APPROVAL_DECIDED if self._outbox else None,
                channel=command.channel,
            ),
            summary=f"record approval 1 of 2 ({command.operator_id})",
        )
        self._approval = result.approval
        self._publish()
        update = workflow.current_update_info()
        if result.approval.is_decided:
            # Decided in the meantime (a Guardian lock reached the row first, or the row
            # failed its check): the same outcomes a decision would have met.
            if update is not None:
                self._recorded_by = update.id
            if result.guardian_blocked:
                _fail(
                    ErrorCode.GUARDIAN_LOCKED,
                    "the Guardian is locked; the approval was rejected",
                    result.approval.to_dict(),
                )
            if result.integrity_failure:
                await self._integrity_alert(
                    expected, "stored approval failed its integrity check; rejected"
                )
                _fail(
                    ErrorCode.INTEGRITY_FAILURE,
                    f"stored approval of {expected.trade_id} was altered; rejected",
                    result.approval.to_dict(),
                )
            return result.approval
        if update is not None:
            self._first_approval_by = update.id
        return result.approval

    async def _quote(self, instrument: str, correlation_id: str) -> MarketQuote:
        try:
            return await self._short(
                MarketDataActivities.fetch_quote,
                FetchQuoteInput(instrument=instrument, correlation_id=correlation_id),
                limit=QUOTE_TIMEOUT,
                retry=QUOTE_RETRY,
                summary=f"quote {instrument}",
            )
        except ActivityError as exc:
            _fail(
                ErrorCode.MARKET_DATA_UNAVAILABLE,
                f"no quote for {instrument}; nothing was decided ({exc.cause or exc})",
            )

    async def _record(
        self,
        *,
        status: TradeStatus,
        reason: DecisionReason,
        by: str,
        channel: DecisionChannel,
        at: datetime,
        comment: str | None = None,
        event_type: str = "hitl.decided",
        error_code: str | None = None,
        audit_payload: dict[str, Any] | None = None,
        local: bool = True,
        approvers: tuple[str, ...] | None = None,
        notice: NoticeKind | None = None,
    ) -> ApprovalRequest:
        """Write the end of the approval phase; callers hold the lock. The approvers recorded
        so far (four eyes) stay on the record, with the deciding one added when ``approvers``
        says so."""
        expected = self._current
        changes: dict[str, Any] = {
            "status": status,
            "decided_at": at,
            "decided_by": by,
            "decision_channel": channel,
            "decision_reason": reason,
            "comment": comment,
        }
        if approvers is not None:
            changes["approvers"] = approvers
        decided = expected.model_copy(update=changes)
        record = RecordDecisionInput(
            expected=expected,
            decided=decided,
            event_type=event_type,
            audit_payload=audit_payload or {},
            error_code=error_code,
            notice=notice if self._outbox else None,
            channel=channel,
        )
        summary = f"record {status.value} ({reason.value})"
        result: DecisionRecorded
        if self._v9 and status is TradeStatus.ACCEPTED:
            accepted: AcceptanceRecorded = await self._short(
                ApprovalStepActivities.record_acceptance,
                record,
                summary=f"{summary} and the post-trade snapshot",
            )
            self._snapshot = accepted.snapshot
            result = accepted
        else:
            result = await self._short(
                PersistenceActivities.record_decision, record, local=local, summary=summary
            )
        self._approval = result.approval
        self._publish()
        update = workflow.current_update_info()
        if update is not None and result.approval.is_decided:
            self._recorded_by = update.id
        if result.guardian_blocked and by != SYSTEM_ACTOR:
            _fail(
                ErrorCode.GUARDIAN_LOCKED,
                "the Guardian is locked; the approval was rejected",
                result.approval.to_dict(),
            )
        if result.integrity_failure:
            await self._integrity_alert(
                expected, "stored approval failed its integrity check; rejected"
            )
            # A decision's caller is told (the update fails); on the workflow's own path (the
            # deadline, a Guardian lock) the approval ends REJECTED and the workflow completes:
            # no workflow fails on data (issue 16).
            if update is not None:
                _fail(
                    ErrorCode.INTEGRITY_FAILURE,
                    f"stored approval of {expected.trade_id} was altered; rejected",
                    result.approval.to_dict(),
                )
        return result.approval

    async def _integrity_alert(self, approval: ApprovalRequest, message: str) -> None:
        await workflow.execute_activity_method(
            NotificationActivities.notify_security_alert,
            SecurityAlertInput(
                trade_id=approval.trade_id,
                error_code=ErrorCode.INTEGRITY_FAILURE.code,
                message=message,
                correlation_id=approval.correlation_id,
                detected_at=workflow.now(),
            ),
            start_to_close_timeout=NOTIFY_TIMEOUT,
            retry_policy=NOTIFY_RETRY,
            summary=self._summary("security alert to the operators"),
        )

    async def _notify(self, activity_name: str, approval: ApprovalRequest) -> None:
        # A notifier that stays down must not keep the approval from ending: give up after
        # the approval's own timeout and leave a warning.
        try:
            await workflow.execute_activity(
                activity_name,
                NotifyInput(approval=approval, event=activity_name),
                start_to_close_timeout=NOTIFY_TIMEOUT,
                schedule_to_close_timeout=timedelta(seconds=self._policy_now.timeout_seconds),
                retry_policy=NOTIFY_RETRY,
                summary=self._summary(activity_name.removeprefix("notify_").replace("_", " ")),
            )
        except ActivityError as exc:
            workflow.logger.warning("notification %s failed: %s", activity_name, exc.cause)

    async def _capture_snapshot(self) -> None:
        approval = self._current
        try:
            quote = await self._quote(approval.instrument, approval.correlation_id)
        except ApplicationError:
            workflow.logger.warning("no post-trade snapshot for %s: no quote", approval.trade_id)
            return
        self._snapshot = await self._short(
            PersistenceActivities.record_snapshot,
            RecordSnapshotInput(approval=approval, quote=quote),
            summary="record the post-trade snapshot",
        )

    # --- lifecycle ---------------------------------------------------------------------------

    @workflow.update
    async def advance(self, command: LifecycleCommand) -> ApprovalRequest:
        """The bot reports the trade FILLED, CLOSED or SETTLED; anything else is SEC-030."""
        self._accepted(command.proof)
        await workflow.wait_condition(lambda: self._approval is not None)
        async with self._lock:
            approval = self._current
            if approval.status is command.target:
                return approval  # the same report twice
            ok, code = validate_transition(approval.status, command.target)
            if not ok:
                update = workflow.current_update_info()
                update_id = update.id if update else ""
                await self._short(
                    PersistenceActivities.record_audit,
                    RecordAuditInput(
                        actor_id=command.reported_by,
                        action="trade.transition_refused",
                        trade_id=approval.trade_id,
                        correlation_id=command.correlation_id,
                        previous_state=approval.status,
                        new_state=command.target,
                        error_code=code,
                        payload={"details": command.details},
                        idempotency_key=f"{approval.trade_id}:refused:{update_id}",
                    ),
                )
                _fail(
                    ErrorCode.INVALID_TRANSITION,
                    f"{approval.status.value} cannot become {command.target.value}",
                    approval.to_dict(),
                )
            try:
                self._approval = await self._short(
                    PersistenceActivities.record_transition,
                    RecordTransitionInput(
                        expected=approval,
                        target=command.target,
                        actor=command.reported_by,
                        correlation_id=command.correlation_id,
                        details=command.details,
                    ),
                    summary=f"record {command.target.value}",
                )
                self._publish()
            except (ActivityError, ApplicationError) as exc:
                # A local activity's failure arrives as its ApplicationError, a regular one's
                # wrapped in an ActivityError.
                cause = exc.cause if isinstance(exc, ActivityError) else exc
                if not (
                    isinstance(cause, ApplicationError)
                    and cause.type == ErrorCode.INTEGRITY_FAILURE.code
                ):
                    raise
                # The trade was accepted: it is not rewritten; the report is refused, the
                # operators alerted, and the workflow goes on for a human to look.
                await self._integrity_alert(
                    approval, "stored trade failed its integrity check; lifecycle report refused"
                )
                _fail(
                    ErrorCode.INTEGRITY_FAILURE,
                    f"stored trade {approval.trade_id} was altered; report refused",
                    approval.to_dict(),
                )
            return self._approval

    @advance.validator
    def _validate_advance(self, command: LifecycleCommand) -> None:
        self._check_proof(command.proof, CommandAction.ADVANCE, command, command.reported_by)
        self._accepted(command.proof)

    @workflow.update
    async def decision(self) -> ApprovalRequest:
        """Wait for the approval phase to end and return the approval: how a bot awaits it."""
        await workflow.wait_condition(
            lambda: self._approval is not None and self._approval.is_decided
        )
        return self._current

    @workflow.update(unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON)
    async def recorded(self) -> ApprovalRequest:
        """Wait until the request is stored and return it: how the API answers a new request.

        A start the worker refuses ends the run before anything is stored: this Update is then
        abandoned, and its caller reads the run's failure (SEC-092/093) instead."""
        await workflow.wait_condition(lambda: self._approval is not None)
        return self._current

    @workflow.query
    def current(self) -> ApprovalRequest | None:
        """The approval as the workflow holds it (None before it is recorded)."""
        return self._approval

    @workflow.query
    def snapshot(self) -> PostTradeSnapshot | None:
        """The post-trade snapshot, once captured."""
        return self._snapshot
