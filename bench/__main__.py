"""``python -m bench``: run the benchmarks and write ``docs/benchmarks.md``.

Each run starts a fresh stack on a fresh database (an SQLite file in a temporary folder, or a new
database on the PostgreSQL server of ``--database-url``), runs every phase, and stops the stack.
The report holds the medians over the runs. ``--database-url`` is repeatable (issue 19 item 4):
``--database-url sqlite --database-url postgresql+asyncpg://...`` alternates the runs between the
two databases, so that a drift of the machine touches both alike, and the report shows them side by
side. ``--quick`` is the smoke mode of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import uvloop
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from bench import procs
from bench.databases import fresh_database
from bench.driver import Gateway
from bench.figures import QUICK, Bench, Measurement, Sizes
from bench.floor import quiet_logs
from bench.report import Context, DatabaseRuns, code_version, render
from bench.stack import DEFAULT_PRAGMAS, REPO, Stack, StackConfig
from store.engine import create_engine

PHASES = (
    "saturation",
    "floor",
    "latency",
    "expiry",
    "guardian_effect",
    "cascade",
    "scale",
    "scale_lock",
)

_started = time.monotonic()


def say(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench {time.monotonic() - _started:7.1f} s] {message}", file=sys.stderr, flush=True)


SQLITE = "sqlite"
"""The ``--database-url`` of the embedded default: a fresh SQLite file per run."""


def database_label(url: str) -> str | None:
    """SQLite or PostgreSQL, the database's name in the report; None for any other URL."""
    if url.startswith(SQLITE):
        return "SQLite"
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        return None
    return "PostgreSQL" if backend == "postgresql" else None


async def describe(url: str) -> str:
    """The database's line in the report; connecting first to a PostgreSQL server, so that one
    that does not answer stops the benchmark before it measures anything.

    Raises:
        SystemExit: the server did not answer.
    """
    if url.startswith(SQLITE):
        return "SQLite (embedded default), a fresh file per run"
    parsed = make_url(url)
    where = f"{parsed.host}:{parsed.port or 5432}"
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            version = (await conn.execute(text("SHOW server_version"))).scalar_one()
    except (OSError, SQLAlchemyError) as exc:
        raise SystemExit(
            f"python -m bench: no PostgreSQL answers at {where} ({exc.__class__.__name__}: {exc});"
            " start one, or leave that --database-url out (make bench BENCH_PG_URL=)"
        ) from exc
    finally:
        await engine.dispose()
    return f"PostgreSQL {version} on {where}, a fresh database per run"


async def one_run(
    index: int,
    database: DatabaseRuns,
    database_url: str,
    *,
    args: argparse.Namespace,
    sizes: Sizes,
    tmp: Path,
) -> Measurement:
    """One run on ``database``: a fresh stack and database, every phase, then everything
    stopped."""
    name = f"run {index + 1} ({database.label})"
    workdir = tmp / f"{database.label.lower()}-run-{index + 1}"
    workdir.mkdir(parents=True)
    async with fresh_database(database_url, workdir) as url:
        stack = Stack(
            StackConfig(
                workdir=workdir,
                database_url=url,
                worker_cache=args.worker_cache,
                pragmas=args.server_pragma,
                worker_options=args.worker_options,
                server_config=args.server_config,
                extra_env=args.gateway_env,
            )
        )
        engine = create_engine(url)
        gateway = Gateway(stack.api_url)
        try:
            say(f"{name}: starting the stack in {workdir}")
            await stack.start()
            bench = Bench(
                stack=stack,
                gateway=gateway,
                engine=engine,
                sizes=sizes,
                profile_dir=workdir / "profile" if index == 0 and args.profile else None,
            )
            bench.begin()
            await run_phases(bench, args.phases, name=name, check=stack.check)
            bench.finish()
            return bench.m
        finally:
            await gateway.aclose()
            await engine.dispose()
            await stack.stop()


async def run_phases(
    bench: Bench, phases: Sequence[str], *, name: str, check: Callable[[], None]
) -> None:
    """Run ``phases`` in order on one stack. A phase the gateway failed (a Guardian lock
    answered SEC-070 on a loaded host) ends this run with a note, not the invocation: the runs
    before it, and the figures of this one so far, are still reported."""
    for phase in phases:
        began = time.monotonic()
        say(f"{name}: {phase}")
        try:
            await getattr(bench, phase)()
        except (RuntimeError, TimeoutError, OSError) as exc:
            failure = f"{phase} failed: {type(exc).__name__}: {exc}"
            say(f"{name}: {failure}; the run's later phases are skipped")
            bench.m.notes.append(f"{name}: {failure}; its later phases were skipped")
            return
        check()
        shown = {
            key: round(value, 3)
            for key, value in bench.m.values.items()
            if key.startswith(phase.split("_")[0])
        }
        say(f"{name}: {phase} done in {time.monotonic() - began:.1f} s {shown}")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the gateway on its embedded stack and write docs/benchmarks.md.",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs to take medians of (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: tiny counts, one run, no profile"
    )
    parser.add_argument(
        "--database-url",
        action="append",
        metavar="URL",
        help=f"a database to measure, repeatable: '{SQLITE}' for the embedded default (a fresh"
        " SQLite file per run in a temporary folder) or a PostgreSQL URL (a fresh database per run"
        " on that server); with several, the runs alternate between them, --runs on each, and"
        f" the report shows them side by side (default: {SQLITE})",
    )
    parser.add_argument(
        "--scale-pending",
        type=int,
        default=Sizes().scale_pending,
        metavar="N",
        help="approvals pending in the scale phase (default 10000)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "docs" / "benchmarks.md",
        help="the report to write (default docs/benchmarks.md)",
    )
    parser.add_argument(
        "--worker-cache",
        type=int,
        metavar="N",
        help="HITL_WORKER_MAX_CACHED_WORKFLOWS for the worker (default: the worker's own)",
    )
    parser.add_argument(
        "--worker-options",
        metavar="JSON",
        help="a tuning experiment: run bench.tuned_worker with these Worker options, e.g."
        """ '{"sandbox": "off"}' or '{"max_concurrent_workflow_tasks": 50}'""",
    )
    parser.add_argument(
        "--server-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dynamic configuration value for the dev server, repeatable (tuning experiments)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the worker and the API, repeatable (experiments), e.g."
        " HITL_RECONCILE_SECONDS=10; it wins over the stack's own settings (the expiry phase"
        " still sets HITL_TIMEOUT_SECONDS for its worker)",
    )
    parser.add_argument(
        "--server-pragma",
        action="append",
        metavar="PRAGMA",
        help="an SQLite pragma for the dev server, repeatable; 'none' for its defaults"
        f" (default: {' '.join(DEFAULT_PRAGMAS)}, as make run)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run (default all: {','.join(PHASES)})",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip py-spy")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs, profiles)"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    phases = [phase.strip() for phase in args.phases.split(",") if phase.strip()]
    unknown = sorted(set(phases) - set(PHASES))
    if unknown:
        parser.error(f"unknown phases: {', '.join(unknown)}")
    args.phases = [phase for phase in PHASES if phase in phases]
    args.databases = []  # (URL, label)
    for url in args.database_url or [SQLITE]:
        label = database_label(url)
        if label is None:
            parser.error(f"--database-url: '{SQLITE}' or a postgresql URL, not {url!r}")
        args.databases.append((url, label))
    if len({label for _, label in args.databases}) < len(args.databases):
        parser.error("--database-url: each of SQLite and PostgreSQL at most once")
    args.gateway_env = {}
    for setting in args.env:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            parser.error(f"--env: NAME=VALUE, not {setting!r}")
        args.gateway_env[name] = value
    if args.server_pragma is None:
        args.server_pragma = list(DEFAULT_PRAGMAS)
    elif args.server_pragma == ["none"]:
        args.server_pragma = []
    if args.quick:
        args.runs = 1
        args.profile = False
    return args


async def main_async(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the benchmark and write the report; the exit code."""
    sizes = QUICK if args.quick else replace(Sizes(), scale_pending=args.scale_pending)
    databases = [
        (url, DatabaseRuns(label=label, description=await describe(url)))
        for url, label in args.databases
    ]
    tmp = Path(tempfile.mkdtemp(prefix="hitl-bench-"))
    quiet_logs(tmp / "floor.log")
    for noisy in ("httpx", "httpcore", "temporalio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    started = datetime.now(UTC)
    load_before = procs.load_average()
    code = await asyncio.to_thread(code_version)

    def context() -> Context:
        return Context(
            # --keep changes nothing measured, only what is left in /tmp.
            command=" ".join(["python -m bench", *(arg for arg in argv if arg != "--keep")]),
            sizes=sizes,
            quick=args.quick,
            worker_cache=args.worker_cache,
            worker_options=args.worker_options,
            server_config=args.server_config,
            pragmas=args.server_pragma,
            started=f"{started:%Y-%m-%d %H:%M} UTC",
            finished=f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            load_before=load_before,
            load_after=procs.load_average(),
            code=code,
        )

    ok = False
    try:
        # Alternating, so that a drift of the machine touches every database alike.
        for index in range(args.runs):
            for url, database in databases:
                run = await one_run(index, database, url, args=args, sizes=sizes, tmp=tmp)
                database.runs.append(run)
                # Written after every run, so a failure later keeps what was measured.
                report = render([runs for _, runs in databases], context(), out=args.out)
                await asyncio.to_thread(_write, args.out, report)
                say(f"report with {index + 1} run(s) on {database.label} written to {args.out}")
        ok = True
    finally:
        if not ok or args.keep:
            say(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parse(arguments)
    # On uvloop, as the worker runs: the floor's writes are the worker's activity code, timed in
    # this process, so they run on the same event loop as in the worker.
    return uvloop.run(main_async(args, arguments))


if __name__ == "__main__":
    sys.exit(main())
