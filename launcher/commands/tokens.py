"""``hitl tokens issue|list|revoke``: the API tokens kept in the database.

Tokens are printed once and stored only as SHA-256 hashes (``store/tokens.py``); a revoked token
is kept (``revoked_at``) so the record shows who had access when. ``--expires-in 30d`` gives a
token an end: past it, the token authenticates nobody.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from hitl.errors import ConfigurationError
from hitl.principals import Role
from hitl.settings import get_settings
from launcher.commands import Subparsers
from launcher.errors import EXIT_CONFIGURATION, EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from store.tokens import TokenInfo

# store/ (SQLAlchemy) is imported by each action, not here: `hitl --help` and every other
# command then start without it.

DESCRIPTION = """\
Manage the API tokens kept in the database (those declared in HITL_API_TOKENS are not listed
here). The database is --url, else the settings' DATABASE_URL. Exit codes: 0 done, 1 nothing
to revoke, 2 no database could be named (invalid settings)."""


def register(subparsers: Subparsers) -> None:
    """Add ``hitl tokens`` and its actions."""
    group = subparsers.add_parser(
        "tokens", help="issue, list and revoke API tokens", description=DESCRIPTION
    )
    # Each action takes --url, so that it may come anywhere on the line.
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--url", help="SQLAlchemy async URL (default: from the settings)")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    issue = actions.add_parser(
        "issue",
        parents=[database],
        help="issue a new token and print it once",
        description="Issue a token for PRINCIPAL with ROLE and print it: it is shown only"
        " this once (the database keeps its hash).",
    )
    issue.add_argument("principal", metavar="PRINCIPAL", help="who the token names, e.g. alice")
    roles = [role.value for role in Role]
    issue.add_argument("role", metavar="ROLE", choices=roles, help=" | ".join(roles))
    issue.add_argument(
        "--expires-in",
        metavar="DURATION",
        type=parse_lifetime,
        help="how long the token works, e.g. 12h, 30d, 2w (default: until revoked)",
    )
    issue.set_defaults(handler=_issue)
    listing = actions.add_parser(
        "list",
        parents=[database],
        help="list the issued tokens (never their values)",
        description="List every issued token, oldest first, tab-separated: principal, role,"
        " when issued, state (active, expired or revoked, with when), and when it expires"
        " (never: until revoked).",
    )
    listing.set_defaults(handler=_list)
    revoke = actions.add_parser(
        "revoke",
        parents=[database],
        help="revoke every active token of a principal",
        description="Revoke every active token of PRINCIPAL (they stop working at once; the"
        " records stay). Exits 1 when PRINCIPAL had no active token.",
    )
    revoke.add_argument("principal", metavar="PRINCIPAL", help="whose tokens to revoke")
    revoke.set_defaults(handler=_revoke)


def _database_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.url
    if url is not None:
        return url
    try:
        return get_settings().database_url
    except ConfigurationError as exc:
        print(f"hitl tokens: {exc}", file=sys.stderr)
        return None


_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_lifetime(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``30d`` or ``2w`` as a (positive) timedelta.

    Raises:
        argparse.ArgumentTypeError: Anything else (argparse reports it as a usage error).
    """
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip().lower())
    if match is None or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use e.g. 12h, 30d or 2w")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


async def _issue_async(url: str, principal: str, role: Role, expires_at: datetime | None) -> str:
    from store.engine import create_engine, session_factory
    from store.tokens import issue_token

    engine = create_engine(url)
    try:
        return await issue_token(
            session_factory(engine), principal=principal, role=role, expires_at=expires_at
        )
    finally:
        await engine.dispose()


async def _revoke_async(url: str, principal: str) -> int:
    from store.engine import create_engine, session_factory
    from store.tokens import revoke_tokens

    engine = create_engine(url)
    try:
        return await revoke_tokens(session_factory(engine), principal=principal)
    finally:
        await engine.dispose()


async def _list_async(url: str) -> list[TokenInfo]:
    from store.engine import create_engine, session_factory
    from store.tokens import list_tokens

    engine = create_engine(url)
    try:
        return await list_tokens(session_factory(engine))
    finally:
        await engine.dispose()


def _issue(args: argparse.Namespace) -> int:
    url = _database_url(args)
    if url is None:
        return EXIT_CONFIGURATION
    lifetime: timedelta | None = args.expires_in
    expires_at = datetime.now(UTC) + lifetime if lifetime is not None else None
    print(asyncio.run(_issue_async(url, args.principal, Role(args.role), expires_at)))
    if expires_at is not None:
        print(f"expires {expires_at:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    url = _database_url(args)
    if url is None:
        return EXIT_CONFIGURATION
    count = asyncio.run(_revoke_async(url, args.principal))
    print(f"revoked {count} token(s) of {args.principal}")
    return EXIT_OK if count else EXIT_FAILURE


def format_token(token: TokenInfo, *, now: datetime | None = None) -> str:
    """One line of ``hitl tokens list``: principal, role, issued, state, expiry (tab-separated)."""
    state = token.state(now or datetime.now(UTC))
    if state == "revoked" and token.revoked_at is not None:
        state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}"
    expires = f"expires {token.expires_at:%Y-%m-%d %H:%M}" if token.expires_at else "never"
    issued = f"{token.created_at:%Y-%m-%d %H:%M}"
    return f"{token.principal}\t{token.role.value}\t{issued}\t{state}\t{expires}"


def _list(args: argparse.Namespace) -> int:
    url = _database_url(args)
    if url is None:
        return EXIT_CONFIGURATION
    for token in asyncio.run(_list_async(url)):
        print(format_token(token))
    return EXIT_OK
