"""Bearer-token authentication: declared tokens first, then the issued ones in the store.

Issued tokens end: when revoked, or at their ``expires_at``. Declared tokens
(``HITL_API_TOKENS``) are for development and tests; they last as long as the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hitl.errors import ErrorCode, HITLError
from hitl.principals import Principal, hash_token
from store.engine import AsyncSession, Sessions
from store.tokens import principal_for_token


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A caller and the token it presented (kept as its hash, to check again later)."""

    principal: Principal
    token_hash: str
    declared: bool
    """A development token from ``HITL_API_TOKENS``: it cannot be revoked nor expire."""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def authenticate_token(
    token: str, *, declared: dict[str, Principal], session: AsyncSession
) -> Authenticated:
    """Who ``token`` names, if it is declared or issued, unrevoked and unexpired; SEC-001 else."""
    digest = hash_token(token)
    if digest in declared:
        return Authenticated(declared[digest], digest, declared=True)
    principal = await principal_for_token(session, digest, datetime.now(UTC))
    if principal is None:
        raise HITLError(ErrorCode.UNAUTHENTICATED)
    return Authenticated(principal, digest, declared=False)


async def authenticate(
    authorization: str | None,
    *,
    declared: dict[str, Principal],
    session: AsyncSession,
) -> Principal:
    """The principal behind an ``Authorization: Bearer`` header, or SEC-001."""
    token = bearer_token(authorization)
    if token is None:
        raise HITLError(ErrorCode.UNAUTHENTICATED)
    return (await authenticate_token(token, declared=declared, session=session)).principal


async def still_valid(caller: Authenticated, *, sessions: Sessions) -> bool:
    """Whether the token ``caller`` presented still authenticates it (not revoked, not expired):
    what an open WebSocket checks now and then."""
    if caller.declared:
        return True
    return await principal_for_token(sessions, caller.token_hash, datetime.now(UTC)) is not None
