"""Row hashing: Property 4 of the seed (row hash round-trip integrity), pure part."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hitl.decimals import QUANTUM
from hitl.hashing import ELIDED_WHEN_EMPTY, RowHasher
from hitl.models import (
    ApprovalRequest,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeStatus,
)
from tests.strategies import approval_field_strategies, approval_requests, shortest_spelling

DECIMAL_FIELDS = ("risk_pct", "confidence", "request_price")
DATETIME_FIELDS = ("requested_at", "expires_at", "decided_at")

FIXED_RECORD = ApprovalRequest(
    trade_id=UUID("6f1c2e3a-0b4d-4e5f-8a9b-0c1d2e3f4a5b"),
    instrument="EUR/USD",
    side=Side.BUY,
    risk_pct=Decimal("1.5"),
    confidence=Decimal("0.85"),
    request_price=Decimal("1.08765"),
    reasoning_summary="Breakout above résistance ☕",
    correlation_id="corr-0001",
    status=TradeStatus.ACCEPTED,
    requested_at=datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    expires_at=datetime(2024, 1, 2, 3, 9, 5, 678901, tzinfo=UTC),
    decided_at=datetime(2024, 1, 2, 3, 5, 0, tzinfo=UTC),
    decided_by="alice",
    decision_channel=DecisionChannel.DISCORD,
    decision_reason=DecisionReason.OPERATOR_APPROVED,
    comment=None,
)

FIXED_CANONICAL_JSON = (
    '{"comment":null,"confidence":"0.85000000","correlation_id":"corr-0001",'
    '"decided_at":"2024-01-02T03:05:00.000000+00:00","decided_by":"alice",'
    '"decision_channel":"DISCORD","decision_reason":"OPERATOR_APPROVED",'
    '"expires_at":"2024-01-02T03:09:05.678901+00:00","instrument":"EUR/USD",'
    '"reasoning_summary":"Breakout above r\\u00e9sistance \\u2615",'
    '"request_price":"1.08765000","requested_at":"2024-01-02T03:04:05.678901+00:00",'
    '"risk_pct":"1.50000000","side":"BUY","status":"ACCEPTED",'
    '"trade_id":"6f1c2e3a-0b4d-4e5f-8a9b-0c1d2e3f4a5b"}'
)

# Computed once from FIXED_CANONICAL_JSON. If this changes, every stored row hash in every
# database stops verifying: change the canonical form only with a migration that rehashes.
FIXED_ROW_HASH = "705c80b5e9fcfd786cd5522d01c0018b45d189ae0b7c2a2ac02330f10b5f52a4"

fixed_offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


def _respell(value: Decimal, *, shortest: bool) -> Decimal:
    return shortest_spelling(value) if shortest else value.quantize(QUANTUM)


# --- the canonical form, pinned ------------------------------------------------------------


def test_known_answer_canonical_json() -> None:
    assert RowHasher.canonical_json(FIXED_RECORD) == FIXED_CANONICAL_JSON


def test_known_answer_row_hash() -> None:
    assert RowHasher.compute(FIXED_RECORD) == FIXED_ROW_HASH
    assert hashlib.sha256(FIXED_CANONICAL_JSON.encode("ascii")).hexdigest() == FIXED_ROW_HASH
    assert RowHasher.verify(FIXED_RECORD, FIXED_ROW_HASH)


def test_canonical_json_excludes_row_hash_and_sorts_keys() -> None:
    hashed = FIXED_RECORD.model_copy(update={"row_hash": RowHasher.compute(FIXED_RECORD)})
    text = RowHasher.canonical_json(hashed)
    assert text == RowHasher.canonical_json(FIXED_RECORD)
    payload = json.loads(text)
    assert "row_hash" not in payload
    assert list(payload) == sorted(payload)
    # An empty field added later (four eyes' approvers) is left out: old rows hash as before.
    assert set(payload) == set(ApprovalRequest.model_fields) - {"row_hash", "approvers"}
    assert text == json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert text.isascii()


@given(record=approval_requests())
def test_canonical_json_is_sorted_ascii_without_row_hash(record: ApprovalRequest) -> None:
    text = RowHasher.canonical_json(record)
    payload = json.loads(text)
    empty = {name for name in ELIDED_WHEN_EMPTY if not getattr(record, name)}
    assert list(payload) == sorted(set(ApprovalRequest.model_fields) - {"row_hash"} - empty)
    assert text.isascii()
    assert text == json.dumps(payload, sort_keys=True, separators=(",", ":"))
    digest = RowHasher.compute(record)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert digest == hashlib.sha256(text.encode("ascii")).hexdigest()


def test_naive_datetime_cannot_be_hashed() -> None:
    values = FIXED_RECORD.model_dump() | {"requested_at": datetime(2024, 1, 2, 3, 4, 5)}
    with pytest.raises(ValueError, match="timezone-aware"):
        RowHasher.compute(values)


# --- Property 4: round trips keep the hash ------------------------------------------------


@given(record=approval_requests(hashed=True))
def test_property_4_row_hash_round_trip_integrity(record: ApprovalRequest) -> None:
    expected = RowHasher.compute(record)
    assert record.row_hash == expected
    assert RowHasher.verify(record)

    through_dict = ApprovalRequest.from_dict(record.to_dict())
    through_json_text = ApprovalRequest.from_dict(json.loads(json.dumps(record.to_dict())))
    through_model_json = ApprovalRequest.model_validate_json(record.model_dump_json())
    through_python = ApprovalRequest.model_validate(record.model_dump())

    for copy in (through_dict, through_json_text, through_model_json, through_python):
        assert RowHasher.compute(copy) == expected
        assert RowHasher.verify(copy)
        assert RowHasher.verify(copy, expected)
    # A plain mapping of the record's values (what a database row hands over) verifies too.
    assert RowHasher.verify(record.model_dump())


@given(record=approval_requests(), shortest=st.booleans())
def test_property_4_decimal_spelling_does_not_change_the_hash(
    record: ApprovalRequest, shortest: bool
) -> None:
    respelled = {
        name: _respell(getattr(record, name), shortest=shortest) for name in DECIMAL_FIELDS
    }
    assert RowHasher.compute(record.model_copy(update=respelled)) == RowHasher.compute(record)
    validated = ApprovalRequest.model_validate(record.model_dump() | respelled)
    assert RowHasher.compute(validated) == RowHasher.compute(record)


def test_one_and_a_half_hashes_like_its_8_place_spelling() -> None:
    short = FIXED_RECORD.model_copy(update={"risk_pct": Decimal("1.5")})
    long = FIXED_RECORD.model_copy(update={"risk_pct": Decimal("1.50000000")})
    scientific = FIXED_RECORD.model_copy(update={"risk_pct": Decimal("15E-1")})
    assert RowHasher.compute(short) == RowHasher.compute(long) == RowHasher.compute(scientific)


def test_negative_zero_hashes_like_zero() -> None:
    # ApprovalRequest accepts Decimal("-0") for a percentage; PostgreSQL NUMERIC has no negative
    # zero and hands back 0, so both must hash alike or the stored row fails verification.
    minus = ApprovalRequest.model_validate(
        FIXED_RECORD.model_dump() | {"risk_pct": Decimal("-0"), "confidence": Decimal("-0.0")}
    )
    plus = FIXED_RECORD.model_copy(update={"risk_pct": Decimal(0), "confidence": Decimal(0)})
    assert minus == plus
    assert RowHasher.compute(minus) == RowHasher.compute(plus)


@given(record=approval_requests(), zone=fixed_offsets)
def test_property_4_same_instant_in_another_timezone_hashes_alike(
    record: ApprovalRequest, zone: timezone
) -> None:
    moved: dict[str, Any] = {
        name: getattr(record, name).astimezone(zone)
        for name in DATETIME_FIELDS
        if getattr(record, name) is not None
    }
    # model_copy skips validation: the hasher itself must normalise the timezone.
    assert RowHasher.compute(record.model_copy(update=moved)) == RowHasher.compute(record)
    validated = ApprovalRequest.model_validate(record.model_dump() | moved)
    assert RowHasher.compute(validated) == RowHasher.compute(record)


# --- Property 4: any tampering is detected ------------------------------------------------


@given(record=approval_requests(hashed=True), data=st.data())
def test_property_4_any_single_changed_field_fails_verify(
    record: ApprovalRequest, data: st.DataObject
) -> None:
    strategies = approval_field_strategies()
    name = data.draw(st.sampled_from(sorted(strategies)), label="field")
    old = getattr(record, name)
    new = data.draw(strategies[name].filter(lambda value: value != old), label="new value")
    changed = ApprovalRequest.model_validate(record.model_dump() | {name: new})

    assert changed.row_hash == record.row_hash
    assert not RowHasher.verify(changed)
    assert not RowHasher.verify(changed, record.row_hash)
    assert not RowHasher.verify(changed.model_dump())
    assert RowHasher.compute(changed) != record.row_hash


def test_every_stored_field_is_covered_by_the_tampering_property() -> None:
    assert set(approval_field_strategies()) == set(ApprovalRequest.model_fields) - {"row_hash"}


@given(record=approval_requests(hashed=True), data=st.data())
def test_a_changed_hash_fails_verify(record: ApprovalRequest, data: st.DataObject) -> None:
    digest = record.row_hash
    assert digest is not None
    position = data.draw(st.integers(0, len(digest) - 1))
    digit = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != digest[position]))
    forged = digest[:position] + digit + digest[position + 1 :]
    assert not RowHasher.verify(record, forged)


@pytest.mark.parametrize("stored", [None, ""])
def test_verify_without_a_hash_is_false(stored: str | None) -> None:
    assert FIXED_RECORD.row_hash is None
    assert not RowHasher.verify(FIXED_RECORD, stored)
    assert not RowHasher.verify(FIXED_RECORD.model_dump(), stored)
    unhashed_with_empty = FIXED_RECORD.model_copy(update={"row_hash": ""})
    assert not RowHasher.verify(unhashed_with_empty)


def test_verify_accepts_the_right_hash_and_refuses_its_uppercase() -> None:
    digest = RowHasher.compute(FIXED_RECORD)
    assert RowHasher.verify(FIXED_RECORD, digest)
    assert not RowHasher.verify(FIXED_RECORD, digest.upper())


@pytest.mark.parametrize(
    "forged", ["ü" * 64, "é", "0" * 63 + "é"], ids=["all-non-ascii", "short", "last-char"]
)
def test_verify_refuses_a_non_ascii_stored_hash_without_raising(forged: str) -> None:
    # A tampered row_hash column may hold anything; verify must answer False, not raise
    # (hmac.compare_digest raises TypeError on non-ASCII str).
    assert RowHasher.verify(FIXED_RECORD, forged) is False
    assert RowHasher.verify(FIXED_RECORD.model_copy(update={"row_hash": forged})) is False


def test_approvers_are_hashed_once_there_are_any() -> None:
    # Four eyes: a record with approvers hashes them; an empty tuple hashes as before it existed.
    approved = FIXED_RECORD.model_copy(update={"approvers": ("alice",)})
    assert '"approvers":["alice"]' in RowHasher.canonical_json(approved)
    assert RowHasher.compute(approved) != RowHasher.compute(FIXED_RECORD)
    assert RowHasher.compute(FIXED_RECORD) == FIXED_ROW_HASH
    as_row = {**FIXED_RECORD.model_dump(), "approvers": None}
    assert RowHasher.compute(as_row) == FIXED_ROW_HASH
