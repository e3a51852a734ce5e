"""The value objects: exact serialisation round trips and the validation they enforce."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from pydantic import ValidationError

from hitl.models import (
    ApprovalDecision,
    ApprovalRequest,
    Decision,
    DecisionChannel,
    Side,
    TradeProposal,
    TradeStatus,
)
from tests.strategies import approval_decisions, approval_requests, trade_proposals

PROPOSAL: dict[str, Any] = {
    "trade_id": "6f1c2e3a-0b4d-4e5f-8a9b-0c1d2e3f4a5b",
    "instrument": "EUR/USD",
    "side": "BUY",
    "risk_pct": "1.5",
    "confidence": "0.85",
    "request_price": "1.08765",
    "reasoning_summary": "Breakout above resistance",
    "correlation_id": "corr-0001",
}
REQUESTED_AT = datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
RECORD: dict[str, Any] = PROPOSAL | {
    "status": "AWAITING_APPROVAL",
    "requested_at": REQUESTED_AT,
    "expires_at": REQUESTED_AT + timedelta(seconds=300),
}
DECISION: dict[str, Any] = {
    "trade_id": PROPOSAL["trade_id"],
    "decision": "APPROVE",
    "operator_id": "alice",
    "channel": "API",
    "correlation_id": "corr-0001",
}


def _assert_identical(restored: ApprovalRequest, original: ApprovalRequest) -> None:
    assert restored == original
    # Equality of decimals ignores their spelling; "exactly" means the spelling survives too.
    assert restored.to_dict() == original.to_dict()
    for name in ApprovalRequest.model_fields:
        assert type(getattr(restored, name)) is type(getattr(original, name))
        assert str(getattr(restored, name)) == str(getattr(original, name))


# --- round trips ---------------------------------------------------------------------------


@given(record=approval_requests())
def test_to_dict_from_dict_round_trips_exactly(record: ApprovalRequest) -> None:
    _assert_identical(ApprovalRequest.from_dict(record.to_dict()), record)
    # The dict is JSON-safe: it survives being sent as text too.
    text = json.dumps(record.to_dict())
    _assert_identical(ApprovalRequest.from_dict(json.loads(text)), record)


@given(record=approval_requests())
def test_model_json_round_trips_exactly(record: ApprovalRequest) -> None:
    _assert_identical(ApprovalRequest.model_validate_json(record.model_dump_json()), record)


@given(proposal=trade_proposals())
def test_proposal_json_round_trips(proposal: TradeProposal) -> None:
    assert TradeProposal.model_validate_json(proposal.model_dump_json()) == proposal


@given(decision=approval_decisions())
def test_decision_json_round_trips(decision: ApprovalDecision) -> None:
    assert ApprovalDecision.model_validate_json(decision.model_dump_json()) == decision


def test_to_dict_renders_decimals_as_strings_and_datetimes_as_utc() -> None:
    data = ApprovalRequest.model_validate(RECORD).to_dict()
    assert data["request_price"] == "1.08765"
    assert data["requested_at"] == "2024-01-02T03:04:05.678901Z"
    assert data["status"] == "AWAITING_APPROVAL"
    assert data["trade_id"] == PROPOSAL["trade_id"]
    assert data["row_hash"] is None


# --- from_proposal and is_decided --------------------------------------------------------


@given(proposal=trade_proposals())
def test_from_proposal_awaits_approval_undecided(proposal: TradeProposal) -> None:
    record = ApprovalRequest.from_proposal(
        proposal, requested_at=REQUESTED_AT, expires_at=REQUESTED_AT + timedelta(seconds=300)
    )
    assert record.status is TradeStatus.AWAITING_APPROVAL
    assert record.model_dump(include=set(TradeProposal.model_fields)) == proposal.model_dump()
    assert not record.is_decided
    assert record.row_hash is None
    assert record.decided_by is None
    assert record.decision_channel is None
    assert record.decision_reason is None


@given(record=approval_requests())
def test_is_decided_follows_decided_at(record: ApprovalRequest) -> None:
    assert record.is_decided is (record.decided_at is not None)
    for stamp in (record.requested_at, record.expires_at, record.decided_at):
        assert stamp is None or stamp.tzinfo is UTC


# --- datetimes -----------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["requested_at", "expires_at", "decided_at"])
def test_naive_datetimes_are_refused(field: str) -> None:
    with pytest.raises(ValidationError, match="timezone"):
        ApprovalRequest.model_validate(RECORD | {field: datetime(2024, 1, 2, 3, 4, 5)})


def test_naive_iso_text_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        ApprovalRequest.model_validate(RECORD | {"requested_at": "2024-01-02T03:04:05"})


@pytest.mark.parametrize(
    "value",
    [
        datetime(2024, 1, 2, 5, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 1, 1, 22, 4, 5, 678901, tzinfo=timezone(timedelta(hours=-5))),
        "2024-01-02T08:34:05.678901+05:30",
        "2024-01-02T03:04:05.678901Z",
    ],
)
def test_datetimes_are_normalised_to_utc(value: datetime | str) -> None:
    record = ApprovalRequest.model_validate(RECORD | {"requested_at": value, "decided_at": value})
    for stamp in (record.requested_at, record.decided_at):
        assert stamp == REQUESTED_AT
        assert stamp is not None
        assert stamp.tzinfo is UTC
        assert stamp.utcoffset() == timedelta(0)


# --- decimals ------------------------------------------------------------------------------


@pytest.mark.parametrize("price", ["0", "-0.00000001", "-1", "0E-8"])
def test_non_positive_price_is_refused(price: str) -> None:
    with pytest.raises(ValidationError, match="request_price"):
        ApprovalRequest.model_validate(RECORD | {"request_price": Decimal(price)})
    with pytest.raises(ValidationError, match="request_price"):
        TradeProposal.model_validate(PROPOSAL | {"request_price": price})


@pytest.mark.parametrize("field", ["request_price", "risk_pct", "confidence"])
def test_more_than_8_places_is_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ApprovalRequest.model_validate(RECORD | {field: Decimal("0.123456789")})


def test_8_places_are_kept() -> None:
    record = ApprovalRequest.model_validate(RECORD | {"request_price": "0.00000001"})
    assert record.request_price == Decimal("0.00000001")


@pytest.mark.parametrize("price", ["12345678901", "99999999999.5"])
def test_more_than_10_integer_digits_is_refused(price: str) -> None:
    with pytest.raises(ValidationError, match="request_price"):
        ApprovalRequest.model_validate(RECORD | {"request_price": price})


def test_largest_numeric_18_8_price_is_accepted() -> None:
    record = ApprovalRequest.model_validate(RECORD | {"request_price": "9999999999.99999999"})
    assert record.request_price == Decimal("9999999999.99999999")


@pytest.mark.parametrize("confidence", ["1.00000001", "2", "-0.1"])
def test_confidence_outside_0_1_is_refused(confidence: str) -> None:
    with pytest.raises(ValidationError, match="confidence"):
        ApprovalRequest.model_validate(RECORD | {"confidence": confidence})


@pytest.mark.parametrize("confidence", ["0", "1", "0.5"])
def test_confidence_bounds_are_accepted(confidence: str) -> None:
    record = ApprovalRequest.model_validate(RECORD | {"confidence": confidence})
    assert record.confidence == Decimal(confidence)


@pytest.mark.parametrize("risk_pct", ["100.00000001", "-0.00000001"])
def test_risk_outside_0_100_is_refused(risk_pct: str) -> None:
    with pytest.raises(ValidationError, match="risk_pct"):
        ApprovalRequest.model_validate(RECORD | {"risk_pct": risk_pct})


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_decimals_are_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        ApprovalRequest.model_validate(RECORD | {"request_price": Decimal(value)})


# --- enums, strings, unknown fields --------------------------------------------------------


@pytest.mark.parametrize("side", ["buy", "HOLD", "", "LONG"])
def test_bad_side_is_refused(side: str) -> None:
    with pytest.raises(ValidationError, match="side"):
        TradeProposal.model_validate(PROPOSAL | {"side": side})
    with pytest.raises(ValidationError, match="side"):
        ApprovalRequest.model_validate(RECORD | {"side": side})


def test_sides_are_buy_and_sell() -> None:
    assert {side.value for side in Side} == {"BUY", "SELL"}


@pytest.mark.parametrize("status", ["pending", "APPROVED", "EXPIRED", ""])
def test_bad_status_is_refused(status: str) -> None:
    with pytest.raises(ValidationError, match="status"):
        ApprovalRequest.model_validate(RECORD | {"status": status})


@pytest.mark.parametrize("instrument", ["", "EUR USD", "BTC$", "x" * 65, "ÉUR/USD"])
def test_bad_instrument_is_refused(instrument: str) -> None:
    with pytest.raises(ValidationError, match="instrument"):
        TradeProposal.model_validate(PROPOSAL | {"instrument": instrument})


def test_reasoning_longer_than_2000_characters_is_refused() -> None:
    TradeProposal.model_validate(PROPOSAL | {"reasoning_summary": "x" * 2000})
    with pytest.raises(ValidationError, match="reasoning_summary"):
        TradeProposal.model_validate(PROPOSAL | {"reasoning_summary": "x" * 2001})


@pytest.mark.parametrize("correlation_id", ["", "c" * 129], ids=["empty", "129-characters"])
def test_proposal_correlation_id_must_fit_its_column(correlation_id: str) -> None:
    with pytest.raises(ValidationError, match="correlation_id"):
        TradeProposal.model_validate(PROPOSAL | {"correlation_id": correlation_id})


@pytest.mark.parametrize("correlation_id", ["", "c" * 129], ids=["empty", "129-characters"])
def test_stored_correlation_id_must_fit_its_column(correlation_id: str) -> None:
    # hitl_approvals.correlation_id is VARCHAR(128): PostgreSQL refuses a longer value that
    # SQLite would store, so the record itself must refuse it, as TradeProposal does.
    with pytest.raises(ValidationError, match="correlation_id"):
        ApprovalRequest.model_validate(RECORD | {"correlation_id": correlation_id})


@pytest.mark.parametrize(
    ("model", "data"),
    [(TradeProposal, PROPOSAL), (ApprovalRequest, RECORD), (ApprovalDecision, DECISION)],
)
def test_unknown_fields_are_refused(model: type[TradeProposal], data: dict[str, Any]) -> None:
    model.model_validate(data)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate(data | {"quantity": "1"})


def test_records_are_frozen() -> None:
    record = ApprovalRequest.model_validate(RECORD)
    with pytest.raises(ValidationError, match="frozen"):
        record.status = TradeStatus.ACCEPTED  # type: ignore[misc]


def test_bad_trade_id_is_refused() -> None:
    with pytest.raises(ValidationError, match="trade_id"):
        ApprovalRequest.model_validate(RECORD | {"trade_id": "not-a-uuid"})


# --- decisions ------------------------------------------------------------------------------


def test_decision_parses_its_payload() -> None:
    decision = ApprovalDecision.model_validate(DECISION | {"comment": "looks right"})
    assert decision.trade_id == UUID(PROPOSAL["trade_id"])
    assert decision.decision is Decision.APPROVE
    assert decision.channel is DecisionChannel.API
    assert decision.comment == "looks right"


@pytest.mark.parametrize(
    ("field", "value"),
    [("decision", "MAYBE"), ("channel", "EMAIL"), ("operator_id", ""), ("operator_id", "o" * 129)],
)
def test_bad_decision_is_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ApprovalDecision.model_validate(DECISION | {field: value})
