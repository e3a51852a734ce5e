"""The trade lifecycle: Properties 1 and 2 of the seed (valid transitions, SEC-030 otherwise)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from hitl.errors import ErrorCode
from hitl.lifecycle import TERMINAL_STATES, VALID_TRANSITIONS, validate_transition
from hitl.models import TradeStatus

HAPPY_PATH = (
    TradeStatus.PENDING,
    TradeStatus.AWAITING_APPROVAL,
    TradeStatus.ACCEPTED,
    TradeStatus.FILLED,
    TradeStatus.CLOSED,
    TradeStatus.SETTLED,
)

VALID_PAIRS = frozenset(
    (current, target) for current, targets in VALID_TRANSITIONS.items() for target in targets
)
ALL_PAIRS = frozenset((a, b) for a in TradeStatus for b in TradeStatus)
INVALID_PAIRS = ALL_PAIRS - VALID_PAIRS


def _assert_only_valid_targets_follow(state: TradeStatus) -> None:
    for target in TradeStatus:
        accepted, code = validate_transition(state, target)
        if target in VALID_TRANSITIONS[state]:
            assert (accepted, code) == (True, None)
        else:
            assert (accepted, code) == (False, "SEC-030")


@st.composite
def lifecycle_paths(draw: st.DrawFn) -> list[TradeStatus]:
    """A walk from PENDING that follows VALID_TRANSITIONS, stopping anywhere along the way."""
    path = [TradeStatus.PENDING]
    while VALID_TRANSITIONS[path[-1]] and draw(st.integers(0, 9)) > 0:
        path.append(draw(st.sampled_from(sorted(VALID_TRANSITIONS[path[-1]]))))
    return path


def test_every_status_has_an_entry() -> None:
    assert set(VALID_TRANSITIONS) == set(TradeStatus)


def test_the_plan_s_transitions_exactly() -> None:
    assert dict(VALID_TRANSITIONS) == {
        TradeStatus.PENDING: {TradeStatus.AWAITING_APPROVAL},
        TradeStatus.AWAITING_APPROVAL: {TradeStatus.ACCEPTED, TradeStatus.REJECTED},
        TradeStatus.ACCEPTED: {TradeStatus.FILLED},
        TradeStatus.FILLED: {TradeStatus.CLOSED},
        TradeStatus.CLOSED: {TradeStatus.SETTLED},
        TradeStatus.REJECTED: set(),
        TradeStatus.SETTLED: set(),
    }


def test_happy_path_is_accepted_step_by_step() -> None:
    for current, target in pairwise(HAPPY_PATH):
        assert validate_transition(current, target) == (True, None)
    assert HAPPY_PATH[-1] in TERMINAL_STATES


def test_rejection_path_is_accepted() -> None:
    assert validate_transition(TradeStatus.PENDING, TradeStatus.AWAITING_APPROVAL) == (True, None)
    assert validate_transition(TradeStatus.AWAITING_APPROVAL, TradeStatus.REJECTED) == (True, None)


@given(path=lifecycle_paths())
def test_property_1_valid_transitions_preserve_lifecycle_integrity(
    path: list[TradeStatus],
) -> None:
    for current, target in pairwise(path):
        assert validate_transition(current, target) == (True, None)
    # No status is ever revisited: the lifecycle only moves forward.
    assert len(set(path)) == len(path)
    _assert_only_valid_targets_follow(path[-1])


def test_every_walk_ends_in_a_terminal_state() -> None:
    def walks(state: TradeStatus) -> list[list[TradeStatus]]:
        if not VALID_TRANSITIONS[state]:
            return [[state]]
        return [[state, *rest] for target in VALID_TRANSITIONS[state] for rest in walks(target)]

    complete = walks(TradeStatus.PENDING)
    assert {tuple(walk) for walk in complete} == {
        HAPPY_PATH,
        (TradeStatus.PENDING, TradeStatus.AWAITING_APPROVAL, TradeStatus.REJECTED),
    }
    assert {walk[-1] for walk in complete} == TERMINAL_STATES


@given(pair=st.sampled_from(sorted(INVALID_PAIRS)))
def test_property_2_invalid_transitions_are_rejected_with_sec_030(
    pair: tuple[TradeStatus, TradeStatus],
) -> None:
    current, target = pair
    accepted, code = validate_transition(current, target)
    assert accepted is False
    assert code == "SEC-030" == ErrorCode.INVALID_TRANSITION.code


@pytest.mark.parametrize(("current", "target"), sorted(INVALID_PAIRS))
def test_every_invalid_pair_is_refused(current: TradeStatus, target: TradeStatus) -> None:
    assert validate_transition(current, target) == (False, "SEC-030")


def test_rejected_and_settled_are_terminal() -> None:
    assert set(TERMINAL_STATES) == {TradeStatus.REJECTED, TradeStatus.SETTLED}
    for terminal in TERMINAL_STATES:
        for target in TradeStatus:
            assert validate_transition(terminal, target) == (False, "SEC-030")


@pytest.mark.parametrize("status", list(TradeStatus))
def test_self_transitions_are_refused(status: TradeStatus) -> None:
    assert validate_transition(status, status) == (False, "SEC-030")


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (TradeStatus.PENDING, TradeStatus.ACCEPTED),
        (TradeStatus.AWAITING_APPROVAL, TradeStatus.FILLED),
        (TradeStatus.ACCEPTED, TradeStatus.REJECTED),
        (TradeStatus.REJECTED, TradeStatus.ACCEPTED),
        (TradeStatus.FILLED, TradeStatus.ACCEPTED),
        (TradeStatus.SETTLED, TradeStatus.PENDING),
    ],
)
def test_skipping_or_going_back_is_refused(current: TradeStatus, target: TradeStatus) -> None:
    assert validate_transition(current, target) == (False, "SEC-030")


class LifecycleMachine(RuleBasedStateMachine):
    """One trade driven by arbitrary requested transitions; only valid ones move it."""

    def __init__(self) -> None:
        super().__init__()
        self.status = TradeStatus.PENDING
        self.history = [TradeStatus.PENDING]

    @rule(requested=st.sampled_from(TradeStatus))
    def request_transition(self, requested: TradeStatus) -> None:
        accepted, code = validate_transition(self.status, requested)
        if requested in VALID_TRANSITIONS[self.status]:
            assert (accepted, code) == (True, None)
            self.status = requested
            self.history.append(requested)
        else:
            assert (accepted, code) == (False, "SEC-030")

    @precondition(lambda self: bool(VALID_TRANSITIONS[self.status]))
    @rule(data=st.data())
    def follow_a_valid_transition(self, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(sorted(VALID_TRANSITIONS[self.status])))
        assert validate_transition(self.status, target) == (True, None)
        self.status = target
        self.history.append(target)

    @rule(earlier=st.sampled_from(TradeStatus))
    def a_status_left_behind_is_never_reached_again(self, earlier: TradeStatus) -> None:
        if earlier in self.history[:-1]:
            assert validate_transition(self.status, earlier) == (False, "SEC-030")

    @invariant()
    def history_is_a_valid_walk(self) -> None:
        assert self.history[0] is TradeStatus.PENDING
        for current, target in pairwise(self.history):
            assert target in VALID_TRANSITIONS[current]
        assert len(set(self.history)) == len(self.history)

    @invariant()
    def terminal_means_nothing_follows(self) -> None:
        if self.status in TERMINAL_STATES:
            _assert_only_valid_targets_follow(self.status)
            assert not VALID_TRANSITIONS[self.status]


LifecycleMachine.TestCase.settings = settings(max_examples=50, stateful_step_count=20)
TestLifecycleMachine = LifecycleMachine.TestCase
