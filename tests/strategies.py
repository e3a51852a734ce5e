"""Hypothesis strategies for the gateway's values, shared by every test package.

Every value drawn here is valid for the domain models *and* storable as is: decimals fit
NUMERIC(18,8), datetimes are UTC with microsecond precision inside 2000-2100, texts hold no NUL
(PostgreSQL refuses it) and respect the column widths.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from hypothesis import strategies as st

from hitl.decimals import MAX_DIGITS, PLACES, QUANTUM
from hitl.hashing import RowHasher
from hitl.models import (
    ApprovalDecision,
    ApprovalRequest,
    Decision,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeProposal,
    TradeStatus,
)

MAX_DECIMAL8 = Decimal(10) ** (MAX_DIGITS - PLACES) - QUANTUM
"""The largest NUMERIC(18,8) value: 9999999999.99999999."""

MIN_DATETIME = datetime(2000, 1, 1, tzinfo=UTC)
MAX_DATETIME = datetime(2100, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
"""The longest approval window the record strategies draw."""

INSTRUMENT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:/-"
"""Exactly the characters ``hitl.models.Instrument`` allows."""

KNOWN_INSTRUMENTS = ("EUR/USD", "BTC-PERP", "AAPL", "ES.Z25", "NASDAQ:MSFT", "xau_usd")

_TEXT_CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")


def shortest_spelling(value: Decimal) -> Decimal:
    """The same amount without trailing zeros (``1.5`` for ``1.50000000``, ``100`` not ``1E+2``)."""
    normalized = value.normalize()
    exponent = normalized.as_tuple().exponent
    return (
        normalized.quantize(Decimal(1))
        if isinstance(exponent, int) and exponent > 0
        else normalized
    )


def decimals8(
    min_value: Decimal = -MAX_DECIMAL8, max_value: Decimal = MAX_DECIMAL8
) -> st.SearchStrategy[Decimal]:
    """Decimals in ``[min_value, max_value]`` with at most 8 places, fitting NUMERIC(18,8).

    Both spellings of an amount are drawn: the 8-place one a database hands back
    (``1.50000000``) and the shortest one a client may send (``1.5``); they compare equal.
    """
    for bound in (min_value, max_value):
        if bound != bound.quantize(QUANTUM) or abs(bound) > MAX_DECIMAL8:
            raise ValueError(f"bound {bound} does not fit NUMERIC(18,8)")
    exact = st.decimals(
        min_value=min_value,
        max_value=max_value,
        places=PLACES,
        allow_nan=False,
        allow_infinity=False,
    ).map(lambda value: value.quantize(QUANTUM))
    return st.one_of(exact, exact.map(shortest_spelling))


def prices() -> st.SearchStrategy[Decimal]:
    """Strictly positive prices fitting NUMERIC(18,8), from 0.00000001 to 9999999999.99999999."""
    return decimals8(QUANTUM, MAX_DECIMAL8)


def percents() -> st.SearchStrategy[Decimal]:
    """Percentages between 0 and 100 with at most 8 places."""
    return decimals8(Decimal(0), Decimal(100))


def confidences() -> st.SearchStrategy[Decimal]:
    """The bot's confidence, between 0 and 1 with at most 8 places."""
    return decimals8(Decimal(0), Decimal(1))


def bids_and_asks() -> st.SearchStrategy[tuple[Decimal, Decimal]]:
    """A top of book ``(bid, ask)`` that is not crossed (``bid <= ask``)."""
    return st.tuples(prices(), prices()).map(lambda pair: (min(pair), max(pair)))


def utc_datetimes(
    min_value: datetime = MIN_DATETIME, max_value: datetime = MAX_DATETIME
) -> st.SearchStrategy[datetime]:
    """Timezone-aware UTC datetimes with microsecond precision, within 2000-2100 by default."""
    return st.datetimes(
        min_value=min_value.astimezone(UTC).replace(tzinfo=None),
        max_value=max_value.astimezone(UTC).replace(tzinfo=None),
        timezones=st.just(UTC),
    )


def texts(*, min_size: int = 0, max_size: int = 200) -> st.SearchStrategy[str]:
    """Unicode text that any of our databases stores unchanged (no NUL, no lone surrogate)."""
    return st.text(_TEXT_CHARACTERS, min_size=min_size, max_size=max_size)


def instruments() -> st.SearchStrategy[str]:
    """Instrument symbols matching ``hitl.models.Instrument`` (1-64 of ``[A-Za-z0-9._:/-]``)."""
    return st.one_of(
        st.sampled_from(KNOWN_INSTRUMENTS),
        st.text(INSTRUMENT_ALPHABET, min_size=1, max_size=64),
    )


def principal_ids() -> st.SearchStrategy[str]:
    """Operator, bot or system identities (1-128 characters)."""
    return st.one_of(st.sampled_from(("alice", "bob", "system")), texts(min_size=1, max_size=128))


def correlation_ids() -> st.SearchStrategy[str]:
    """Correlation identifiers (1-128 characters, the width of every correlation column)."""
    return st.one_of(st.uuids().map(str), texts(min_size=1, max_size=128))


def trade_proposals() -> st.SearchStrategy[TradeProposal]:
    """Valid proposals from the bot."""
    return st.builds(
        TradeProposal,
        trade_id=st.uuids(),
        instrument=instruments(),
        side=st.sampled_from(Side),
        risk_pct=percents(),
        confidence=confidences(),
        request_price=prices(),
        reasoning_summary=texts(),
        correlation_id=correlation_ids(),
    )


def approval_field_strategies() -> Mapping[str, st.SearchStrategy[Any]]:
    """For each stored field of ``ApprovalRequest`` except ``row_hash``: its valid values."""
    return {
        "trade_id": st.uuids(),
        "instrument": instruments(),
        "side": st.sampled_from(Side),
        "risk_pct": percents(),
        "confidence": confidences(),
        "request_price": prices(),
        "reasoning_summary": texts(),
        "correlation_id": correlation_ids(),
        "status": st.sampled_from(TradeStatus),
        "requested_at": utc_datetimes(),
        "expires_at": utc_datetimes(),
        "decided_at": st.none() | utc_datetimes(),
        "decided_by": st.none() | principal_ids(),
        "decision_channel": st.none() | st.sampled_from(DecisionChannel),
        "decision_reason": st.none() | st.sampled_from(DecisionReason),
        "comment": st.none() | texts(),
        "approvers": st.lists(principal_ids(), max_size=2, unique=True).map(tuple),
    }


@st.composite
def _approval_requests(
    draw: st.DrawFn,
    statuses: tuple[TradeStatus, ...],
    decided: bool | None,
    hashed: bool | None,
) -> ApprovalRequest:
    proposal = draw(trade_proposals())
    requested_at = draw(utc_datetimes(max_value=MAX_DATETIME - timedelta(days=30)))
    window = timedelta(seconds=draw(st.integers(1, MAX_TIMEOUT_SECONDS)))
    fields: dict[str, Any] = {
        **proposal.model_dump(),
        "status": draw(st.sampled_from(statuses)),
        "requested_at": requested_at,
        "expires_at": requested_at + window,
    }
    if draw(st.booleans()) if decided is None else decided:
        # Decisions land inside the window, or after it for timeouts and late sweeps.
        after = timedelta(
            microseconds=draw(st.integers(0, 2 * window // timedelta(microseconds=1)))
        )
        fields |= {
            "decided_at": requested_at + after,
            "decided_by": draw(principal_ids()),
            "decision_channel": draw(st.sampled_from(DecisionChannel)),
            "decision_reason": draw(st.sampled_from(DecisionReason)),
            "comment": draw(st.none() | texts()),
        }
    record = ApprovalRequest(**fields)
    if draw(st.booleans()) if hashed is None else hashed:
        record = ApprovalRequest(**fields, row_hash=RowHasher.compute(record))
    return record


def approval_requests(
    *,
    statuses: Iterable[TradeStatus] = tuple(TradeStatus),
    decided: bool | None = None,
    hashed: bool | None = None,
) -> st.SearchStrategy[ApprovalRequest]:
    """Complete approval records.

    Args:
        statuses: the statuses to draw from (default: any).
        decided: ``True`` for records with a decision, ``False`` for none, ``None`` for either.
        hashed: ``True`` for a ``row_hash`` computed by ``RowHasher.compute``, ``False`` for
            ``None``, ``None`` for either.
    """
    choices = tuple(statuses)
    if not choices:
        raise ValueError("statuses must name at least one status")
    return _approval_requests(choices, decided, hashed)


def approval_decisions(
    *,
    trade_ids: st.SearchStrategy[UUID] | None = None,
    operator_ids: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[ApprovalDecision]:
    """Operators' decisions; pass strategies to pin the trade or draw from known operators."""
    return st.builds(
        ApprovalDecision,
        trade_id=trade_ids if trade_ids is not None else st.uuids(),
        decision=st.sampled_from(Decision),
        operator_id=operator_ids if operator_ids is not None else principal_ids(),
        channel=st.sampled_from(DecisionChannel),
        comment=st.none() | texts(),
        correlation_id=correlation_ids(),
    )
