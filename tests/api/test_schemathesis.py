"""Schemathesis over the OpenAPI schema, against the real app on uvicorn with Temporal and a
database behind it: no input produces a server error or a response the schema does not
declare."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.testing import WorkflowEnvironment

from tests.api.conftest import Served, serve_api
from tests.temporal_fixtures import start_gateway

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


@pytest.fixture
async def served(
    dev_env: WorkflowEnvironment, sqlite_url: str, sqlite_sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[Served]:
    gw = await start_gateway(dev_env, sqlite_sessions)
    async with gw.worker:
        # A short decision budget: a fuzzed decision on a live approval answers in bounded time.
        async for served in serve_api(gw, sqlite_url, decision_timeout_seconds=3.0):
            yield served


@pytest.mark.parametrize("token", ["bot-token", "alice-token", "admin-token"])
async def test_no_server_error_and_no_schema_violation(
    served: Served, token: str, tmp_path: Path
) -> None:
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "st"),
        "run",
        f"{served.base_url}/openapi.json",
        "--checks",
        CHECKS,
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        "10",
        # One worker: with two, hypothesis parses schemathesis's source in both threads at once,
        # and CPython 3.11's parser can fail that race ("AST constructor recursion depth
        # mismatch"), a runtime error of the tool, not of the API.
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--phases",
        "examples,coverage,fuzzing",
        "--seed",
        "7",
        "--generation-database",
        "none",
        "--no-color",
        "--report-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 150)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
