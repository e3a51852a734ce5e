"""Paginated lists: ``?limit=`` (1 to 500, default 100) and an opaque ``next_cursor`` to pass back.

Pages are keyset pages: the cursor holds the sort key of the last item served, so a page never
repeats or skips an item because others were added or removed meanwhile (an offset would). The
cursor is opaque to clients — base64url of a small versioned JSON array — and a malformed one is
refused with SEC-003; a well-formed forged one only moves where the page starts, since every
list applies its caller's authorisation itself.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Annotated, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel

from hitl.errors import ErrorCode, HITLError

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
CURSOR_MAX_CHARS = 512
_VERSION = 1

ItemT = TypeVar("ItemT")

CursorKey = tuple[str | int, ...]
"""The sort key of one item: strings (e.g. ISO datetimes) and integers (e.g. row ids)."""


class Page(BaseModel, Generic[ItemT]):
    """One page of a list; pass ``next_cursor`` back as ``?cursor=`` for the next one."""

    items: list[ItemT]
    next_cursor: str | None
    """None on the last page."""


def encode_cursor(key: CursorKey) -> str:
    """The opaque cursor of a sort key."""
    raw = json.dumps([_VERSION, *key], separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str, *, arity: int) -> CursorKey:
    """The sort key a cursor holds; SEC-003 (422) when it is not one this API made."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError):
        data = None
    if (
        not isinstance(data, list)
        or len(data) != arity + 1
        or data[0] != _VERSION
        or not all(isinstance(part, str | int) and not isinstance(part, bool) for part in data)
    ):
        raise HITLError(ErrorCode.INVALID_INPUT, "invalid request: cursor is not a valid cursor")
    return tuple(data[1:])


class PageParams(BaseModel):
    """Where a page starts and how long it is."""

    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page, at most {MAX_LIMIT}.")
    ] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            max_length=CURSOR_MAX_CHARS,
            description="The previous page's next_cursor; omit for the first page.",
        ),
    ] = None,
) -> PageParams:
    """The ``limit`` and ``cursor`` query parameters of a list endpoint."""
    return PageParams(limit=limit, cursor=cursor)


PageDep = Annotated[PageParams, Depends(page_params)]


def page_of(rows: list[ItemT], *, limit: int, key_of: Callable[[ItemT], CursorKey]) -> Page[ItemT]:
    """A page from ``rows`` fetched with ``limit + 1``: the extra row, if any, only says that
    there is a next page, which starts after the last row kept."""
    if len(rows) > limit:
        kept = rows[:limit]
        return Page[ItemT](items=kept, next_cursor=encode_cursor(key_of(kept[-1])))
    return Page[ItemT](items=rows, next_cursor=None)
