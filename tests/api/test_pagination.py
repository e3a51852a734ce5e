"""Cursors and pages (the list endpoints' round trips are in test_limits.py)."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    CursorKey,
    decode_cursor,
    encode_cursor,
    page_of,
    page_params,
)
from hitl.errors import ErrorCode, HITLError

keys = st.lists(st.one_of(st.text(max_size=40), st.integers()), min_size=1, max_size=3).map(tuple)


@given(keys)
def test_a_cursor_round_trips_and_is_url_safe(key: CursorKey) -> None:
    cursor = encode_cursor(key)
    assert decode_cursor(cursor, arity=len(key)) == key
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _raw(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "not base64 !",
        "%%%",
        _raw({"a": 1}),
        _raw([1, "x"]),  # wrong arity for two parts
        _raw([2, "x", 1]),  # unknown version
        _raw([1, "x", None]),
        _raw([1, "x", True]),
        _raw([1, "x", 1.5]),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_a_malformed_cursor_is_refused_with_sec_003(cursor: str) -> None:
    with pytest.raises(HITLError) as refused:
        decode_cursor(cursor, arity=2)
    assert refused.value.error is ErrorCode.INVALID_INPUT


def test_a_page_has_a_next_cursor_only_when_a_row_is_left() -> None:
    rows = list(range(7))
    first = page_of(rows[:4], limit=3, key_of=lambda n: (n,))
    assert first.items == [0, 1, 2]
    assert first.next_cursor is not None
    assert decode_cursor(first.next_cursor, arity=1) == (2,)
    last = page_of(rows[:3], limit=3, key_of=lambda n: (n,))
    assert (last.items, last.next_cursor) == ([0, 1, 2], None)
    nothing: list[int] = []
    empty = page_of(nothing, limit=3, key_of=lambda n: (n,))
    assert (empty.items, empty.next_cursor) == ([], None)


def test_the_default_limit_and_its_bound() -> None:
    assert page_params().limit == DEFAULT_LIMIT == 100
    assert MAX_LIMIT == 500
