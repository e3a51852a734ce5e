"""A Temporal address that cannot be reached answers SEC-070 at once, without the SDK's own
retries (``workflows.connection.unless_unreachable``, issue #16 item 7): a port that refuses
connections, and one that accepts them and never answers (a dropped route, a hung proxy). The
slow-but-alive side is a scenario of the chaos stack (``test_chaos.py``)."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest
from temporalio.client import Client

from activities.market_providers import SimulatedMarketData
from hitl.errors import ErrorCode, HITLError
from hitl.models import TradeProposal
from tests.chaos.harness import free_ports
from workflows.client import ApprovalClient

SAFETY = 60.0
"""Only so that a failure does not hang the run; the answer is expected in about a second."""


def _proposal() -> TradeProposal:
    return TradeProposal(
        trade_id=uuid.uuid4(),
        instrument="EUR/USD",
        side="BUY",
        risk_pct=Decimal("1.5"),
        confidence=Decimal("0.8"),
        request_price=SimulatedMarketData().mid_price("EUR/USD"),
        reasoning_summary="reachability probe",
        correlation_id="reachability-probe",
    )


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port whose listener accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


async def _refusal(address: str) -> HITLError:
    client = await Client.connect(address, lazy=True)
    approvals = ApprovalClient(client)
    with pytest.raises(HITLError) as refused:
        async with asyncio.timeout(SAFETY):
            await approvals.request_approval(_proposal(), requested_by="bot-1")
    with pytest.raises(HITLError) as decided:
        async with asyncio.timeout(SAFETY):
            await approvals.approval(uuid.uuid4()).current()
    assert decided.value.error is ErrorCode.SERVICE_UNAVAILABLE
    return refused.value


async def test_a_refused_connection_answers_sec_070_not_the_sdks_connect_error() -> None:
    # The lazy client's first connection fails with a RuntimeError from the SDK, not an RPCError.
    error = await _refusal(f"127.0.0.1:{free_ports(1)[0]}")
    assert error.error is ErrorCode.SERVICE_UNAVAILABLE
    assert "cannot be reached" in error.message


async def test_a_server_that_never_answers_is_given_up_on_not_waited_for(silent_port: int) -> None:
    error = await _refusal(f"127.0.0.1:{silent_port}")
    assert error.error is ErrorCode.SERVICE_UNAVAILABLE
    # Given up by the reachability question's own time limit (or by the SDK's connection
    # time-out, should that come first on a slow machine).
    assert "cannot be reached" in error.message
