"""Bearer-token authentication: declared tokens first, then the issued ones in the store."""

from __future__ import annotations

from datetime import UTC, datetime

from hitl.errors import ErrorCode, HITLError
from hitl.principals import Principal, hash_token
from store.engine import AsyncSession
from store.tokens import principal_for_token


async def authenticate(
    authorization: str | None,
    *,
    declared: dict[str, Principal],
    session: AsyncSession,
) -> Principal:
    """The principal behind an ``Authorization: Bearer`` header, or SEC-001."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HITLError(ErrorCode.UNAUTHENTICATED)
    digest = hash_token(token)
    if digest in declared:
        return declared[digest]
    principal = await principal_for_token(session, digest, datetime.now(UTC))
    if principal is None:
        raise HITLError(ErrorCode.UNAUTHENTICATED)
    return principal
