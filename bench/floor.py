"""The floor: the database writes of one approval done directly, without Temporal.

The same activity code the worker runs (``PersistenceActivities``), awaited in this process at the
same concurrency: the request, the decision (with the market figures in its audit entry) and the
post-trade snapshot, as an approved trade writes them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from activities.market_providers import SimulatedMarketData
from activities.persistence import PersistenceActivities
from bench.driver import INSTRUMENT, bounded_map
from bench.stack import OPERATOR
from hitl.keys import KEYS_DIR_VARIABLE
from hitl.logs import configure_logging
from hitl.messages import RecordDecisionInput, RecordRequestInput, RecordSnapshotInput
from hitl.models import (
    ApprovalRequest,
    DecisionChannel,
    DecisionReason,
    Side,
    TradeProposal,
    TradeStatus,
)
from hitl.slippage import SlippageGuard
from store.engine import create_engine, session_factory


def quiet_logs(log_path: Path) -> None:
    """Log as the worker does (JSON lines at INFO), but into ``log_path``: the floor pays the
    same logging cost as the worker without flooding the terminal."""
    configure_logging(logging.INFO)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(log_path.open("a", encoding="utf-8"))


@contextlib.contextmanager
def keys_dir_set(keys_dir: Path) -> Iterator[None]:
    """``HITL_KEYS_DIR`` is ``keys_dir`` inside the block: the store seals rows with the RECORD
    keyring of the process's environment, and the floor must seal with the stack's, as the
    worker does (same MACs, same cost, one coherent audit chain)."""
    saved = os.environ.get(KEYS_DIR_VARIABLE)
    os.environ[KEYS_DIR_VARIABLE] = str(keys_dir)
    try:
        yield
    finally:
        if saved is None:
            del os.environ[KEYS_DIR_VARIABLE]
        else:
            os.environ[KEYS_DIR_VARIABLE] = saved


async def run_floor(database_url: str, *, keys_dir: Path, count: int, concurrency: int) -> float:
    """Approvals per second for ``count`` approvals written directly at ``concurrency``,
    sealed with the RECORD keyring in ``keys_dir``."""
    with keys_dir_set(keys_dir):
        return await _floor(database_url, count=count, concurrency=concurrency)


async def _floor(database_url: str, *, count: int, concurrency: int) -> float:
    engine = create_engine(database_url)
    activities = PersistenceActivities(session_factory(engine, writer=True))
    market = SimulatedMarketData()
    mid = market.mid_price(INSTRUMENT)
    guard = SlippageGuard(Decimal("0.5"))  # the default policy's limit

    async def one(_: int) -> None:
        now = datetime.now(UTC)
        proposal = TradeProposal(
            trade_id=uuid.uuid4(),
            instrument=INSTRUMENT,
            side=Side.BUY,
            risk_pct=Decimal("1.5"),
            confidence=Decimal("0.8"),
            request_price=mid,
            reasoning_summary="benchmark floor",
            correlation_id=str(uuid.uuid4()),
        )
        draft = ApprovalRequest.from_proposal(
            proposal, requested_at=now, expires_at=now + timedelta(hours=4)
        )
        approval = await activities.record_request(
            RecordRequestInput(approval=draft, requested_by="bot-1")
        )
        quote = await market.quote(INSTRUMENT)
        price = quote.execution_price(approval.side)
        _, deviation = guard.validate(approval.request_price, price)
        decided = approval.model_copy(
            update={
                "status": TradeStatus.ACCEPTED,
                "decided_at": datetime.now(UTC),
                "decided_by": OPERATOR,
                "decision_channel": DecisionChannel.API,
                "decision_reason": DecisionReason.OPERATOR_APPROVED,
                "comment": "bench",
            }
        )
        recorded = await activities.record_decision(
            RecordDecisionInput(
                expected=approval,
                decided=decided,
                event_type="hitl.decided",
                audit_payload={
                    "market": {
                        "bid": str(quote.bid),
                        "ask": str(quote.ask),
                        "current_price": str(price),
                        "deviation_pct": str(deviation),
                    }
                },
            )
        )
        if recorded.approval.status is not TradeStatus.ACCEPTED:
            raise RuntimeError(f"the floor's approval ended {recorded.approval.status}")
        snapshot_quote = await market.quote(INSTRUMENT)
        await activities.record_snapshot(
            RecordSnapshotInput(approval=recorded.approval, quote=snapshot_quote)
        )

    try:
        started = time.perf_counter()
        await bounded_map(one, range(count), concurrency=concurrency)
        return count / (time.perf_counter() - started)
    finally:
        await engine.dispose()
