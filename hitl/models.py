"""The approval's value objects: what the bot proposes, what operators decide, what is stored.

Prices and percentages are ``Decimal`` everywhere; datetimes are timezone-aware UTC. These models
travel through Temporal with the pydantic data converter and are persisted by the activities.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Self
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from hitl.decimals import MAX_DIGITS, PLACES


class Side(StrEnum):
    """Direction of the proposed trade."""

    BUY = "BUY"
    SELL = "SELL"


class TradeStatus(StrEnum):
    """Every state of an approval and of the trade it gates (the lifecycle)."""

    PENDING = "PENDING"
    AWAITING_APPROVAL = "AWAITING_APPROVAL"
    ACCEPTED = "ACCEPTED"
    REJECTED = "REJECTED"
    FILLED = "FILLED"
    CLOSED = "CLOSED"
    SETTLED = "SETTLED"


class DecisionChannel(StrEnum):
    """Where a decision came from."""

    API = "API"
    DISCORD = "DISCORD"
    WEB = "WEB"
    SYSTEM = "SYSTEM"


class Decision(StrEnum):
    """What an operator asks for."""

    APPROVE = "APPROVE"
    REJECT = "REJECT"


class DecisionReason(StrEnum):
    """Why an approval ended the way it did; the operator's own words go in ``comment``."""

    OPERATOR_APPROVED = "OPERATOR_APPROVED"
    OPERATOR_REJECTED = "OPERATOR_REJECTED"
    HITL_TIMEOUT = "HITL_TIMEOUT"
    HITL_DISABLED = "HITL_DISABLED"
    SLIPPAGE_EXCEEDED = "SLIPPAGE_EXCEEDED"
    GUARDIAN_LOCK = "GUARDIAN_LOCK"
    INTEGRITY_FAILURE = "INTEGRITY_FAILURE"
    WORKFLOW_LOST = "WORKFLOW_LOST"
    """The approval's workflow ended or vanished without deciding it: closed by reconciliation."""


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware datetime, normalised to UTC; naive datetimes are refused."""

Price = Annotated[Decimal, Field(gt=0, max_digits=MAX_DIGITS, decimal_places=PLACES)]
"""A strictly positive price that fits NUMERIC(18,8)."""

Percent = Annotated[Decimal, Field(ge=0, le=100, max_digits=MAX_DIGITS, decimal_places=PLACES)]
"""A percentage between 0 and 100 with at most 8 places."""

Confidence = Annotated[Decimal, Field(ge=0, le=1, max_digits=MAX_DIGITS, decimal_places=PLACES)]
"""The bot's confidence between 0 and 1."""

Instrument = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")]
"""A market instrument symbol such as ``EUR/USD`` or ``BTC-PERP``."""

PrincipalId = Annotated[str, Field(min_length=1, max_length=128)]
"""The identity of an operator, a bot or the system."""

CorrelationId = Annotated[str, Field(min_length=1, max_length=128)]
"""The identifier tying a trade's logs, audit rows and events together (VARCHAR(128))."""

FreeText = Annotated[str, Field(max_length=2000)]
"""A human-written comment or reason."""


def _empty(value: Any) -> bool:
    return not value


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TradeProposal(_Frozen):
    """What the bot proposes: the trade that awaits a human decision."""

    trade_id: UUID
    instrument: Instrument
    side: Side
    risk_pct: Percent
    confidence: Confidence
    request_price: Price
    reasoning_summary: FreeText
    correlation_id: CorrelationId


class ApprovalRequest(TradeProposal):
    """The stored approval record: the proposal, its state, its decision and its row hash."""

    status: TradeStatus
    requested_at: UtcDatetime
    expires_at: UtcDatetime
    decided_at: UtcDatetime | None = None
    decided_by: PrincipalId | None = None
    decision_channel: DecisionChannel | None = None
    decision_reason: DecisionReason | None = None
    comment: FreeText | None = None
    approvers: Annotated[tuple[PrincipalId, ...], Field(exclude_if=_empty)] = ()
    """The operators who approved, in order, when the approval needed two (four eyes above
    ``HITL_FOUR_EYES_RISK_PCT``): one while it still awaits the second, both once ACCEPTED.
    Empty otherwise (``decided_by`` names the one decider); an empty tuple is left out of every
    dump, so records and payloads from before four eyes read, hash and MAC exactly as before."""
    row_hash: str | None = None

    @classmethod
    def from_proposal(
        cls, proposal: TradeProposal, *, requested_at: datetime, expires_at: datetime
    ) -> Self:
        """A new record awaiting approval for ``proposal`` (row hash not yet computed)."""
        return cls(
            **proposal.model_dump(),
            status=TradeStatus.AWAITING_APPROVAL,
            requested_at=requested_at,
            expires_at=expires_at,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (decimals as strings) that ``from_dict`` turns back exactly."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The record ``to_dict`` produced."""
        return cls.model_validate(data)

    @property
    def is_decided(self) -> bool:
        """Whether a decision (human or system) has been recorded."""
        return self.decided_at is not None


class ApprovalDecision(_Frozen):
    """An operator's decision on one approval, as delivered to the workflow."""

    trade_id: UUID
    decision: Decision
    operator_id: PrincipalId
    channel: DecisionChannel
    comment: FreeText | None = None
    """The operator's words: an approval's comment or a rejection's reason."""
    correlation_id: CorrelationId
