"""The test session's own PostgreSQL (tests/postgres_server.py), started and stopped for real."""

from __future__ import annotations

import socket

import asyncpg

from tests.postgres_server import answers, start_temporary_postgres


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_temporary_server_serves_its_database_and_leaves_nothing_behind() -> None:
    port = _free_port()
    server = start_temporary_postgres(
        host="127.0.0.1", port=port, superuser="tester", database="checks"
    )
    try:
        assert answers("127.0.0.1", port)
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user="tester", database="checks")
        try:
            version = await conn.fetchval("SHOW server_version_num")
        finally:
            await conn.close()
        assert int(version) // 10000 == 16  # the major version production runs
    finally:
        server.stop()
    assert not answers("127.0.0.1", port)
    assert not server.folder.exists()
