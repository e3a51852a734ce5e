"""The trade lifecycle: which status may follow which."""

from __future__ import annotations

from collections.abc import Mapping

from hitl.errors import ErrorCode
from hitl.models import TradeStatus

VALID_TRANSITIONS: Mapping[TradeStatus, frozenset[TradeStatus]] = {
    TradeStatus.PENDING: frozenset({TradeStatus.AWAITING_APPROVAL}),
    TradeStatus.AWAITING_APPROVAL: frozenset({TradeStatus.ACCEPTED, TradeStatus.REJECTED}),
    TradeStatus.ACCEPTED: frozenset({TradeStatus.FILLED}),
    TradeStatus.FILLED: frozenset({TradeStatus.CLOSED}),
    TradeStatus.CLOSED: frozenset({TradeStatus.SETTLED}),
    TradeStatus.REJECTED: frozenset(),
    TradeStatus.SETTLED: frozenset(),
}
"""Each status mapped to the statuses it may move to; REJECTED and SETTLED are terminal."""

TERMINAL_STATES: frozenset[TradeStatus] = frozenset(
    status for status, targets in VALID_TRANSITIONS.items() if not targets
)


def validate_transition(current: TradeStatus, target: TradeStatus) -> tuple[bool, str | None]:
    """Whether ``current`` may move to ``target``: ``(True, None)`` or ``(False, "SEC-030")``."""
    if target in VALID_TRANSITIONS[current]:
        return True, None
    return False, ErrorCode.INVALID_TRANSITION.code
