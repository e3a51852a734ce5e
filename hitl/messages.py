"""The typed messages between the API, the approval workflow and its activities.

One input model per workflow, update and activity, so fields can be added later without breaking
running histories. They live apart from the workflow module so that the workflow sandbox does not
re-import them for every run.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from hitl.market import MarketQuote
from hitl.models import (
    ApprovalRequest,
    CorrelationId,
    DecisionChannel,
    FreeText,
    PrincipalId,
    TradeProposal,
    TradeStatus,
    UtcDatetime,
)
from hitl.notices import NoticeKind
from hitl.signing import CommandProof

SYSTEM_ACTOR = "system"
"""The actor named for decisions and writes the gateway makes itself."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ApprovalPolicy(_Message):
    """The rules in force when the request was made, fixed for the workflow's whole life."""

    enabled: bool = True
    timeout_seconds: Annotated[int, Field(gt=0)] = 300
    slippage_max_percent: Annotated[Decimal, Field(ge=0)] = Decimal("0.5")
    allowed_operators: frozenset[str]
    remind_at_percent: Annotated[Decimal, Field(ge=0, lt=100)] = Decimal(50)
    """When, in percent of the window, the operators are reminded of an undecided approval
    (``HITL_REMIND_AT``); 0 sends no reminder. Policies recorded before this field read the
    default, but their histories never reach the reminders (``workflow.patched``)."""
    escalate_at_percent: Annotated[Decimal, Field(ge=0, lt=100)] = Decimal(80)
    """When, in percent of the window, an undecided approval is escalated
    (``HITL_ESCALATE_AT``); 0 never escalates."""
    four_eyes_risk_pct: Annotated[Decimal, Field(ge=0, lt=100)] | None = None
    """Above this risk an approval needs two different operators (``HITL_FOUR_EYES_RISK_PCT``,
    ``hitl.decisions.approvals_required``); None: one suffices. Policies recorded before this
    field read None."""


class ApprovalWorkflowInput(_Message):
    """What starts an approval: the bot's proposal, who proposed it, and the gateway's proof.

    The policy is the worker's (recorded in history at start); ``policy`` is only read when
    replaying histories recorded before that, and ignored in a new start that carries one.
    """

    proposal: TradeProposal
    requested_by: PrincipalId
    policy: ApprovalPolicy | None = None
    proof: CommandProof | None = None
    """The gateway's signature of this start (``hitl.signing``); unsigned starts are refused."""


class AdmitApprovalInput(_Message):
    """Ask the worker whether a start is the gateway's."""

    workflow_id: str
    start: ApprovalWorkflowInput


class ApprovalAdmission(_Message):
    """The worker's answer: a refusal's SEC code, or the policy the approval runs under (and,
    from ``approval-v9`` on, the request as stored under it)."""

    error_code: str | None = None
    policy: ApprovalPolicy | None = None
    approval: ApprovalRequest | None = None


class AdmitAndRecordInput(_Message):
    """Admit a start and, if it is the gateway's, store its request (``approval-v9``: one local
    activity where there were two)."""

    workflow_id: str
    start: ApprovalWorkflowInput
    requested_at: UtcDatetime
    """The workflow's time when it first ran: the request's time and its deadline's origin."""


def workflow_id_for(trade_id: UUID) -> str:
    """The one workflow id of a trade's approval, so a second start for it is refused."""
    return f"approval-{trade_id}"


def temporal_ui_link(ui_url: str, namespace: str, trade_id: UUID) -> str | None:
    """The approval's page in the Temporal Web UI at ``ui_url`` (``HITL_TEMPORAL_UI_URL``);
    None when no UI is configured."""
    base = ui_url.strip().rstrip("/")
    if not base:
        return None
    return f"{base}/namespaces/{namespace}/workflows/{workflow_id_for(trade_id)}"


def hub_page_link(hub_url: str, trade_id: UUID) -> str:
    """The approval on the operators' page (``HITL_HUB_URL``; the page's ``/approvals/{id}``
    route), without a deep link's one-time token: signing in is still needed to decide."""
    return f"{hub_url.rstrip('/')}/approvals/{trade_id}"


class DecisionCommand(_Message):
    """An operator's approve or reject, as sent in the workflow Update."""

    operator_id: PrincipalId
    channel: DecisionChannel
    comment: FreeText | None = None
    correlation_id: CorrelationId
    not_after: UtcDatetime | None = None
    """The caller stops waiting at this instant; a command still unapplied by then is refused
    (SEC-070), so a decision the API answered 503 for can never land later."""
    proof: CommandProof | None = None
    """The gateway's signature of this decision for this approval."""


class LifecycleCommand(_Message):
    """The bot reporting the trade's progress after acceptance (FILLED, CLOSED, SETTLED)."""

    target: TradeStatus
    reported_by: PrincipalId
    correlation_id: str
    details: dict[str, Any] = Field(default_factory=dict)
    """Fill data and the like, as the bot has it; recorded in the audit trail and event."""
    proof: CommandProof | None = None
    """The gateway's signature of this report for this approval."""


class RecordRequestInput(_Message):
    """Persist a new approval awaiting a decision."""

    approval: ApprovalRequest
    requested_by: PrincipalId
    notify: bool = False
    """Queue the operators' notice of the request with it (``NOTICE_OUTBOX``), if it is still
    awaiting a decision once stored."""


class RecordDecisionInput(_Message):
    """Persist the end of the approval phase, after checking the stored row is the one
    the workflow wrote (``expected``)."""

    expected: ApprovalRequest
    decided: ApprovalRequest
    event_type: str
    audit_payload: dict[str, Any] = Field(default_factory=dict)
    error_code: str | None = None
    notice: NoticeKind | None = None
    """The notice this change owes the operators (``NOTICE_OUTBOX``), queued with it when the
    outcome stored calls for it (:func:`hitl.notices.notice_due`)."""
    channel: DecisionChannel | None = None
    """The channel of the command making the change, which shows its own outcome."""


class DecisionRecorded(_Message):
    """What was stored; ``integrity_failure`` when the stored row had been tampered with and the
    approval was rejected with INTEGRITY_FAILURE instead."""

    approval: ApprovalRequest
    integrity_failure: bool = False
    guardian_blocked: bool = False
    """The Guardian was locked: the approval ended REJECTED with GUARDIAN_LOCK instead."""


class RecordTransitionInput(_Message):
    """Persist one lifecycle step after acceptance."""

    expected: ApprovalRequest
    target: TradeStatus
    actor: PrincipalId
    correlation_id: str
    details: dict[str, Any] = Field(default_factory=dict)


class RecordAuditInput(_Message):
    """A standalone audit entry, for refusals that change nothing else."""

    actor_id: PrincipalId
    action: str
    trade_id: UUID
    correlation_id: str
    previous_state: TradeStatus | None = None
    new_state: TradeStatus | None = None
    error_code: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str


class FetchQuoteInput(_Message):
    """Ask the market for the current top of book."""

    instrument: str
    correlation_id: str


class RecordSnapshotInput(_Message):
    """Persist the post-trade snapshot of an accepted approval."""

    approval: ApprovalRequest
    quote: MarketQuote


class PostTradeSnapshot(_Message):
    """The market context right after acceptance (the seed's Property 13)."""

    trade_id: UUID
    bid: Decimal
    ask: Decimal
    spread: Decimal
    mid_price: Decimal
    response_latency_ms: Decimal
    price_deviation_pct: Decimal
    correlation_id: str
    created_at: UtcDatetime


class AcceptanceRecorded(DecisionRecorded):
    """An acceptance as stored, with its post-trade snapshot (``approval-v9``: the decision and
    the snapshot in one local activity). ``snapshot`` is None when the outcome stored is not an
    acceptance, or when no quote came for the snapshot."""

    snapshot: PostTradeSnapshot | None = None


class NotifyInput(_Message):
    """Tell the operators about an approval (requested, expired, decided)."""

    approval: ApprovalRequest
    event: str


class ReminderKind(StrEnum):
    """What an undecided approval's timer fires: a reminder, then an escalation."""

    REMINDER = "reminder"
    ESCALATION = "escalation"

    @property
    def event_type(self) -> str:
        """Its outbox event (``hitl.reminded``, ``hitl.escalated``), which the page reacts to."""
        return "hitl.reminded" if self is ReminderKind.REMINDER else "hitl.escalated"

    @property
    def audit_action(self) -> str:
        """Its audit entry's action (``approval.reminder``, ``approval.escalation``)."""
        return f"approval.{self.value}"


class ReminderInput(_Message):
    """Remind (or escalate to) the operators of an approval still undecided at ``due_at``."""

    approval: ApprovalRequest
    kind: ReminderKind
    at_percent: Decimal
    """The point of the window it fires at (the policy's ``remind_at_percent`` or
    ``escalate_at_percent``)."""
    due_at: UtcDatetime


class SecurityAlertInput(_Message):
    """Raise a security alert (integrity failure) to the operators."""

    trade_id: UUID
    error_code: str
    message: str
    correlation_id: str
    detected_at: datetime


class GuardianCascadeSummary(_Message):
    """What one Guardian lock did: the one notification operators get for the whole cascade."""

    reason: str
    locked_by: PrincipalId
    locked_at: UtcDatetime
    rejected: int
    correlation_id: CorrelationId


class GuardianCommand(_Message):
    """Lock or unlock the Guardian."""

    reason: FreeText = ""
    by: PrincipalId
    correlation_id: CorrelationId
    proof: CommandProof | None = None
    """The gateway's signature of this lock or unlock."""


class GuardianCarry(_Message):
    """What the Guardian workflow carries into its next run (continue-as-new): the proofs it
    accepted that still hold, so none can be replayed across the new run."""

    seen: dict[str, UtcDatetime] = Field(default_factory=dict)


class GuardianStatus(_Message):
    """The Guardian as it stands."""

    locked: bool
    reason: str | None = None
    since: UtcDatetime | None = None
    changed_by: str | None = None
    version: int = 0


class GuardianLockNotice(_Message):
    """Sent to each approval a Guardian lock rejected (an Update, signed per approval)."""

    version: int
    reason: str
    locked_by: PrincipalId
    locked_at: UtcDatetime
    correlation_id: CorrelationId
    proof: CommandProof | None = None
    """The gateway's signature of this notice for one approval."""


class GuardianLockResult(_Message):
    """What engaging the lock did: the status, and the approvals it rejected."""

    status: GuardianStatus
    rejected: list[UUID] = Field(default_factory=list)


class GuardianFanOut(_Message):
    """Tell the approvals a lock rejected to finish."""

    notice: GuardianLockNotice
    trade_ids: list[UUID]


def guardian_workflow_id(task_queue: str) -> str:
    """The one Guardian workflow of a gateway (its task queue): it serialises locks and unlocks
    and fans each lock out."""
    return f"hitl-guardian-{task_queue}"
