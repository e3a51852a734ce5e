"""The persistence activities on PostgreSQL and SQLite: idempotent under Temporal's retries, one
transaction per change (row, audit entry and outbox event together), and tamper-evident (SEC-080).

Every activity runs through ``ActivityEnvironment``, as the worker would run it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.persistence import PersistenceActivities
from hitl.decimals import PLACES, QUANTUM
from hitl.errors import ErrorCode
from hitl.hashing import RowHasher
from hitl.market import MarketQuote
from hitl.messages import (
    DecisionRecorded,
    PostTradeSnapshot,
    RecordAuditInput,
    RecordDecisionInput,
    RecordRequestInput,
    RecordSnapshotInput,
    RecordTransitionInput,
)
from hitl.models import (
    ApprovalRequest,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeProposal,
    TradeStatus,
)
from store.engine import session_factory
from store.tables import (
    ApprovalRow,
    AuditRow,
    EventRow,
    PostTradeSnapshotRow,
    approval_from_row,
    snapshot_from_row,
)
from tests.strategies import approval_requests, decimals8

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
DECIDED_AT = NOW + timedelta(seconds=42, microseconds=123457)
BOT = "bot-1"
OPERATOR = "alice"
SEC_030 = ErrorCode.INVALID_TRANSITION.code
SEC_080 = ErrorCode.INTEGRITY_FAILURE.code

Sessions = async_sessionmaker[AsyncSession]


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    """Sessions on the test database, as ``worker.py`` builds them."""
    return session_factory(engine, writer=True)


@pytest.fixture
def store(sessions: Sessions) -> PersistenceActivities:
    """The activities under test."""
    return PersistenceActivities(sessions)


def _approval(**overrides: Any) -> ApprovalRequest:
    """A new approval awaiting a decision, for a trade of its own."""
    proposal = TradeProposal(
        trade_id=uuid.uuid4(),
        instrument="EUR/USD",
        side=Side.BUY,
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.75"),
        request_price=Decimal("1.08421"),
        reasoning_summary="breakout above resistance",
        correlation_id=f"corr-{uuid.uuid4()}",
    )
    approval = ApprovalRequest.from_proposal(
        proposal, requested_at=NOW, expires_at=NOW + timedelta(minutes=5)
    )
    return approval.model_copy(update=overrides)


def _decision(
    expected: ApprovalRequest,
    *,
    status: TradeStatus = TradeStatus.ACCEPTED,
    reason: DecisionReason = DecisionReason.OPERATOR_APPROVED,
    by: str = OPERATOR,
    channel: DecisionChannel = DecisionChannel.API,
    event_type: str = "hitl.decided",
) -> RecordDecisionInput:
    """What the workflow sends to end the approval phase of ``expected``."""
    decided = expected.model_copy(
        update={
            "status": status,
            "decided_at": DECIDED_AT,
            "decided_by": by,
            "decision_channel": channel,
            "decision_reason": reason,
            "comment": "looks right",
        }
    )
    return RecordDecisionInput(
        expected=expected,
        decided=decided,
        event_type=event_type,
        audit_payload={"market": {"bid": "1.08420000", "ask": "1.08422000"}},
    )


def _transition(expected: ApprovalRequest, target: TradeStatus) -> RecordTransitionInput:
    return RecordTransitionInput(
        expected=expected,
        target=target,
        actor=BOT,
        correlation_id=expected.correlation_id,
        details={"fill_price": "1.08425"},
    )


def _quote(
    *, bid: Decimal = Decimal("1.0842"), ask: Decimal = Decimal("1.0843"), latency: Decimal
) -> MarketQuote:
    return MarketQuote(
        instrument="EUR/USD", bid=bid, ask=ask, as_of=NOW, response_latency_ms=latency
    )


async def _record_request(
    store: PersistenceActivities, approval: ApprovalRequest
) -> ApprovalRequest:
    data = RecordRequestInput(approval=approval, requested_by=BOT)
    return await ActivityEnvironment().run(store.record_request, data)


async def _record_decision(
    store: PersistenceActivities, data: RecordDecisionInput
) -> DecisionRecorded:
    return await ActivityEnvironment().run(store.record_decision, data)


async def _record_transition(
    store: PersistenceActivities, data: RecordTransitionInput
) -> ApprovalRequest:
    return await ActivityEnvironment().run(store.record_transition, data)


async def _record_snapshot(
    store: PersistenceActivities, data: RecordSnapshotInput
) -> PostTradeSnapshot:
    return await ActivityEnvironment().run(store.record_snapshot, data)


async def _accepted(store: PersistenceActivities, **overrides: Any) -> ApprovalRequest:
    """A stored approval an operator accepted, as the workflow then holds it."""
    requested = await _record_request(store, _approval(**overrides))
    return (await _record_decision(store, _decision(requested))).approval


# A new session for every read: its identity map is empty, so what it returns is what the
# database holds, not what an activity left in memory.


async def _approval_rows(sessions: Sessions, trade_id: uuid.UUID) -> list[ApprovalRow]:
    async with sessions() as session:
        query = select(ApprovalRow).where(ApprovalRow.trade_id == trade_id)
        return list(await session.scalars(query))


async def _stored(sessions: Sessions, trade_id: uuid.UUID) -> ApprovalRequest:
    (row,) = await _approval_rows(sessions, trade_id)
    return approval_from_row(row)


async def _audit_rows(sessions: Sessions, trade_id: uuid.UUID) -> list[AuditRow]:
    async with sessions() as session:
        query = select(AuditRow).where(AuditRow.target_id == str(trade_id)).order_by(AuditRow.id)
        return list(await session.scalars(query))


async def _event_rows(sessions: Sessions, trade_id: uuid.UUID) -> list[EventRow]:
    async with sessions() as session:
        query = select(EventRow).where(EventRow.trade_id == trade_id).order_by(EventRow.id)
        return list(await session.scalars(query))


async def _snapshot_rows(sessions: Sessions, trade_id: uuid.UUID) -> list[PostTradeSnapshotRow]:
    async with sessions() as session:
        query = (
            select(PostTradeSnapshotRow)
            .join(ApprovalRow, PostTradeSnapshotRow.approval_id == ApprovalRow.id)
            .where(ApprovalRow.trade_id == trade_id)
        )
        return list(await session.scalars(query))


def _ids(rows: list[AuditRow] | list[EventRow]) -> list[int]:
    return [row.id for row in rows]


def _actions(audits: list[AuditRow]) -> list[str]:
    return [audit.action for audit in audits]


def _event_types(events: list[EventRow]) -> list[str]:
    return [event.event_type for event in events]


def _sample(name: str, labels: Mapping[str, str] | None = None) -> float:
    """A metric's current value in this process; a labelled child not yet created counts 0."""
    value = REGISTRY.get_sample_value(name, dict(labels) if labels else None)
    return 0.0 if value is None else float(value)


def _assert_eight_places(*values: Decimal) -> None:
    for value in values:
        assert value.as_tuple().exponent == -PLACES, f"{value} does not have {PLACES} places"


async def _tamper(engine: AsyncEngine, trade_id: uuid.UUID, **values: Any) -> None:
    """Change a stored approval behind the gateway's back, as a console session could."""
    async with engine.begin() as conn:
        await conn.execute(
            update(ApprovalRow).where(ApprovalRow.trade_id == trade_id).values(**values)
        )


TAMPERINGS = ("content", "content_and_hash", "unreadable")
"""How a stored row is altered: a field only (its hash no longer matches); a field and the hash
recomputed to match (only the workflow's copy tells); a value no record may hold (the row no
longer even reads as an approval)."""

UNREADABLE_INSTRUMENT = "EUR USD"  # a space: refused by hitl.models.Instrument


async def _apply_tampering(
    engine: AsyncEngine, sessions: Sessions, stored: ApprovalRequest, kind: str
) -> dict[str, Any]:
    """Alter ``stored`` in the database the way ``kind`` names; returns the values written."""
    values: dict[str, Any]
    if kind == "content":
        values = {"request_price": stored.request_price * 2}
    elif kind == "content_and_hash":
        forged = stored.model_copy(update={"request_price": stored.request_price * 2})
        values = {"request_price": forged.request_price, "row_hash": RowHasher.compute(forged)}
    else:
        values = {"instrument": UNREADABLE_INSTRUMENT}
    await _tamper(engine, stored.trade_id, **values)
    if kind == "content_and_hash":
        # The forged row is self-consistent: only the comparison with the workflow's copy
        # can catch it.
        assert RowHasher.verify(await _stored(sessions, stored.trade_id))
    return values


def _assert_found_row_kept(found_row: dict[str, Any], kind: str, values: dict[str, Any]) -> None:
    if kind == "unreadable":
        assert found_row["instrument"] == UNREADABLE_INSTRUMENT
    else:
        assert Decimal(found_row["request_price"]) == values["request_price"]


# ---------------------------------------------------------------------------------------------
# Idempotency: Temporal may run any activity twice; the second run must add nothing.
# ---------------------------------------------------------------------------------------------


async def test_record_request_twice_leaves_one_row_one_audit_entry_one_event(
    sessions: Sessions, store: PersistenceActivities
) -> None:
    approval = _approval()
    requests_before = _sample("hitl_requests_total")

    first = await _record_request(store, approval)
    second = await _record_request(store, approval)

    assert second == first
    assert first == approval.model_copy(update={"row_hash": RowHasher.compute(approval)})
    assert RowHasher.verify(first)
    assert await _stored(sessions, approval.trade_id) == first

    (audit,) = await _audit_rows(sessions, approval.trade_id)
    assert audit.action == "approval.requested"
    assert audit.actor_id == BOT
    assert (audit.previous_state, audit.new_state) == ("PENDING", "AWAITING_APPROVAL")
    assert audit.correlation_id == approval.correlation_id
    assert ApprovalRequest.from_dict(audit.payload) == first

    (event,) = await _event_rows(sessions, approval.trade_id)
    assert event.event_type == "hitl.created"
    assert event.correlation_id == approval.correlation_id
    assert ApprovalRequest.from_dict(event.payload) == first

    assert _sample("hitl_requests_total") - requests_before == 1


@pytest.mark.parametrize(
    ("status", "reason", "channel", "event_type", "metric", "labels", "human"),
    [
        pytest.param(
            TradeStatus.ACCEPTED,
            DecisionReason.OPERATOR_APPROVED,
            DecisionChannel.DISCORD,
            "hitl.decided",
            "hitl_approvals_total",
            None,
            True,
            id="approved",
        ),
        pytest.param(
            TradeStatus.REJECTED,
            DecisionReason.OPERATOR_REJECTED,
            DecisionChannel.WEB,
            "hitl.decided",
            "hitl_rejections_total",
            {"reason": "OPERATOR_REJECTED"},
            True,
            id="rejected",
        ),
        pytest.param(
            TradeStatus.REJECTED,
            DecisionReason.HITL_TIMEOUT,
            DecisionChannel.SYSTEM,
            "hitl.expired",
            "hitl_rejections_total",
            {"reason": "HITL_TIMEOUT"},
            False,
            id="expired",
        ),
    ],
)
async def test_record_decision_twice_records_one_decision(
    sessions: Sessions,
    store: PersistenceActivities,
    status: TradeStatus,
    reason: DecisionReason,
    channel: DecisionChannel,
    event_type: str,
    metric: str,
    labels: dict[str, str] | None,
    human: bool,
) -> None:
    requested = await _record_request(store, _approval())
    by = OPERATOR if human else "system"
    data = _decision(
        requested, status=status, reason=reason, by=by, channel=channel, event_type=event_type
    )
    counted_before = _sample(metric, labels)
    latencies_before = _sample("hitl_response_latency_seconds_count")

    first = await _record_decision(store, data)
    second = await _record_decision(store, data)

    assert second == first
    assert not first.integrity_failure
    decided = first.approval
    assert decided == data.decided.model_copy(update={"row_hash": RowHasher.compute(data.decided)})
    assert RowHasher.verify(decided)
    assert await _stored(sessions, requested.trade_id) == decided

    audits = await _audit_rows(sessions, requested.trade_id)
    assert _actions(audits) == ["approval.requested", "approval.decided"]
    audit = audits[1]
    assert audit.actor_id == by
    assert (audit.previous_state, audit.new_state) == ("AWAITING_APPROVAL", status.value)
    assert audit.error_code is None
    assert audit.payload["market"] == data.audit_payload["market"]
    assert ApprovalRequest.from_dict(audit.payload["approval"]) == decided

    events = await _event_rows(sessions, requested.trade_id)
    assert _event_types(events) == ["hitl.created", event_type]
    assert ApprovalRequest.from_dict(events[1].payload) == decided

    assert _sample(metric, labels) - counted_before == 1
    # Only human decisions feed the response-time histogram, and only once.
    assert _sample("hitl_response_latency_seconds_count") - latencies_before == int(human)


async def test_record_transition_twice_moves_the_trade_once(
    sessions: Sessions, store: PersistenceActivities
) -> None:
    accepted = await _accepted(store)
    data = _transition(accepted, TradeStatus.FILLED)

    first = await _record_transition(store, data)
    second = await _record_transition(store, data)

    assert second == first
    filled = accepted.model_copy(update={"status": TradeStatus.FILLED})
    assert first == filled.model_copy(update={"row_hash": RowHasher.compute(filled)})
    assert RowHasher.verify(first)
    assert await _stored(sessions, accepted.trade_id) == first

    audits = await _audit_rows(sessions, accepted.trade_id)
    assert _actions(audits) == ["approval.requested", "approval.decided", "trade.transitioned"]
    moved = audits[2]
    assert (moved.previous_state, moved.new_state) == ("ACCEPTED", "FILLED")
    assert moved.actor_id == BOT
    assert moved.payload["details"] == data.details
    assert ApprovalRequest.from_dict(moved.payload["approval"]) == first

    events = await _event_rows(sessions, accepted.trade_id)
    assert _event_types(events) == ["hitl.created", "hitl.decided", "hitl.lifecycle"]
    assert ApprovalRequest.from_dict(events[2].payload) == first


async def test_record_snapshot_twice_keeps_one_snapshot(
    sessions: Sessions, store: PersistenceActivities
) -> None:
    accepted = await _accepted(store)
    data = RecordSnapshotInput(approval=accepted, quote=_quote(latency=Decimal("12.5")))

    first = await _record_snapshot(store, data)
    second = await _record_snapshot(store, data)

    assert second == first
    (row,) = await _snapshot_rows(sessions, accepted.trade_id)
    assert snapshot_from_row(row, trade_id=accepted.trade_id) == first


async def test_record_audit_twice_with_one_key_writes_one_entry(
    sessions: Sessions, store: PersistenceActivities
) -> None:
    trade_id = uuid.uuid4()
    data = RecordAuditInput(
        actor_id=BOT,
        action="trade.transition_refused",
        trade_id=trade_id,
        correlation_id="corr-audit",
        previous_state=TradeStatus.ACCEPTED,
        new_state=TradeStatus.SETTLED,
        error_code=SEC_030,
        payload={"details": {"reported": "SETTLED"}},
        idempotency_key=f"{trade_id}:refused:update-1",
    )

    await ActivityEnvironment().run(store.record_audit, data)
    await ActivityEnvironment().run(store.record_audit, data)

    (audit,) = await _audit_rows(sessions, trade_id)
    assert (audit.actor_id, audit.action, audit.target_type) == (BOT, data.action, "approval")
    assert (audit.previous_state, audit.new_state) == ("ACCEPTED", "SETTLED")
    assert (audit.error_code, audit.correlation_id) == (SEC_030, "corr-audit")
    assert audit.payload == data.payload
    assert audit.idempotency_key == data.idempotency_key

    # The key, not the content, tells entries apart: a second refusal is a second entry.
    another = data.model_copy(update={"idempotency_key": f"{trade_id}:refused:update-2"})
    await ActivityEnvironment().run(store.record_audit, another)
    assert len(await _audit_rows(sessions, trade_id)) == 2


# ---------------------------------------------------------------------------------------------
# Property 4: the row hash survives a trip through either database.
# ---------------------------------------------------------------------------------------------


@settings(
    max_examples=25,
    deadline=None,
    # Safe to share the function-scoped engine: each example stores a record under a fresh
    # trade_id and reads back only that record.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(drawn=approval_requests())
async def test_property_4_row_hash_survives_persist_load_verify(
    sessions: Sessions, store: PersistenceActivities, drawn: ApprovalRequest
) -> None:
    original = drawn.model_copy(update={"trade_id": uuid.uuid4()})

    returned = await _record_request(store, original)
    loaded = await _stored(sessions, original.trade_id)

    assert RowHasher.verify(loaded)
    assert loaded == returned
    # Equal in every field, so decimals to the 8th place and datetimes to the microsecond.
    assert loaded.model_dump(exclude={"row_hash"}) == original.model_dump(exclude={"row_hash"})
    assert RowHasher.canonical_json(loaded) == RowHasher.canonical_json(original)
    assert loaded.row_hash == RowHasher.compute(original)
    _assert_eight_places(loaded.request_price, loaded.risk_pct, loaded.confidence)


# ---------------------------------------------------------------------------------------------
# Integrity (SEC-080): a row altered behind the gateway's back is caught, never trusted.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TAMPERINGS)
async def test_record_decision_rejects_a_tampered_approval_with_sec_080(
    engine: AsyncEngine, sessions: Sessions, store: PersistenceActivities, kind: str
) -> None:
    requested = await _record_request(store, _approval())
    written = await _apply_tampering(engine, sessions, requested, kind)
    data = _decision(requested)
    approvals_before = _sample("hitl_approvals_total")
    failures_before = _sample("hitl_rejections_total", {"reason": "INTEGRITY_FAILURE"})

    result = await _record_decision(store, data)

    assert result.integrity_failure
    rejected = result.approval
    assert rejected.status is TradeStatus.REJECTED
    assert rejected.decision_reason is DecisionReason.INTEGRITY_FAILURE
    assert (rejected.decided_by, rejected.decision_channel) == ("system", DecisionChannel.SYSTEM)
    assert rejected.decided_at == DECIDED_AT
    assert RowHasher.verify(rejected)

    # The row is rebuilt from the workflow's copy: the tampered value is gone from it...
    stored = await _stored(sessions, requested.trade_id)
    assert stored == rejected
    assert RowHasher.verify(stored)
    assert stored.request_price == requested.request_price
    assert stored.instrument == requested.instrument

    # ...and kept as evidence in the audit entry.
    audits = await _audit_rows(sessions, requested.trade_id)
    assert _actions(audits) == ["approval.requested", "approval.integrity_failure"]
    audit = audits[1]
    assert audit.error_code == SEC_080
    assert (audit.previous_state, audit.new_state) == ("AWAITING_APPROVAL", "REJECTED")
    assert ApprovalRequest.from_dict(audit.payload["approval"]) == rejected
    _assert_found_row_kept(audit.payload["found_row"], kind, written)

    events = await _event_rows(sessions, requested.trade_id)
    assert _event_types(events) == ["hitl.created", "hitl.decided"]
    assert ApprovalRequest.from_dict(events[1].payload) == rejected

    assert _sample("hitl_approvals_total") == approvals_before
    failures = _sample("hitl_rejections_total", {"reason": "INTEGRITY_FAILURE"})
    assert failures - failures_before == 1

    # A retry hands back the same rejection and writes nothing more.
    assert await _record_decision(store, data) == result
    assert len(await _audit_rows(sessions, requested.trade_id)) == 2
    assert len(await _event_rows(sessions, requested.trade_id)) == 2
    assert _sample("hitl_rejections_total", {"reason": "INTEGRITY_FAILURE"}) == failures


async def test_record_decision_retry_does_not_hand_back_a_row_altered_since(
    engine: AsyncEngine, sessions: Sessions, store: PersistenceActivities
) -> None:
    requested = await _record_request(store, _approval())
    data = _decision(
        requested, status=TradeStatus.REJECTED, reason=DecisionReason.OPERATOR_REJECTED
    )
    await _record_decision(store, data)
    # The decision committed, then someone turned the rejection into an acceptance; a retry
    # of the activity (its first result lost) must not pass that on to the workflow.
    await _tamper(
        engine,
        requested.trade_id,
        status=TradeStatus.ACCEPTED.value,
        decision_reason=DecisionReason.OPERATOR_APPROVED.value,
    )

    with pytest.raises(ApplicationError) as caught:
        await _record_decision(store, data)

    assert caught.value.type == SEC_080
    assert caught.value.non_retryable


async def test_record_transition_refuses_a_tampered_trade_with_sec_080(
    engine: AsyncEngine, sessions: Sessions, store: PersistenceActivities
) -> None:
    for kind in TAMPERINGS:
        accepted = await _accepted(store)
        await _apply_tampering(engine, sessions, accepted, kind)
        rows_before = await _approval_rows(sessions, accepted.trade_id)

        with pytest.raises(ApplicationError) as caught:
            await _record_transition(store, _transition(accepted, TradeStatus.FILLED))

        assert caught.value.type == SEC_080, kind
        assert caught.value.non_retryable, kind
        assert str(caught.value).startswith(SEC_080), kind
        # Refused, not repaired: the altered row stays as found, for the investigation.
        rows_after = await _approval_rows(sessions, accepted.trade_id)
        assert [r.row_hash for r in rows_after] == [r.row_hash for r in rows_before], kind
        assert [r.status for r in rows_after] == ["ACCEPTED"], kind
        assert "trade.transitioned" not in _actions(await _audit_rows(sessions, accepted.trade_id))
        assert "hitl.lifecycle" not in _event_types(await _event_rows(sessions, accepted.trade_id))


async def test_record_transition_refuses_a_trade_whose_status_was_forged_to_the_target(
    engine: AsyncEngine, sessions: Sessions, store: PersistenceActivities
) -> None:
    accepted = await _accepted(store)
    # Only the status changes, to the very state the bot is about to report: the row's hash
    # no longer matches, and the workflow's copy still says ACCEPTED.
    await _tamper(engine, accepted.trade_id, status=TradeStatus.FILLED.value)
    assert not RowHasher.verify(await _stored(sessions, accepted.trade_id))

    with pytest.raises(ApplicationError) as caught:
        await _record_transition(store, _transition(accepted, TradeStatus.FILLED))

    assert caught.value.type == SEC_080
    assert caught.value.non_retryable


# ---------------------------------------------------------------------------------------------
# Lifecycle: a step the lifecycle does not allow is refused (SEC-030) and writes nothing.
# ---------------------------------------------------------------------------------------------


async def test_record_transition_refuses_an_invalid_step_with_sec_030(
    sessions: Sessions, store: PersistenceActivities
) -> None:
    accepted = await _accepted(store)
    audits_before = _ids(await _audit_rows(sessions, accepted.trade_id))
    events_before = _ids(await _event_rows(sessions, accepted.trade_id))
    refused = (
        TradeStatus.SETTLED,
        TradeStatus.CLOSED,
        TradeStatus.REJECTED,
        TradeStatus.AWAITING_APPROVAL,
        TradeStatus.PENDING,
    )
    for target in refused:
        with pytest.raises(ApplicationError) as caught:
            await _record_transition(store, _transition(accepted, target))

        assert caught.value.type == SEC_030, target
        assert caught.value.non_retryable, target
        assert await _stored(sessions, accepted.trade_id) == accepted, target
        assert _ids(await _audit_rows(sessions, accepted.trade_id)) == audits_before, target
        assert _ids(await _event_rows(sessions, accepted.trade_id)) == events_before, target

    # A trade that has not been accepted cannot be filled either.
    waiting = await _record_request(store, _approval())
    with pytest.raises(ApplicationError) as caught:
        await _record_transition(store, _transition(waiting, TradeStatus.FILLED))
    assert caught.value.type == SEC_030
    assert await _stored(sessions, waiting.trade_id) == waiting


# ---------------------------------------------------------------------------------------------
# Property 13: the post-trade snapshot captures the complete market context.
# ---------------------------------------------------------------------------------------------


def _half_even_8(value: Fraction) -> Decimal:
    """``value`` rounded half-even to 8 places, computed exactly (``round`` on a Fraction
    rounds half to even), independently of the decimal module's context."""
    return Decimal(round(value * 10**PLACES)).scaleb(-PLACES)


@settings(
    max_examples=25,
    deadline=None,
    # Safe to share the function-scoped engine: each example stores its own approval (a fresh
    # trade_id) and reads back only that approval's snapshot.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    request_price=decimals8(Decimal("0.01"), Decimal(100_000)),
    book=st.tuples(decimals8(QUANTUM, Decimal(100_000)), decimals8(QUANTUM, Decimal(100_000))),
    latency=decimals8(Decimal(0), Decimal(60_000)),
)
async def test_property_13_post_trade_snapshot_captures_complete_market_context(
    sessions: Sessions,
    store: PersistenceActivities,
    request_price: Decimal,
    book: tuple[Decimal, Decimal],
    latency: Decimal,
) -> None:
    bid, ask = min(book), max(book)
    accepted = await _accepted(store, request_price=request_price)
    returned = await _record_snapshot(
        store,
        RecordSnapshotInput(approval=accepted, quote=_quote(bid=bid, ask=ask, latency=latency)),
    )

    (row,) = await _snapshot_rows(sessions, accepted.trade_id)
    stored = snapshot_from_row(row, trade_id=accepted.trade_id)
    assert stored == returned

    spread = _half_even_8(Fraction(ask) - Fraction(bid))
    mid = _half_even_8((Fraction(bid) + Fraction(ask)) / 2)
    # The deviation is that of the recorded mid price, so the stored figures agree together.
    deviation = _half_even_8(
        abs(Fraction(mid) - Fraction(request_price)) / Fraction(request_price) * 100
    )
    assert (stored.bid, stored.ask) == (bid, ask)
    assert stored.spread == spread
    assert stored.mid_price == mid
    assert stored.price_deviation_pct == deviation
    assert stored.response_latency_ms == latency
    assert stored.correlation_id == accepted.correlation_id
    assert stored.trade_id == accepted.trade_id
    assert stored.created_at.tzinfo is UTC
    _assert_eight_places(
        stored.bid,
        stored.ask,
        stored.spread,
        stored.mid_price,
        stored.response_latency_ms,
        stored.price_deviation_pct,
    )


async def test_record_snapshot_returns_what_it_stored(
    sessions: Sessions, store: PersistenceActivities
) -> None:
    accepted = await _accepted(store)
    # A latency finer than the column keeps: stored rounded half-even to 8 places.
    data = RecordSnapshotInput(approval=accepted, quote=_quote(latency=Decimal("1.234567895")))

    first = await _record_snapshot(store, data)
    (row,) = await _snapshot_rows(sessions, accepted.trade_id)

    assert row.response_latency_ms == Decimal("1.23456790")
    # The first run and a retry must hand the workflow the same, stored, snapshot.
    assert first == snapshot_from_row(row, trade_id=accepted.trade_id)
    assert await _record_snapshot(store, data) == first


# ---------------------------------------------------------------------------------------------
# The outbox: each event carries the full approval and commits with the change it describes.
# ---------------------------------------------------------------------------------------------


async def _occupy_event_key(sessions: Sessions, trade_id: uuid.UUID, key: str) -> None:
    """Take the outbox key an activity is about to use, so that its last insert fails and
    the whole transaction must roll back."""
    async with sessions.begin() as session:
        session.add(
            EventRow(
                event_type="squatter",
                trade_id=trade_id,
                payload={},
                correlation_id="squatter",
                created_at=NOW,
                idempotency_key=key,
            )
        )


async def test_record_request_that_cannot_write_its_event_writes_nothing(
    sessions: Sessions, store: PersistenceActivities
) -> None:
    approval = _approval()
    # The key is the activity's own naming (activities/persistence.py): "<trade>:hitl.created".
    await _occupy_event_key(sessions, approval.trade_id, f"{approval.trade_id}:hitl.created")
    requests_before = _sample("hitl_requests_total")

    with pytest.raises(IntegrityError):
        await _record_request(store, approval)

    assert await _approval_rows(sessions, approval.trade_id) == []
    assert await _audit_rows(sessions, approval.trade_id) == []
    assert _event_types(await _event_rows(sessions, approval.trade_id)) == ["squatter"]
    assert _sample("hitl_requests_total") == requests_before


async def test_record_decision_that_cannot_write_its_event_changes_nothing(
    sessions: Sessions, store: PersistenceActivities
) -> None:
    requested = await _record_request(store, _approval())
    # The key is the activity's own naming (activities/persistence.py): "<trade>:decided".
    await _occupy_event_key(sessions, requested.trade_id, f"{requested.trade_id}:decided")
    approvals_before = _sample("hitl_approvals_total")

    with pytest.raises(IntegrityError):
        await _record_decision(store, _decision(requested))

    assert await _stored(sessions, requested.trade_id) == requested
    assert _actions(await _audit_rows(sessions, requested.trade_id)) == ["approval.requested"]
    assert _sample("hitl_approvals_total") == approvals_before
