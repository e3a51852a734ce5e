"""The chaos suite's machinery: the gateway as separate processes that can be killed and started
again, a private PostgreSQL server that can be stopped, a steady load, and the invariants.

Everything runs on free loopback ports in a temporary folder. The shared PostgreSQL server of the
test suite is never touched: the scenario that stops PostgreSQL starts its own from the
machine's PostgreSQL binaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from sqlalchemy import func, select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.market_providers import SimulatedMarketData
from launcher.run import temporal_binary
from launcher.supervisor import ORPHAN_GUARD
from store.engine import create_engine
from store.tables import ApprovalRow, AuditRow, EventRow

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"bot-1": "chaos-bot-token", "alice": "chaos-alice-token", "admin": "chaos-admin-token"}
ROLES = {"bot-1": "bot", "alice": "operator", "admin": "admin"}
READY_SECONDS = 90.0
STOP_SECONDS = 15.0
ANSWER_WITHIN = 2.0
"""How fast the API must answer when a dependency is down (issue #16)."""
DECISION_STATES = ("ACCEPTED", "REJECTED")


PORT_ATTEMPTS = 3
"""How many loopback ports the API is tried on at a stack's start."""


class ProcessDied(AssertionError):
    """A process of the stack ended while the harness waited for it."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def answers(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port``."""
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _wait(predicate: Any, *, seconds: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    problem = "no answer"
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
        except ProcessDied:
            raise
        except Exception as exc:  # not yet; reported at the deadline
            problem = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not ready after {seconds:.0f} s ({problem})")


# --- a private PostgreSQL ---------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL cluster of our own in a temporary folder, run as the ``postgres`` user."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_ports(1)[0]
        self.log = root / "postgres.log"

    @staticmethod
    def available() -> bool:
        """Whether the machine has the binaries (and a ``postgres`` user when we are root)."""
        return shutil.which("initdb") is not None and shutil.which("pg_ctl") is not None

    def _run(self, *argv: str) -> None:
        command = list(argv)
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of its ``hitl`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/hitl"

    def init(self) -> None:
        """Create the cluster and the ``hitl`` database, and start it."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "hitl")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} -h 127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log), "-w", "start")

    def stop(self) -> None:
        """Stop the server (fast shutdown: connections are cut)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        """Stop it if running and remove its files."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# --- a door that can be shut -------------------------------------------------------------------


class Door:
    """A TCP door on its own loopback port in front of a local server (a fake of Discord's
    REST API): shut, connections to it are refused and the open ones cut, as when the network
    to a service goes; opened again, on the same port, it forwards as before."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_ports(1)[0]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        """Accept and forward connections."""
        self._server = await asyncio.start_server(
            self._link, "127.0.0.1", self.port, reuse_address=True
        )

    async def shut(self) -> None:
        """Refuse new connections and cut every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.target_port
            )
        except OSError:
            writer.close()
            return
        pair = {writer, upstream_writer}
        self._writers |= pair
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            for end in pair:
                end.close()
            self._writers -= pair

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


# --- the gateway's processes ------------------------------------------------------------------


@dataclass
class Proc:
    """One child process; output to a log file."""

    popen: subprocess.Popen[bytes]
    log_file: IO[bytes]


@dataclass
class ChaosStack:
    """The Temporal dev server (on a file), the worker and the API, each separately killable."""

    workdir: Path
    database_url: str
    extra_env: Mapping[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.temporal_port, self.api_port, self.metrics_port = free_ports(3)
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def api_url(self) -> str:
        """The API's root URL."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def temporal_address(self) -> str:
        """The dev server's gRPC address."""
        return f"127.0.0.1:{self.temporal_port}"

    def env(self) -> dict[str, str]:
        """The children's environment: none of the caller's gateway settings leak in."""
        base = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("HITL_", "TEMPORAL_", "DATABASE_", "MARKET_DATA_", "DISCORD_"))
        }
        base |= {
            "TEMPORAL_ADDRESS": self.temporal_address,
            "DATABASE_URL": self.database_url,
            "HITL_DATA_DIR": str(self.workdir / "data"),
            "HITL_ALLOWED_OPERATORS": "alice",
            "HITL_API_TOKENS": ",".join(f"{p}:{ROLES[p]}:{t}" for p, t in TOKENS.items()),
            "HITL_API_RATE_LIMIT": "100000/second",
            "HITL_WORKER_METRICS_PORT": str(self.metrics_port),
            "HITL_RECONCILE_SECONDS": "5",
            # The simulated market on purpose, also on PostgreSQL (SEC-040 otherwise).
            "HITL_MARKET": "simulated",
            # The keyrings the test session made (tests/conftest.py): every process needs them.
            "HITL_KEYS_DIR": os.environ["HITL_KEYS_DIR"],
        }
        return base | dict(self.extra_env)

    def _argv(self, name: str) -> list[str]:
        if name == "temporal":
            return [
                str(temporal_binary()),
                "server",
                "start-dev",
                "--db-filename",
                str(self.workdir / "temporal.db"),
                "--headless",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.temporal_port),
                "--log-level",
                "error",
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ]
        if name == "worker":
            return [sys.executable, "-m", "worker"]
        if name == "api":
            return [
                sys.executable,
                "-m",
                "uvicorn",
                "api.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.api_port),
                "--log-level",
                "warning",
            ]
        if name == "discord":
            return [sys.executable, "-m", "discord_bot"]
        raise ValueError(name)

    def spawn(
        self, name: str, *, program: str | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        """Start the named process (again): ``program`` (one of ``_argv``'s names, default
        ``name``) with ``env`` over the stack's environment, e.g. a second worker."""
        log_file = (self.workdir / f"{name}.log").open("ab")
        argv = self._argv(program or name)
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", ORPHAN_GUARD, str(os.getpid()), *argv],
            cwd=REPO,
            env=self.env() | dict(env or {}),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        self.procs[name] = Proc(popen=popen, log_file=log_file)

    def kill9(self, name: str) -> None:
        """``kill -9`` the named process and reap it."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait()
        proc.log_file.close()

    def alive(self, name: str) -> bool:
        """Whether the named process runs."""
        proc = self.procs.get(name)
        return proc is not None and proc.popen.poll() is None

    def log_tail(self, name: str, size: int = 3000) -> str:
        """The end of the named process's log."""
        path = self.workdir / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace")[-size:] if path.exists() else ""

    async def client(self) -> Client:
        """A Temporal client of the stack's server."""
        return await Client.connect(self.temporal_address, data_converter=pydantic_data_converter)

    async def wait_temporal(self) -> None:
        """Until the dev server answers."""

        async def ready() -> bool:
            async with asyncio.timeout(5):
                client = await self.client()
                await client.count_workflows()
            return True

        await _wait(ready, seconds=READY_SECONDS, what="Temporal")

    async def wait_api(self) -> None:
        """Until ``/readyz`` answers 200 (database, Temporal and a worker)."""
        async with httpx.AsyncClient(base_url=self.api_url, timeout=5) as http:

            async def ready() -> bool:
                if not self.alive("api"):
                    raise ProcessDied(f"the API died:\n{self.log_tail('api')}")
                return (await http.get("/readyz")).status_code == httpx.codes.OK

            await _wait(ready, seconds=READY_SECONDS, what="the API")

    async def wait_alive(self) -> None:
        """Until the API process answers ``/healthz`` (ready or not)."""
        async with httpx.AsyncClient(base_url=self.api_url, timeout=5) as http:

            async def alive() -> bool:
                if not self.alive("api"):
                    raise ProcessDied(f"the API died:\n{self.log_tail('api')}")
                return (await http.get("/healthz")).status_code == httpx.codes.OK

            await _wait(alive, seconds=READY_SECONDS, what="the API process")

    async def start(self) -> None:
        """Migrate, then start the server, the worker and the API; wait until ready."""
        migrate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "migrations.runner",
            "upgrade",
            "--url",
            self.database_url,
            cwd=REPO,
            env=self.env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await migrate.communicate()
        assert migrate.returncode == 0, errors.decode(errors="replace")[-2000:]
        self.spawn("temporal")
        await self.wait_temporal()
        self.spawn("worker")
        for attempt in range(PORT_ATTEMPTS):
            self.spawn("api")
            try:
                await self.wait_api()
                return
            except ProcessDied as died:
                # The port was free when picked, seconds ago; an outgoing connection of this
                # busy machine may have taken it since (seen once in CI). Another, then.
                if "address already in use" not in str(died) or attempt == PORT_ATTEMPTS - 1:
                    raise
                self.procs["api"].log_file.close()
                self.api_port = free_ports(1)[0]

    def stop(self) -> None:
        """Stop everything: SIGTERM, SIGKILL after a grace period (extra processes first)."""
        standard = ("discord", "api", "worker", "temporal")
        for name in [*(n for n in self.procs if n not in standard), *standard]:
            proc = self.procs.get(name)
            if proc is None:
                continue
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.terminate()
                try:
                    proc.popen.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
            proc.log_file.close()


# --- the load ---------------------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP answer (or a failure to get one) the load received."""

    method: str
    path: str
    status: int
    """0: no answer (connection refused or reset, time-out)."""
    seconds: float
    error_code: str | None = None


@dataclass
class Load:
    """A steady, bounded load: bots request approvals and an operator decides each one.

    Every request is retried with the same trade id until the API gives a definitive answer
    (201, or 409 SEC-011 for a request an earlier attempt made); every decision until 200 or a
    definitive refusal. The answers are kept for the invariants.
    """

    api_url: str
    concurrency: int = 3
    pause: float = 0.2
    answers: list[Answer] = field(default_factory=list)
    created: set[uuid.UUID] = field(default_factory=set)
    decided: dict[uuid.UUID, int] = field(default_factory=dict)
    """The HTTP status that ended each decision."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start the load's clients."""
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.concurrency)]

    async def stop(self, *, timeout: float = 180.0) -> None:
        """Let every client finish the trade in hand, then stop."""
        self._stop.set()
        async with asyncio.timeout(timeout):
            await asyncio.gather(*self._tasks)

    async def run_for(self, seconds: float) -> None:
        """Keep the load on for ``seconds``."""
        await asyncio.sleep(seconds)

    def statuses(self) -> Counter[int]:
        """How many answers of each status (0: no answer)."""
        return Counter(answer.status for answer in self.answers)

    async def _client(self, index: int) -> None:
        market = SimulatedMarketData()
        async with httpx.AsyncClient(base_url=self.api_url, timeout=15) as http:
            turn = 0
            while not self._stop.is_set():
                turn += 1
                trade_id = uuid.uuid4()
                body = {
                    "trade_id": str(trade_id),
                    "instrument": "EUR/USD",
                    "side": "BUY",
                    "risk_pct": "1.5",
                    "confidence": "0.8",
                    "request_price": str(market.mid_price("EUR/USD")),
                    "reasoning_summary": f"chaos load {index}",
                }
                if not await self._until_definitive(
                    http, "/api/hitl/requests", body, TOKENS["bot-1"], {201, 409}
                ):
                    continue
                self.created.add(trade_id)
                action = "approve" if turn % 2 else "reject"
                status = await self._until_definitive(
                    http,
                    f"/api/hitl/{trade_id}/{action}",
                    {"comment": "chaos"} if action == "approve" else {"reason": "chaos"},
                    TOKENS["alice"],
                    {200, 409, 410},
                )
                self.decided[trade_id] = status
                await asyncio.sleep(self.pause)

    async def _until_definitive(
        self,
        http: httpx.AsyncClient,
        path: str,
        body: dict[str, Any],
        token: str,
        definitive: set[int],
    ) -> int:
        """POST until a definitive answer; returns its status (0 if the load stopped first)."""
        while True:
            began = time.monotonic()
            try:
                answer = await http.post(
                    path, json=body, headers={"Authorization": f"Bearer {token}"}
                )
                status = answer.status_code
                code = None
                with contextlib.suppress(ValueError, AttributeError):
                    code = answer.json().get("error_code")
            except httpx.HTTPError:
                status, code = 0, None
            self.answers.append(
                Answer("POST", path, status, time.monotonic() - began, error_code=code)
            )
            if status in definitive:
                return status
            if status not in (0, 502, 503, 504):
                raise AssertionError(f"POST {path} answered {status} {code}")
            await asyncio.sleep(0.5)


# --- the invariants ---------------------------------------------------------------------------


@dataclass
class Verdict:
    """What the invariants found after a scenario."""

    approvals: int
    decided_once: int
    failed_workflows: int
    five_hundreds: int
    slow_errors: int
    """Error answers (503, no answer excluded) that took longer than ``ANSWER_WITHIN``."""
    statuses: dict[int, int]

    @property
    def ok(self) -> bool:
        """Every approval decided exactly once, no workflow FAILED, no 500."""
        return (
            self.approvals == self.decided_once
            and self.failed_workflows == 0
            and self.five_hundreds == 0
        )


async def verdict(stack: ChaosStack, load: Load, *, settle_seconds: float = 60.0) -> Verdict:
    """Wait until every approval the load made is decided, then check the invariants."""
    engine = create_engine(stack.database_url)
    try:

        async def all_decided() -> bool:
            async with engine.connect() as conn:
                pending = await conn.execute(
                    select(func.count())
                    .select_from(ApprovalRow)
                    .where(ApprovalRow.status == "AWAITING_APPROVAL")
                )
                return pending.scalar_one() == 0

        await _wait(all_decided, seconds=settle_seconds, what="every approval decided")
        async with engine.connect() as conn:
            rows = (await conn.execute(select(ApprovalRow.trade_id))).scalars().all()
            decisions = Counter(
                (
                    await conn.execute(
                        select(AuditRow.target_id).where(
                            AuditRow.previous_state == "AWAITING_APPROVAL",
                            AuditRow.new_state.in_(DECISION_STATES),
                        )
                    )
                ).scalars()
            )
            events = Counter(
                (
                    await conn.execute(
                        select(EventRow.trade_id).where(
                            EventRow.event_type.in_(("hitl.decided", "hitl.expired"))
                        )
                    )
                ).scalars()
            )
    finally:
        await engine.dispose()
    client = await stack.client()
    failed = await client.count_workflows("ExecutionStatus = 'Failed'")
    once = sum(1 for trade in rows if decisions[str(trade)] == 1 and events[trade] == 1)
    missing = load.created - set(rows)
    assert not missing, f"approvals the API acknowledged but never stored: {missing}"
    return Verdict(
        approvals=len(rows),
        decided_once=once,
        failed_workflows=failed.count,
        five_hundreds=sum(1 for a in load.answers if a.status >= 500 and a.status != 503),
        slow_errors=sum(1 for a in load.answers if a.status == 503 and a.seconds > ANSWER_WITHIN),
        statuses=dict(load.statuses()),
    )


def audit_verify(stack: ChaosStack) -> subprocess.CompletedProcess[str]:
    """``hitl audit verify`` as an auditor runs it, in the stack's environment (its data folder
    holds the worker's checkpoint file)."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "hitl"), "audit", "verify"],
        cwd=REPO,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
