"""Issued API tokens: stored only as SHA-256 hashes; a revoked token is kept (``revoked_at``) so
the record shows who had access when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hitl.principals import Principal, Role, hash_token, new_token
from store.tables import ApiTokenRow


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One issued token as listed to an administrator (never its value nor its hash)."""

    principal: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    """Always None for now: tokens carry no expiry column yet."""


async def issue_token(
    sessions: async_sessionmaker[AsyncSession],
    *,
    principal: str,
    role: Role,
    expires_at: datetime | None = None,
) -> str:
    """Store a new token's hash for ``principal`` and return the clear token (shown once).

    ``expires_at`` is accepted for the interface's sake but not stored: there is no column for it
    yet, so a token lives until revoked.
    """
    del expires_at  # no column yet (see the docstring)
    token = new_token()
    async with sessions.begin() as session:
        session.add(
            ApiTokenRow(
                principal=principal,
                role=role.value,
                token_hash=hash_token(token),
                created_at=datetime.now(UTC),
            )
        )
    return token


async def revoke_tokens(sessions: async_sessionmaker[AsyncSession], *, principal: str) -> int:
    """Revoke every active token of ``principal``; returns how many were revoked."""
    async with sessions.begin() as session:
        result = await session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.principal == principal, ApiTokenRow.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


async def list_tokens(sessions: async_sessionmaker[AsyncSession]) -> list[TokenInfo]:
    """Every issued token, oldest first, revoked ones included."""
    async with sessions() as session:
        rows = (await session.execute(select(ApiTokenRow).order_by(ApiTokenRow.id))).scalars()
        return [
            TokenInfo(
                principal=row.principal,
                role=Role(row.role),
                created_at=row.created_at,
                revoked_at=row.revoked_at,
            )
            for row in rows
        ]


async def principal_for_token(
    session_or_sessions: AsyncSession | async_sessionmaker[AsyncSession],
    token_hash: str,
    now: datetime,
) -> Principal | None:
    """The principal of an active issued token with this hash, or None.

    ``now`` is the moment the token is checked against; it will matter once tokens can expire.
    Takes a session (a request's own) or a session factory (to open one just for this read).
    """
    del now  # tokens have no expiry column yet
    query = select(ApiTokenRow.principal, ApiTokenRow.role).where(
        ApiTokenRow.token_hash == token_hash, ApiTokenRow.revoked_at.is_(None)
    )
    if isinstance(session_or_sessions, AsyncSession):
        row = (await session_or_sessions.execute(query)).one_or_none()
    else:
        async with session_or_sessions() as session:
            row = (await session.execute(query)).one_or_none()
    return None if row is None else Principal(row.principal, Role(row.role))
