"""The joined steps of ``approval-v9`` (issue 19) on PostgreSQL and SQLite: the admission with the
request's write, and an acceptance with its post-trade snapshot (the seed's Property 13), each
one local activity that does what the single-step activities did, and is as idempotent.

Every activity runs through ``ActivityEnvironment``, as the worker would run it.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.testing import ActivityEnvironment

from activities.approval_steps import SNAPSHOT_QUOTE_ATTEMPTS, ApprovalStepActivities
from activities.market_providers import MarketDataError, MarketDataFailure, SimulatedMarketData
from activities.persistence import PersistenceActivities
from activities.policy import WorkerTrust
from hitl.errors import ErrorCode
from hitl.keys import KeyPurpose, Keyring, new_keyring
from hitl.market import MarketQuote
from hitl.messages import (
    AcceptanceRecorded,
    AdmitAndRecordInput,
    ApprovalAdmission,
    ApprovalWorkflowInput,
    GuardianCommand,
    RecordDecisionInput,
    workflow_id_for,
)
from hitl.models import (
    ApprovalRequest,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeProposal,
    TradeStatus,
)
from hitl.signing import CommandAction, CommandSigner
from store import approvals
from store.engine import session_factory
from store.guardian import lock_guardian
from store.tables import ApprovalRow, AuditRow, PostTradeSnapshotRow
from tests.temporal_fixtures import make_policy

SIGNED_AT = datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
EUR_USD = Decimal("1.16012")


def _market() -> SimulatedMarketData:
    return SimulatedMarketData(prices={"EUR/USD": EUR_USD}, jitter_percent=Decimal(0))


Sessions = async_sessionmaker[AsyncSession]


class FlakyMarket:
    """The simulated market behind a feed that fails its first ``failures`` quotes with
    ``failure``: what the snapshot meets when the provider is down or the instrument delisted."""

    def __init__(self, failures: int, failure: MarketDataFailure) -> None:
        self.market = _market()
        self.failures = failures
        self.failure = failure
        self.asked = 0

    async def quote(self, instrument: str) -> MarketQuote:
        self.asked += 1
        if self.asked <= self.failures:
            raise MarketDataError(instrument, self.failure, "feed down")
        return await self.market.quote(instrument)

    async def aclose(self) -> None:
        """Nothing to close."""


@pytest.fixture
def sessions(engine: AsyncEngine) -> Sessions:
    return session_factory(engine, writer=True)


@pytest.fixture
def keyring() -> Keyring:
    return new_keyring(KeyPurpose.COMMANDS, now=SIGNED_AT - timedelta(days=1))


def _steps(
    sessions: Sessions,
    keyring: Keyring,
    market: object | None = None,
    *,
    now: datetime = SIGNED_AT + timedelta(seconds=1),
) -> ApprovalStepActivities:
    """The joined steps on the test's store and market; the worker's clock reads ``now``."""
    trust = WorkerTrust(
        keyring=lambda: keyring,
        policy=lambda: make_policy(timeout_seconds=120),
        clock=lambda: now,
    )
    provider = market or _market()
    return ApprovalStepActivities(trust, PersistenceActivities(sessions), provider)  # type: ignore[arg-type]


def _start(keyring: Keyring, *, signed: bool = True) -> tuple[str, ApprovalWorkflowInput]:
    proposal = TradeProposal(
        trade_id=uuid.uuid4(),
        instrument="EUR/USD",
        side=Side.BUY,
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.8"),
        request_price=EUR_USD,
        reasoning_summary="Breakout above resistance with rising volume.",
        correlation_id=f"corr-{uuid.uuid4().hex[:12]}",
    )
    workflow_id = workflow_id_for(proposal.trade_id)
    start = ApprovalWorkflowInput(proposal=proposal, requested_by="bot-1")
    if signed:
        signer = CommandSigner(lambda: keyring, clock=lambda: SIGNED_AT)
        start = signer.sign(start, workflow_id=workflow_id, action=CommandAction.START)
    return workflow_id, start


def _environment(*, attempt: int = 1, scheduled: datetime = SIGNED_AT) -> ActivityEnvironment:
    """An activity's context as the worker gives it: its attempt, and when its first was
    scheduled."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info, attempt=attempt, scheduled_time=scheduled, is_local=True
    )
    return env


async def _admit(
    steps: ApprovalStepActivities,
    keyring: Keyring,
    *,
    at: datetime = SIGNED_AT + timedelta(seconds=1),
    signed: bool = True,
    env: ActivityEnvironment | None = None,
) -> tuple[ApprovalWorkflowInput, ApprovalAdmission]:
    workflow_id, start = _start(keyring, signed=signed)
    data = AdmitAndRecordInput(workflow_id=workflow_id, start=start, requested_at=at)
    return start, await (env or _environment()).run(steps.admit_and_record, data)


async def _written(sessions: Sessions, trade_id: uuid.UUID) -> tuple[int, int]:
    """How many approval rows and audit entries name ``trade_id``."""
    async with sessions() as session:
        rows = await session.execute(select(func.count()).where(ApprovalRow.trade_id == trade_id))
        entries = await session.execute(
            select(func.count()).where(AuditRow.target_id == str(trade_id))
        )
        return int(rows.scalar_one()), int(entries.scalar_one())


async def test_an_admitted_start_is_stored_under_the_worker_s_policy(
    sessions: Sessions, keyring: Keyring
) -> None:
    at = SIGNED_AT + timedelta(seconds=2)
    start, admission = await _admit(_steps(sessions, keyring, now=at), keyring, at=at)
    assert admission.error_code is None
    assert admission.policy == make_policy(timeout_seconds=120)
    approval = admission.approval
    assert approval is not None and approval.status is TradeStatus.AWAITING_APPROVAL
    assert (approval.requested_at, approval.expires_at) == (at, at + timedelta(seconds=120))
    assert await approvals.verified_approval(sessions, start.proposal.trade_id) == approval


async def test_a_retry_hands_back_the_stored_request(sessions: Sessions, keyring: Keyring) -> None:
    steps = _steps(sessions, keyring)
    workflow_id, start = _start(keyring)
    data = AdmitAndRecordInput(
        workflow_id=workflow_id, start=start, requested_at=SIGNED_AT + timedelta(seconds=1)
    )
    first = await _environment().run(steps.admit_and_record, data)
    second = await _environment(attempt=2).run(steps.admit_and_record, data)
    assert second == first
    assert await _written(sessions, start.proposal.trade_id) == (1, 1)


@pytest.mark.parametrize(
    ("signed", "after", "refusal"),
    [
        (False, timedelta(seconds=1), ErrorCode.COMMAND_NOT_SIGNED),
        (True, timedelta(minutes=10), ErrorCode.COMMAND_EXPIRED),
    ],
    ids=["unsigned", "past-its-window"],
)
async def test_a_refused_start_writes_nothing(
    sessions: Sessions, keyring: Keyring, signed: bool, after: timedelta, refusal: ErrorCode
) -> None:
    """A raw client's unsigned start, or one that reached the worker past its proof's window,
    is refused with its SEC code; neither the request nor an audit entry is written."""
    steps = _steps(sessions, keyring, now=SIGNED_AT + after)
    start, admission = await _admit(steps, keyring, signed=signed)
    assert admission == ApprovalAdmission(error_code=refusal.code)
    assert await _written(sessions, start.proposal.trade_id) == (0, 0)


async def test_a_retry_is_judged_as_of_the_first_attempt(
    sessions: Sessions, keyring: Keyring
) -> None:
    """The first attempt admitted the start and its write failed; the database came back ten
    minutes later, past the proof's window. The retry stores the request: its proof was in
    time when the step was first scheduled. A retry that claims a first attempt outside the
    window is still refused."""
    late = SIGNED_AT + timedelta(minutes=10)
    steps = _steps(sessions, keyring, now=late)
    in_time = _environment(attempt=7, scheduled=SIGNED_AT + timedelta(seconds=1))
    start, admission = await _admit(
        steps, keyring, at=SIGNED_AT + timedelta(seconds=1), env=in_time
    )
    assert admission.error_code is None and admission.approval is not None
    assert await _written(sessions, start.proposal.trade_id) == (1, 1)
    start, admission = await _admit(steps, keyring, env=_environment(attempt=2, scheduled=late))
    assert admission.error_code == ErrorCode.COMMAND_EXPIRED.code
    assert await _written(sessions, start.proposal.trade_id) == (0, 0)


def _acceptance(approval: ApprovalRequest) -> RecordDecisionInput:
    decided = approval.model_copy(
        update={
            "status": TradeStatus.ACCEPTED,
            "decided_at": approval.requested_at + timedelta(seconds=30),
            "decided_by": "alice",
            "decision_channel": DecisionChannel.API,
            "decision_reason": DecisionReason.OPERATOR_APPROVED,
        }
    )
    return RecordDecisionInput(expected=approval, decided=decided, event_type="hitl.decided")


async def _requested(sessions: Sessions, keyring: Keyring) -> ApprovalRequest:
    _, admission = await _admit(_steps(sessions, keyring), keyring)
    assert admission.approval is not None
    return admission.approval


async def _accept(steps: ApprovalStepActivities, data: RecordDecisionInput) -> AcceptanceRecorded:
    return await ActivityEnvironment().run(steps.record_acceptance, data)


async def test_an_acceptance_is_stored_with_its_snapshot_once(
    sessions: Sessions, keyring: Keyring
) -> None:
    approval = await _requested(sessions, keyring)
    steps = _steps(sessions, keyring)
    data = _acceptance(approval)
    first = await _accept(steps, data)
    assert first.approval.status is TradeStatus.ACCEPTED
    assert first.snapshot is not None and first.snapshot.trade_id == approval.trade_id
    assert first.snapshot.bid < EUR_USD < first.snapshot.ask
    # Temporal runs it again: the stored decision and snapshot come back, nothing is added.
    assert await _accept(steps, data) == first
    async with sessions() as session:
        record = await approvals.approval_record(session, approval.trade_id)
        snapshots = (
            await session.execute(select(func.count()).select_from(PostTradeSnapshotRow))
        ).scalar_one()
    assert record is not None and record.integrity_ok
    assert (record.approval, record.snapshot) == (first.approval, first.snapshot)
    assert snapshots == 1


async def test_a_snapshot_quote_that_keeps_failing_leaves_the_acceptance_standing(
    sessions: Sessions, keyring: Keyring
) -> None:
    approval = await _requested(sessions, keyring)
    market = FlakyMarket(failures=SNAPSHOT_QUOTE_ATTEMPTS, failure=MarketDataFailure.TIMEOUT)
    result = await _accept(_steps(sessions, keyring, market), _acceptance(approval))
    assert result.approval.status is TradeStatus.ACCEPTED
    assert result.snapshot is None
    assert market.asked == SNAPSHOT_QUOTE_ATTEMPTS


async def test_a_snapshot_quote_is_tried_again_after_a_transient_failure(
    sessions: Sessions, keyring: Keyring
) -> None:
    approval = await _requested(sessions, keyring)
    market = FlakyMarket(failures=SNAPSHOT_QUOTE_ATTEMPTS - 1, failure=MarketDataFailure.TIMEOUT)
    result = await _accept(_steps(sessions, keyring, market), _acceptance(approval))
    assert result.snapshot is not None
    assert market.asked == SNAPSHOT_QUOTE_ATTEMPTS


async def test_an_unknown_instrument_is_not_asked_twice(
    sessions: Sessions, keyring: Keyring
) -> None:
    approval = await _requested(sessions, keyring)
    market = FlakyMarket(failures=1, failure=MarketDataFailure.UNKNOWN_INSTRUMENT)
    result = await _accept(_steps(sessions, keyring, market), _acceptance(approval))
    assert (result.approval.status, result.snapshot, market.asked) == (
        TradeStatus.ACCEPTED,
        None,
        1,
    )


async def test_an_acceptance_the_guardian_refused_has_no_snapshot(
    sessions: Sessions, keyring: Keyring
) -> None:
    approval = await _requested(sessions, keyring)
    await lock_guardian(sessions, GuardianCommand(by="risk-desk", correlation_id="corr-lock"))
    market = FlakyMarket(failures=0, failure=MarketDataFailure.TIMEOUT)
    result = await _accept(_steps(sessions, keyring, market), _acceptance(approval))
    assert result.guardian_blocked
    assert result.approval.decision_reason is DecisionReason.GUARDIAN_LOCK
    assert (result.snapshot, market.asked) == (None, 0)
