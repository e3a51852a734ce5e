"""One-time deep links to an approval: random tokens, kept only as their SHA-256, used up once.

The Discord notification issues a link when it tells operators about an approval; the API uses it
up when an operator opens it. A link only shows the approval, it never decides: a link scanner
following it can at worst use it up, never approve or reject anything.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from sqlalchemy import CursorResult, select, update

from hitl.principals import hash_token
from store.engine import Sessions
from store.tables import ApprovalRow, DeepLinkTokenRow

TOKEN_BYTES = 32
"""Entropy of a token: 256 bits, far beyond guessing."""

MAX_TOKEN_LENGTH = 128
"""Longer strings are refused unhashed: no token we issue comes near this."""


@dataclass(frozen=True, slots=True)
class DeepLinkGrant:
    """What a used-up link opens: one approval, to read."""

    trade_id: UUID
    correlation_id: str
    """The approval's correlation id, as recorded when the link was issued."""


async def issue_deep_link(
    sessions: Sessions,
    *,
    trade_id: UUID,
    expires_at: datetime,
    correlation_id: str,
) -> str:
    """Store a new token for ``trade_id`` valid until ``expires_at`` and return it (once).

    Every earlier unused token of the trade is revoked in the same transaction: a retried
    notification replaces its link rather than leaving two valid ones.
    """
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        # Serialises issuers of one trade on PostgreSQL, so that two overlapping attempts cannot
        # each revoke nothing and insert; SQLite admits one writer at a time anyway.
        await session.execute(
            select(ApprovalRow.id).where(ApprovalRow.trade_id == trade_id).with_for_update()
        )
        # A revoked token is marked used: either way it opens nothing any more.
        await session.execute(
            update(DeepLinkTokenRow)
            .where(DeepLinkTokenRow.trade_id == trade_id, DeepLinkTokenRow.used_at.is_(None))
            .values(used_at=now)
        )
        session.add(
            DeepLinkTokenRow(
                token=hash_token(token),
                trade_id=trade_id,
                expires_at=expires_at,
                used_at=None,
                correlation_id=correlation_id,
                created_at=now,
            )
        )
    return token


async def consume_deep_link(sessions: Sessions, token: str) -> DeepLinkGrant | None:
    """Use ``token`` up: its grant if it was issued, unused and unexpired, else None.

    One conditional UPDATE decides, so of any number of concurrent uses exactly one wins.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    digest = hash_token(token)
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        result = cast(
            CursorResult[Any],
            await session.execute(
                update(DeepLinkTokenRow)
                .where(
                    DeepLinkTokenRow.token == digest,
                    DeepLinkTokenRow.used_at.is_(None),
                    DeepLinkTokenRow.expires_at > now,
                )
                .values(used_at=now)
                .execution_options(synchronize_session=False)
            ),
        )
        if result.rowcount != 1:
            return None
        row = (
            await session.execute(
                select(DeepLinkTokenRow.trade_id, DeepLinkTokenRow.correlation_id).where(
                    DeepLinkTokenRow.token == digest
                )
            )
        ).one()
    return DeepLinkGrant(trade_id=row.trade_id, correlation_id=row.correlation_id)
