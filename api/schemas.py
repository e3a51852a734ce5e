"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

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


class CreatedApproval(BaseModel):
    """A request now awaiting a decision."""

    trade_id: UUID
    status: TradeStatus
    requested_at: datetime
    expires_at: datetime
    correlation_id: str


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
    """The definitive outcome of a decision."""

    status: TradeStatus
    trade_id: UUID
    decided_at: datetime | None
    decided_by: str | None
    decision_reason: DecisionReason | None
    correlation_id: str

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


class ApprovalDetail(BaseModel):
    """The full record: request, decision, lifecycle state and post-trade snapshot."""

    approval: ApprovalRequest
    integrity_ok: bool
    snapshot: PostTradeSnapshot | None
