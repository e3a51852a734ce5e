"""Tokens issued and revoked by ``hitl tokens`` authenticate (and stop) through HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update

from store.tables import ApiTokenRow
from tests.api.conftest import Api


def tokens_cli(url: str, action: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", "tokens", action, "--url", url, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parents[2],
        timeout=60,
    )


async def test_issued_token_works_until_revoked(api: Api) -> None:
    url = api.settings.database_url
    issued = await asyncio.to_thread(tokens_cli, url, "issue", "dana", "operator")
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert len(token) >= 32
    async with api.gw.sessions() as session:
        [row] = (
            await session.execute(select(ApiTokenRow).where(ApiTokenRow.principal == "dana"))
        ).scalars()
        assert row.token_hash != token  # only the hash is stored
        assert token not in row.token_hash
    headers = {"Authorization": f"Bearer {token}"}
    # dana is an operator by role but not on HITL_ALLOWED_OPERATORS: authenticated, then 403.
    status = await api.http.get("/api/guardian/status", headers=headers)
    assert status.status_code == 200
    revoked = await asyncio.to_thread(tokens_cli, url, "revoke", "dana")
    assert revoked.returncode == 0, revoked.stderr
    after = await api.http.get("/api/guardian/status", headers=headers)
    assert after.status_code == 401
    assert after.json()["error_code"] == "SEC-001"
    listing = await asyncio.to_thread(tokens_cli, url, "list")
    assert "dana\toperator" in listing.stdout
    assert "revoked" in listing.stdout
    assert token not in listing.stdout


async def test_a_token_issued_with_an_end_stops_working_there(api: Api) -> None:
    url = api.settings.database_url
    issued = await asyncio.to_thread(
        tokens_cli, url, "issue", "erin", "operator", "--expires-in", "30d"
    )
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert "expires" in issued.stderr
    headers = {"Authorization": f"Bearer {token}"}
    assert (await api.http.get("/api/guardian/status", headers=headers)).status_code == 200
    async with api.gw.sessions() as session:
        [row] = (
            await session.execute(select(ApiTokenRow).where(ApiTokenRow.principal == "erin"))
        ).scalars()
    assert row.expires_at is not None
    assert timedelta(days=29, hours=23) < row.expires_at - datetime.now(UTC) <= timedelta(days=30)
    listing = await asyncio.to_thread(tokens_cli, url, "list")
    [line] = [line for line in listing.stdout.splitlines() if line.startswith("erin\t")]
    assert line.split("\t")[3:] == ["active", f"expires {row.expires_at:%Y-%m-%d %H:%M}"]
    # Past its end the token is refused everywhere, and listed as expired.
    async with api.gw.sessions.begin() as session:
        await session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.principal == "erin")
            .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
        )
    assert (await api.http.get("/api/guardian/status", headers=headers)).status_code == 401
    listing = await asyncio.to_thread(tokens_cli, url, "list")
    [line] = [line for line in listing.stdout.splitlines() if line.startswith("erin\t")]
    assert line.split("\t")[3] == "expired"


def test_a_lifetime_must_be_a_positive_duration(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"
    for bad in ("30", "0d", "forever", "-1d", "3y"):
        refused = tokens_cli(url, "issue", "erin", "operator", "--expires-in", bad)
        assert refused.returncode == 2, bad
        assert "--expires-in" in refused.stderr
