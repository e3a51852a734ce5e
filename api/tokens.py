"""Issue and revoke API tokens: ``python -m api.tokens issue alice operator``.

Tokens are printed once and stored only as SHA-256 hashes; a revoked token is kept (revoked_at)
so the record shows who had access when.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from hitl.errors import ConfigurationError
from hitl.principals import Role
from hitl.settings import get_settings
from store.engine import create_engine, session_factory
from store.tokens import TokenInfo, issue_token, list_tokens, revoke_tokens


async def _issue(url: str, principal: str, role: Role) -> str:
    engine = create_engine(url)
    try:
        return await issue_token(session_factory(engine), principal=principal, role=role)
    finally:
        await engine.dispose()


async def _revoke(url: str, principal: str) -> int:
    engine = create_engine(url)
    try:
        return await revoke_tokens(session_factory(engine), principal=principal)
    finally:
        await engine.dispose()


async def _list(url: str) -> list[TokenInfo]:
    engine = create_engine(url)
    try:
        return await list_tokens(session_factory(engine))
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m api.tokens", description=__doc__)
    parser.add_argument("--url", help="database URL (default: the settings' DATABASE_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue", help="issue a new token and print it once")
    issue.add_argument("principal")
    issue.add_argument("role", choices=[role.value for role in Role])
    revoke = commands.add_parser("revoke", help="revoke every active token of a principal")
    revoke.add_argument("principal")
    commands.add_parser("list", help="list tokens (never their values)")
    args = parser.parse_args(argv)
    try:
        url = args.url or get_settings().database_url
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "issue":
        print(asyncio.run(_issue(url, args.principal, Role(args.role))))
    elif args.command == "revoke":
        count = asyncio.run(_revoke(url, args.principal))
        print(f"revoked {count} token(s) of {args.principal}")
        return 0 if count else 1
    else:
        for number, row in enumerate(asyncio.run(_list(url)), start=1):
            state = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
            created = f"{row.created_at:%Y-%m-%d %H:%M}"
            print(f"{number}\t{row.principal}\t{row.role}\t{created}\t{state}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
