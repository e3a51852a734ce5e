"""The gateway as production runs it: the Temporal dev server, the worker and the API as
separate processes on free loopback ports, over a fresh database."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import httpx
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client

from bench import procs
from hitl.keys import KEYS_DIR_VARIABLE, ensure_keyrings
from hitl.settings import Settings, get_settings
from hitl.signing import CommandSigner
from launcher.run import temporal_binary
from launcher.supervisor import ORPHAN_GUARD
from workflows.client import ApprovalClient
from workflows.connection import connect_temporal

REPO = Path(__file__).resolve().parents[1]

TOKENS = {"bot-1": "bench-bot-token", "alice": "bench-alice-token", "admin": "bench-admin-token"}
ROLES = {"bot-1": "bot", "alice": "operator", "admin": "admin"}
OPERATOR = "alice"

DEFAULT_PRAGMAS = ("journal_mode=wal", "synchronous=normal")
"""The dev server's SQLite settings, as ``make run`` starts it (TEMPORAL-NOTES.md: about 2.3x the
throughput of the defaults)."""

READY_SECONDS = 120.0
START_ATTEMPTS = 3
STOP_SECONDS = 20.0
# Pending approvals must not expire while the benchmark works on them; the expiry figure starts
# its own approvals with a short deadline.
BENCH_TIMEOUT_SECONDS = 4 * 3600


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` is ``env`` inside the block (settings are read from the environment)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_of(env: Mapping[str, str]) -> Settings:
    """The settings a gateway process started with ``env`` reads, so the benchmark's own
    Temporal client connects exactly as the worker and the API do.

    They also become this process's ``get_settings()``: the typed client reads it when it starts
    an approval (the summary's expected deadline, the page link).
    """
    with _environment(env):
        get_settings.cache_clear()
        return get_settings()


class StackError(Exception):
    """The stack did not start, or one of its processes died."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


@dataclass
class Proc:
    """One child process, its output going to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    cpu_offset: float = 0.0
    """CPU seconds of the earlier processes this one replaced (a worker restarted with another
    policy), so the per-phase deltas of ``cpu_seconds`` stay whole."""

    @property
    def pid(self) -> int:
        """The process id (the orphan guard execs the program, so it is the program's)."""
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """CPU seconds used so far (with those of the processes it replaced)."""
        return self.cpu_offset + procs.cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        """Resident memory now, in MiB."""
        return procs.rss_mb(self.pid)

    def check(self) -> None:
        """Raise StackError if the process has ended."""
        code = self.popen.poll()
        if code is not None:
            tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise StackError(f"the {self.name} exited with code {code}:\n{tail}")


@dataclass
class StackConfig:
    """How to start the stack."""

    workdir: Path
    database_url: str
    worker_cache: int | None = None
    """``HITL_WORKER_MAX_CACHED_WORKFLOWS``; None leaves the worker's default."""
    pragmas: Sequence[str] = DEFAULT_PRAGMAS
    server_config: Sequence[str] = ()
    """``KEY=VALUE`` dynamic configuration values for the dev server (tuning experiments)."""
    worker_options: str | None = None
    """JSON for ``bench.tuned_worker`` (a tuning experiment); None runs ``python -m worker``."""
    extra_env: Mapping[str, str] = field(default_factory=dict)


def declared_tokens() -> str:
    """The ``HITL_API_TOKENS`` value of the benchmark's principals."""
    return ",".join(f"{name}:{ROLES[name]}:{token}" for name, token in TOKENS.items())


class Stack:
    """A started stack; ``stop()`` ends every process it started."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        (
            self.temporal_port,
            self.api_port,
            self.metrics_port,
            self.server_metrics_port,
        ) = free_ports(4)
        self.procs: dict[str, Proc] = {}
        self.client: Client | None = None

    @property
    def keys_dir(self) -> Path:
        """The keyrings every process of the stack shares (created by ``start``)."""
        return self.config.workdir / "keys"

    @property
    def api_url(self) -> str:
        """The API's root URL."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def temporal_address(self) -> str:
        """The dev server's gRPC address."""
        return f"127.0.0.1:{self.temporal_port}"

    def env(self) -> dict[str, str]:
        """The environment of the worker and the API: nothing of the caller's gateway settings."""
        base = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("HITL_", "TEMPORAL_", "DATABASE_", "MARKET_DATA_", "DISCORD_"))
        }
        base |= {
            "TEMPORAL_ADDRESS": self.temporal_address,
            "DATABASE_URL": self.config.database_url,
            "HITL_DATA_DIR": str(self.config.workdir / "data"),
            # One keys folder for all: the API signs commands the worker verifies, and every
            # process encrypts and decrypts the same payloads (issue 14).
            KEYS_DIR_VARIABLE: str(self.keys_dir),
            "HITL_ALLOWED_OPERATORS": OPERATOR,
            "HITL_API_TOKENS": declared_tokens(),
            "HITL_API_RATE_LIMIT": "100000/second",
            # The driver is one client address: the per-address limit must not pace it.
            "HITL_API_ADDRESS_RATE_LIMIT": "100000/second",
            "HITL_TIMEOUT_SECONDS": str(BENCH_TIMEOUT_SECONDS),
            "HITL_WORKER_METRICS_PORT": str(self.metrics_port),
            # Its own database server: the paper market must be asked for (SEC-040 otherwise).
            "HITL_MARKET": "simulated",
        }
        if self.config.worker_cache is not None:
            base["HITL_WORKER_MAX_CACHED_WORKFLOWS"] = str(self.config.worker_cache)
        base |= dict(self.config.extra_env)
        return base

    def approvals(self) -> ApprovalClient:
        """A typed client over the stack's Temporal, signing with the stack's commands keyring
        (the default signer would read this process's settings, not the stack's)."""
        assert self.client is not None, "the stack is started"
        return ApprovalClient(self.client, signer=CommandSigner.from_keys_dir(self.keys_dir))

    def _spawn(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> Proc:
        log_path = self.config.workdir / f"{name}.log"
        log_file = log_path.open("ab")
        # The orphan guard (as make run uses it) ends the child if the benchmark is killed.
        # Spawned from the main thread: the kernel ties the guard to the spawning thread.
        popen = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", ORPHAN_GUARD, str(os.getpid()), *argv],
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        proc = Proc(name=name, popen=popen, log_path=log_path, log_file=log_file)
        self.procs[name] = proc
        return proc

    async def start(self) -> None:
        """Migrate, start the three processes and wait until ``/readyz`` answers 200.

        Tried up to three times on fresh ports: the dev server picks free ports for its own
        internal services and, rarely, takes the one chosen for its frontend first (it then
        exits with "address already in use").
        """
        for attempt in range(START_ATTEMPTS):
            try:
                await self._start_once()
                return
            except StackError:
                await self.stop()
                if attempt == START_ATTEMPTS - 1:
                    raise
                for proc in self.procs.values():
                    proc.log_path.rename(proc.log_path.with_suffix(f".failed-{attempt + 1}.log"))
                self.procs.clear()
                (
                    self.temporal_port,
                    self.api_port,
                    self.metrics_port,
                    self.server_metrics_port,
                ) = free_ports(4)
                if (self.config.workdir / "temporal.db").exists():
                    (self.config.workdir / "temporal.db").unlink()

    async def migrate(self, database_url: str) -> None:
        """Bring the database of ``database_url`` to the current schema, as ``make run`` does."""
        migrate = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "migrations.runner",
            "upgrade",
            "--url",
            database_url,
            cwd=REPO,
            env=self.env(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await migrate.communicate()
        if migrate.returncode != 0:
            raise StackError(f"migrations failed: {errors.decode(errors='replace')[-2000:]}")

    async def _start_once(self) -> None:
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        # The worker and the API refuse to start without their keyrings.
        ensure_keyrings(self.keys_dir, now=datetime.now(UTC))
        env = self.env()
        await self.migrate(self.config.database_url)
        server_argv = [
            str(temporal_binary()),
            "server",
            "start-dev",
            "--db-filename",
            str(self.config.workdir / "temporal.db"),
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.temporal_port),
            "--log-level",
            "error",
            "--metrics-port",
            str(self.server_metrics_port),
        ]
        for pragma in self.config.pragmas:
            server_argv += ["--sqlite-pragma", pragma]
        for value in self.config.server_config:
            server_argv += ["--dynamic-config-value", value]
        self._spawn("server", server_argv, env)
        self.client = await self._wait_for_temporal(settings_of(env))
        self._spawn_worker(env)
        self._spawn(
            "api",
            [
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
            ],
            env,
        )
        await self._wait_for_api()

    def _spawn_worker(self, env: Mapping[str, str]) -> Proc:
        if self.config.worker_options is None:
            return self._spawn("worker", [sys.executable, "-m", "worker"], env)
        tuned = {**env, "BENCH_WORKER_OPTIONS": self.config.worker_options}
        return self._spawn("worker", [sys.executable, "-m", "bench.tuned_worker"], tuned)

    async def restart_worker(self, overrides: Mapping[str, str] | None = None) -> None:
        """Stop the worker and start it again with ``overrides`` on the stack's environment.

        The approval policy is the worker's (issue 14), taken once when a workflow starts: the
        expiry phase restarts the worker with a short ``HITL_TIMEOUT_SECONDS`` for its own
        approvals, then back, and approvals already pending keep their long deadline. The
        replaced worker's CPU is carried over, less whatever it spends shutting down.
        """
        old = self.procs["worker"]
        spent = old.cpu_seconds()
        await self._stop_proc(old)
        new = self._spawn_worker({**self.env(), **(overrides or {})})
        new.cpu_offset = spent
        await self._wait_for_worker()

    async def _wait_for_worker(self) -> None:
        """Until the new worker's metrics endpoint answers (it serves it as it starts; a start sent
        before it polls just waits for it)."""
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            self.check()
            if await self._metrics_answer():
                return
            await asyncio.sleep(0.25)
        raise StackError("the restarted worker was not ready")

    async def _metrics_answer(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                answer = await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        except httpx.HTTPError:
            return False
        return answer.status_code == httpx.codes.OK

    async def server_requests(self) -> dict[str, float]:
        """The requests the dev server's frontend has served so far, by operation (its
        ``service_requests`` counter): counts, the same on any machine."""
        async with httpx.AsyncClient(timeout=5) as http:
            answer = await http.get(f"http://127.0.0.1:{self.server_metrics_port}/metrics")
        answer.raise_for_status()
        served: dict[str, float] = {}
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                if sample.name in ("service_requests", "service_requests_total") and (
                    sample.labels.get("service_name") == "frontend"
                ):
                    operation = sample.labels.get("operation", "")
                    served[operation] = served.get(operation, 0.0) + sample.value
        return served

    def check(self) -> None:
        """Raise StackError if a process of the stack has died."""
        for proc in self.procs.values():
            proc.check()

    async def _wait_for_temporal(self, settings: Settings) -> Client:
        deadline = time.monotonic() + READY_SECONDS
        problem = "no answer"
        while time.monotonic() < deadline:
            self.check()
            try:
                async with asyncio.timeout(5):
                    client = await connect_temporal(settings)
                    await client.count_workflows("WorkflowType='ApprovalWorkflow'")
                    return client
            except Exception as exc:  # not ready yet; reported on time-out
                problem = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.25)
        raise StackError(f"the Temporal dev server was not ready ({problem})")

    async def _wait_for_api(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        problem = "no answer"
        async with httpx.AsyncClient(base_url=self.api_url, timeout=5) as http:
            while time.monotonic() < deadline:
                self.check()
                try:
                    answer = await http.get("/readyz")
                    if answer.status_code == httpx.codes.OK:
                        return
                    problem = answer.text
                except httpx.HTTPError as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.25)
        raise StackError(f"the API was not ready ({problem})")

    async def stop(self) -> None:
        """Stop the API, the worker, then the server: SIGTERM, SIGKILL after a grace period."""
        for name in ("api", "worker", "server"):
            proc = self.procs.get(name)
            if proc is not None:
                await self._stop_proc(proc)

    @staticmethod
    async def _stop_proc(proc: Proc) -> None:
        """SIGTERM, SIGKILL after the grace period; the log closed."""
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(proc.popen.wait, STOP_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.kill()
                await asyncio.to_thread(proc.popen.wait)
        proc.log_file.close()
