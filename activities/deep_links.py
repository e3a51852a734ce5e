"""Deep links as the notifier hands them out: the page's URL around a one-time token.

The tokens themselves are kept in ``store/deep_links.py``; its functions are named here too for
the callers that still import them from this module.
"""

from __future__ import annotations

from uuid import UUID

from hitl.principals import hash_token
from store.deep_links import (
    MAX_TOKEN_LENGTH,
    TOKEN_BYTES,
    DeepLinkGrant,
    consume_deep_link,
    issue_deep_link,
)

__all__ = [
    "MAX_TOKEN_LENGTH",
    "TOKEN_BYTES",
    "DeepLinkGrant",
    "consume_deep_link",
    "deep_link_url",
    "hash_token",
    "issue_deep_link",
]


def deep_link_url(hub_url: str, trade_id: UUID, token: str) -> str:
    """The operators' page of one approval, carrying its one-time token."""
    return f"{hub_url.rstrip('/')}/approvals/{trade_id}?token={token}"
