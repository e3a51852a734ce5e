"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, computed_field

from hitl.decisions import FOUR_EYES
from hitl.messages import PostTradeSnapshot
from hitl.models import (
    ApprovalRequest,
    CorrelationId,
    DecisionChannel,
    DecisionReason,
    PrincipalId,
    Side,
    TradeProposal,
    TradeStatus,
)
from hitl.preview import SlippagePreview
from hitl.text_rules import Details, SafeText


class _Body(BaseModel):
    # Unknown fields are refused: a typo must not silently drop a value.
    model_config = ConfigDict(extra="forbid")


class CreateApprovalBody(TradeProposal):
    """The bot's proposal; unknown fields are refused."""

    reasoning_summary: SafeText
    """At most 2000 characters; control and bidirectional-override characters are refused."""
    correlation_id: CorrelationId | None = None  # type: ignore[assignment]
    """Defaults to the request's X-Correlation-ID (or a new one)."""


_CHANNEL = Field(
    default=None,
    json_schema_extra={"deprecated": True},
    description="Ignored unless it names the channel the route records (API for /api/hitl/…,"
    " WEB for the operators' page's /approvals/…); any other value is refused (SEC-003).",
)


class ApproveBody(_Body):
    """An approval; ``approved_by``, if given, must be the authenticated operator."""

    approved_by: PrincipalId | None = None
    channel: DecisionChannel | None = _CHANNEL
    comment: SafeText | None = None
    """At most 2000 characters; control and bidirectional-override characters are refused."""


class RejectBody(_Body):
    """A rejection; ``rejected_by``, if given, must be the authenticated operator."""

    rejected_by: PrincipalId | None = None
    channel: DecisionChannel | None = _CHANNEL
    reason: SafeText | None = None
    """At most 2000 characters; control and bidirectional-override characters are refused."""


class DecisionResult(BaseModel):
    """The outcome of a decision: definitive, or (202, four eyes) a first approval recorded
    while the approval, still ``AWAITING_APPROVAL``, waits for a second, different operator."""

    status: TradeStatus
    trade_id: UUID
    decided_at: datetime | None
    decided_by: str | None
    decision_reason: DecisionReason | None
    correlation_id: str
    approvers: list[str] = []
    """The operators who approved so far, in order, when the approval needs two (risk above
    the worker's ``HITL_FOUR_EYES_RISK_PCT``); empty when one operator decides alone."""
    approvals_required: int = 1
    """How many different operators must approve: 2 above the four-eyes risk level."""

    @classmethod
    def of(cls, approval: ApprovalRequest) -> DecisionResult:
        """The outcome ``approval`` records."""
        return cls(
            status=approval.status,
            trade_id=approval.trade_id,
            decided_at=approval.decided_at,
            decided_by=approval.decided_by,
            decision_reason=approval.decision_reason,
            correlation_id=approval.correlation_id,
            approvers=list(approval.approvers),
            approvals_required=FOUR_EYES if approval.approvers else 1,
        )


class LifecycleBody(_Body):
    """A fill, close or settlement report, with whatever data the bot has."""

    details: Details = {}
    """At most 8 KiB as JSON, 4 levels deep, keys of at most 64 characters; control and
    bidirectional-override characters are refused in keys and strings."""


class PendingApproval(BaseModel):
    """One approval awaiting a decision, as operators see it."""

    trade_id: UUID
    instrument: str
    side: Side
    risk_pct: Decimal
    confidence: Decimal
    request_price: Decimal
    requested_at: datetime
    expires_at: datetime
    seconds_remaining: float
    reasoning_summary: str
    correlation_id: str
    integrity_ok: bool
    """False when the stored row fails its hash (SEC-080): never show such a row as sound."""
    approvers: list[str] = []
    """The operators who approved so far when it needs two (four eyes above the worker's
    ``HITL_FOUR_EYES_RISK_PCT``): one while it waits for a second, different operator."""
    escalated: bool = False
    """Still undecided at ``HITL_ESCALATE_AT`` of its window, so escalated to the operators
    (the page's badge; the ``hitl.escalated`` event says it live)."""


class ApprovalDetail(BaseModel):
    """The full record: request, decision, lifecycle state and post-trade snapshot.

    ``GET /api/hitl/{trade_id}`` and ``POST /api/hitl/requests`` both answer it. The record is in
    ``approval``; where it stands (status, deadline, decision and why) is repeated at the top
    level, so that a bot reads ``status`` and ``decision_reason`` of either answer alike.
    """

    approval: ApprovalRequest
    integrity_ok: bool
    snapshot: PostTradeSnapshot | None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def trade_id(self) -> UUID:
        """The trade."""
        return self.approval.trade_id

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> TradeStatus:
        """Where the approval stands."""
        return self.approval.status

    @computed_field  # type: ignore[prop-decorator]
    @property
    def requested_at(self) -> datetime:
        """When the request was recorded."""
        return self.approval.requested_at

    @computed_field  # type: ignore[prop-decorator]
    @property
    def expires_at(self) -> datetime:
        """The deadline of the decision."""
        return self.approval.expires_at

    @computed_field  # type: ignore[prop-decorator]
    @property
    def decided_at(self) -> datetime | None:
        """When it was decided (None while it awaits a decision)."""
        return self.approval.decided_at

    @computed_field  # type: ignore[prop-decorator]
    @property
    def decided_by(self) -> str | None:
        """Who decided: an operator, or ``system`` (HITL off, deadline, Guardian, slippage)."""
        return self.approval.decided_by

    @computed_field  # type: ignore[prop-decorator]
    @property
    def decision_reason(self) -> DecisionReason | None:
        """Why it ended as it did (None while it awaits a decision)."""
        return self.approval.decision_reason

    @computed_field  # type: ignore[prop-decorator]
    @property
    def correlation_id(self) -> str:
        """The approval's correlation id."""
        return self.approval.correlation_id

    @computed_field  # type: ignore[prop-decorator]
    @property
    def approvers(self) -> list[str]:
        """The operators who approved so far when it needs two (four eyes), in order."""
        return list(self.approval.approvers)

    @property
    def awaiting(self) -> bool:
        """Whether it still awaits a decision (what ``?wait=`` waits for to end)."""
        return not self.approval.is_decided


class UnavailablePreview(BaseModel):
    """A pending approval whose instrument had no quote (SEC-060), and why."""

    trade_id: UUID
    instrument: str
    error_code: str
    message: str


class PendingPreviews(BaseModel):
    """The slippage previews of the approvals awaiting a decision, soonest deadline first."""

    items: list[SlippagePreview]
    unavailable: list[UnavailablePreview]
