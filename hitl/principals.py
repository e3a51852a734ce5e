"""Who a caller is: roles, principals and the bearer tokens that name them (pure, no SQL).

Tokens are random and kept only as SHA-256 hashes; ``store/tokens.py`` keeps the issued ones,
``HITL_API_TOKENS`` declares the rest.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from hitl.errors import ConfigurationError


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
