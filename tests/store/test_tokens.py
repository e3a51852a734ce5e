"""Issued tokens on PostgreSQL and SQLite: kept as hashes, found while active, gone once revoked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from hitl.principals import Principal, Role, hash_token
from store.engine import session_factory
from store.tables import ApiTokenRow
from store.tokens import issue_token, list_tokens, principal_for_token, revoke_tokens

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


async def test_issued_token_is_stored_as_its_hash_and_names_its_principal(
    engine: AsyncEngine,
) -> None:
    sessions = session_factory(engine)
    token = await issue_token(sessions, principal="dana", role=Role.OPERATOR)
    async with sessions() as session:
        [row] = (await session.execute(select(ApiTokenRow))).scalars()
        assert row.token_hash == hash_token(token) != token
        # Both forms of the first argument: a request's own session and a factory.
        assert await principal_for_token(session, hash_token(token), NOW) == Principal(
            "dana", Role.OPERATOR
        )
    assert await principal_for_token(sessions, hash_token(token), NOW) == Principal(
        "dana", Role.OPERATOR
    )
    assert await principal_for_token(sessions, hash_token(token + "x"), NOW) is None


async def test_revoke_ends_every_active_token_of_one_principal_only(engine: AsyncEngine) -> None:
    sessions = session_factory(engine)
    first = await issue_token(sessions, principal="dana", role=Role.OPERATOR)
    second = await issue_token(sessions, principal="dana", role=Role.ADMIN)
    other = await issue_token(sessions, principal="erin", role=Role.BOT)
    assert await revoke_tokens(sessions, principal="dana") == 2
    assert await revoke_tokens(sessions, principal="dana") == 0
    assert await principal_for_token(sessions, hash_token(first), NOW) is None
    assert await principal_for_token(sessions, hash_token(second), NOW) is None
    assert await principal_for_token(sessions, hash_token(other), NOW) == Principal(
        "erin", Role.BOT
    )
    listed = await list_tokens(sessions)
    assert [(t.principal, t.role, t.revoked_at is None) for t in listed] == [
        ("dana", Role.OPERATOR, False),
        ("dana", Role.ADMIN, False),
        ("erin", Role.BOT, True),
    ]
    assert all(t.expires_at is None and t.created_at.tzinfo is not None for t in listed)


async def test_a_token_authenticates_until_its_end_and_is_listed_with_it(
    engine: AsyncEngine,
) -> None:
    sessions = session_factory(engine)
    end = NOW + timedelta(days=30)
    token = await issue_token(sessions, principal="dana", role=Role.OPERATOR, expires_at=end)
    forever = await issue_token(sessions, principal="erin", role=Role.BOT)
    dana = Principal("dana", Role.OPERATOR)
    assert await principal_for_token(sessions, hash_token(token), NOW) == dana
    assert await principal_for_token(sessions, hash_token(token), end - timedelta(seconds=1)) == (
        dana
    )
    assert await principal_for_token(sessions, hash_token(token), end) is None
    assert await principal_for_token(sessions, hash_token(token), end + timedelta(days=1)) is None
    far = NOW + timedelta(days=3650)
    assert await principal_for_token(sessions, hash_token(forever), far) is not None
    by_principal = {t.principal: t for t in await list_tokens(sessions)}
    assert by_principal["dana"].expires_at == end
    assert by_principal["dana"].state(NOW) == "active"
    assert by_principal["dana"].state(end) == "expired"
    assert by_principal["erin"].expires_at is None
    assert by_principal["erin"].state(far) == "active"
    await revoke_tokens(sessions, principal="dana")
    [dana_row] = [t for t in await list_tokens(sessions) if t.principal == "dana"]
    assert dana_row.state(NOW) == "revoked"
