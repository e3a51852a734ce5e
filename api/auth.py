"""Bearer-token authentication: tokens are random and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hitl.errors import ConfigurationError, ErrorCode, HITLError
from store.tables import ApiTokenRow


class Role(StrEnum):
    """What a principal may do."""

    BOT = "bot"
    """Creates requests and reports fills."""
    OPERATOR = "operator"
    """Decides approvals."""
    ADMIN = "admin"
    """Drives the Guardian and manages tokens."""
    GUARDIAN = "guardian"
    """The external risk engine: may lock and unlock the Guardian, nothing else."""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    id: str
    role: Role


def hash_token(token: str) -> str:
    """The SHA-256 hex of a token: the only form in which tokens are kept."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A new random token (192 bits)."""
    return secrets.token_urlsafe(24)


def parse_declared_tokens(declared: str) -> dict[str, Principal]:
    """``principal:role:token,…`` (HITL_API_TOKENS) as a map from token hash to principal."""
    principals: dict[str, Principal] = {}
    for entry in filter(None, (part.strip() for part in declared.split(","))):
        principal, sep1, rest = entry.partition(":")
        role, sep2, token = rest.partition(":")
        if not (sep1 and sep2 and principal and token) or role not in Role._value2member_map_:
            raise ConfigurationError(
                "HITL_API_TOKENS",
                "entries must be principal:role:token with role bot|operator|admin|guardian",
            )
        principals[hash_token(token)] = Principal(principal, Role(role))
    return principals


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
    row = (
        await session.execute(
            select(ApiTokenRow).where(
                ApiTokenRow.token_hash == digest, ApiTokenRow.revoked_at.is_(None)
            )
        )
    ).scalar_one_or_none()
    if row is None:
        raise HITLError(ErrorCode.UNAUTHENTICATED)
    return Principal(row.principal, Role(row.role))


async def issue_token(session: AsyncSession, *, principal: str, role: Role) -> str:
    """Store a new token's hash for ``principal`` and return the token (shown once)."""
    token = new_token()
    session.add(
        ApiTokenRow(
            principal=principal,
            role=role.value,
            token_hash=hash_token(token),
            created_at=datetime.now(UTC),
        )
    )
    return token
