"""The per-principal cap on open event streams (the streams themselves: test_stream_access.py)."""

from __future__ import annotations

import pytest

from api.stream_limits import ConnectionCap
from hitl.errors import ErrorCode, HITLError


def test_each_principal_holds_at_most_the_cap_and_a_closed_place_frees() -> None:
    cap = ConnectionCap(2)
    with cap.hold("alice"), cap.hold("alice"):
        assert cap.open_count("alice") == 2
        with pytest.raises(HITLError) as refused, cap.hold("alice"):
            pass
        assert refused.value.error is ErrorCode.RATE_LIMITED
        assert cap.open_count("alice") == 2  # the refused one took no place
        with cap.hold("bob"):  # another principal has places of its own
            assert cap.open_count("bob") == 1
    assert cap.open_count("alice") == cap.open_count("bob") == 0
    with cap.hold("alice"):
        assert cap.open_count("alice") == 1


def test_a_place_is_freed_when_the_stream_fails() -> None:
    cap = ConnectionCap(1)
    with pytest.raises(RuntimeError), cap.hold("bot-1"):
        raise RuntimeError("client went away")
    assert cap.open_count("bot-1") == 0
