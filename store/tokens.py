"""Issued API tokens: stored only as SHA-256 hashes; a revoked token is kept (``revoked_at``) so
the record shows who had access when. A token may carry an end (``expires_at``): past it, it
authenticates nobody, exactly like a revoked one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import or_, select, update

from hitl.principals import Principal, Role, hash_token, new_token
from store.engine import AsyncSession, Sessions
from store.tables import ApiTokenRow


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One issued token as listed to an administrator (never its value nor its hash)."""

    principal: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = None
    """When it stops working; None: it lives until revoked."""

    def state(self, now: datetime) -> str:
        """``active``, ``expired`` or ``revoked`` at ``now``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


async def issue_token(
    sessions: Sessions,
    *,
    principal: str,
    role: Role,
    expires_at: datetime | None = None,
) -> str:
    """Store a new token's hash for ``principal`` and return the clear token (shown once);
    it stops working at ``expires_at`` (None: when revoked)."""
    token = new_token()
    async with sessions.begin() as session:
        session.add(
            ApiTokenRow(
                principal=principal,
                role=role.value,
                token_hash=hash_token(token),
                created_at=datetime.now(UTC),
                expires_at=expires_at,
            )
        )
    return token


async def revoke_tokens(sessions: Sessions, *, principal: str) -> int:
    """Revoke every active token of ``principal``; returns how many were revoked."""
    async with sessions.begin() as session:
        result = await session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.principal == principal, ApiTokenRow.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


async def list_tokens(sessions: Sessions) -> list[TokenInfo]:
    """Every issued token, oldest first, revoked and expired ones included."""
    async with sessions() as session:
        rows = (await session.execute(select(ApiTokenRow).order_by(ApiTokenRow.id))).scalars()
        return [
            TokenInfo(
                principal=row.principal,
                role=Role(row.role),
                created_at=row.created_at,
                revoked_at=row.revoked_at,
                expires_at=row.expires_at,
            )
            for row in rows
        ]


async def principal_for_token(
    session_or_sessions: AsyncSession | Sessions,
    token_hash: str,
    now: datetime,
) -> Principal | None:
    """The principal of an issued token with this hash that is neither revoked nor expired at
    ``now``, or None.

    Takes a session (a request's own) or a session factory (to open one just for this read).
    """
    query = select(ApiTokenRow.principal, ApiTokenRow.role).where(
        ApiTokenRow.token_hash == token_hash,
        ApiTokenRow.revoked_at.is_(None),
        or_(ApiTokenRow.expires_at.is_(None), ApiTokenRow.expires_at > now),
    )
    if isinstance(session_or_sessions, AsyncSession):
        row = (await session_or_sessions.execute(query)).one_or_none()
    else:
        async with session_or_sessions() as session:
            row = (await session.execute(query)).one_or_none()
    return None if row is None else Principal(row.principal, Role(row.role))
