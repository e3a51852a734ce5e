"""The report: medians over runs against the targets of issue 19 (issue 7's where it set none:
the Guardian's and the scale phase's latency), the machine they ran on, where
the CPU went, and the profile; written as markdown. Runs on several databases (issue 19 item 4)
are shown side by side: each table has one median and one range column per database.

The analysis (tuning and next bottleneck) is written by people between the two analysis markers;
a new report keeps whatever the previous file held there.
"""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs
from bench.driver import median
from bench.figures import GATEWAY_CPU, Measurement, Sizes
from bench.profile import Profile
from launcher.run import temporal_binary

_REPO = Path(__file__).resolve().parents[1]

_DASH = "\N{EN DASH}"

ANALYSIS_BEGIN = "<!-- analysis:begin -->"
ANALYSIS_END = "<!-- analysis:end -->"
_NO_ANALYSIS = (
    "_No analysis yet. Write the tuning made and the next bottleneck here, between the markers;"
    " `python -m bench` keeps this part of the file when it writes new results._"
)


@dataclass(frozen=True)
class Stats:
    """One value over the runs."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        """The median over the runs."""
        return median(self.values) if self.values else math.nan

    @property
    def low(self) -> float:
        """The smallest value."""
        return min(self.values) if self.values else math.nan

    @property
    def high(self) -> float:
        """The largest value."""
        return max(self.values) if self.values else math.nan


def collect(runs: Sequence[Measurement], key: str) -> Stats:
    """``key`` over the runs that measured it."""
    return Stats(tuple(run.values[key] for run in runs if key in run.values))


def _fmt(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Part:
    """One number shown in a figure's row."""

    key: str
    label: str
    unit: str
    digits: int = 0


@dataclass(frozen=True)
class Figure:
    """One row of the results table."""

    name: str
    how: str
    target: str
    parts: tuple[Part, ...]
    met: Callable[[Callable[[str], Stats]], bool] | None = None

    def measured(self, get: Callable[[str], Stats]) -> tuple[str, str]:
        """The median cell and the range cell."""
        medians, ranges = [], []
        for part in self.parts:
            stats = get(part.key)
            label = f"{part.label} " if part.label else ""
            medians.append(f"{label}{_fmt(stats.median, part.digits)}{part.unit}")
            ranges.append(
                f"{_fmt(stats.low, part.digits)}{_DASH}{_fmt(stats.high, part.digits)}{part.unit}"
            )
        return " / ".join(medians), " / ".join(ranges)

    def verdict(self, get: Callable[[str], Stats]) -> str:
        """met, not met, or a dash where the figure has no target."""
        if self.met is None:
            return "—"
        if any(math.isnan(get(part.key).median) for part in self.parts):
            return "not measured"
        return "**met**" if self.met(get) else "**not met**"


def _at_most(key: str, limit: float) -> Callable[[Callable[[str], Stats]], bool]:
    return lambda get: get(key).median <= limit


def _figures(sizes: Sizes) -> tuple[Figure, ...]:
    rate = f"{sizes.decision_rate:g}"
    return (
        Figure(
            "sustained approvals per second",
            f"REST create → notified → REST approve → recorded ACCEPTED, {sizes.saturation}"
            f" approvals at concurrency {sizes.concurrency}",
            "≥ 25/s",
            (Part("saturation_per_s", "", "/s", 1),),
            lambda get: get("saturation_per_s").median >= 25,
        ),
        Figure(
            "CPU per approval",
            "CPU time (user + system) of the dev server, the worker and the API together during"
            ' the saturation phase, per approval (each process under "Where the CPU goes")',
            "≤ 85 ms",
            (Part(GATEWAY_CPU, "", " ms", 1),),
            _at_most(GATEWAY_CPU, 85),
        ),
        Figure(
            "decision latency p50 / p99",
            f"REST approve → response, {sizes.latency_decisions} decisions at a steady {rate}/s",
            "p99 ≤ 100 ms",
            (
                Part("latency_p50_ms", "p50", " ms"),
                Part("latency_p99_ms", "p99", " ms"),
            ),
            _at_most("latency_p99_ms", 100),
        ),
        Figure(
            "expiry lateness p50 / p99",
            f"recorded decided_at - expires_at, {sizes.expiry:,} approvals requested in one burst"
            f" (concurrency {sizes.expiry_concurrency}) with a"
            f" {sizes.expiry_timeout_seconds} s deadline: their deadlines fall one after another"
            " at the rate they were requested (the spread is under Checks)",
            "p99 ≤ 1 s",
            (
                Part("expiry_p50_s", "p50", " s", 2),
                Part("expiry_p99_s", "p99", " s", 2),
            ),
            _at_most("expiry_p99_s", 1.0),
        ),
        Figure(
            "expiry lateness, committed",
            "the expiry's audit entry written (created_at) - expires_at, same approvals",
            "(reported)",
            (
                Part("expiry_committed_p50_s", "p50", " s", 2),
                Part("expiry_committed_p99_s", "p99", " s", 2),
            ),
        ),
        Figure(
            "Guardian effect",
            "lock acknowledged → first refused decision among those attempted after it"
            f" (decisions attempted at a steady {sizes.effect_rate:g}/s, and one at the"
            " acknowledgement); decisions attempted after it that succeeded",
            "≤ 100 ms; 0 succeeded",
            (
                Part("guardian_effect_ms", "", " ms", 1),
                Part("guardian_leaks", "succeeded", ""),
            ),
            lambda get: get("guardian_effect_ms").median <= 100 and get("guardian_leaks").high == 0,
        ),
        Figure(
            "Guardian cascade",
            f"lock acknowledged → all {sizes.cascade:,} pending recorded REJECTED"
            " (the lock writes only itself; the cascade rejects them after it, in batches, then"
            " tells their workflows)",
            "≤ 10 s",
            (Part("cascade_rejected_s", "", " s", 3),),
            _at_most("cascade_rejected_s", 10),
        ),
        Figure(
            "Guardian lock call",
            f"POST /api/guardian/lock → response, with {sizes.cascade:,} pending",
            "(reported)",
            (Part("cascade_lock_ms", "", " ms"),),
        ),
        Figure(
            "Guardian cascade, workflows",
            f"lock acknowledged → all {sizes.cascade:,} approval workflows signalled and completed",
            "(reported)",
            (Part("cascade_completed_s", "", " s", 1),),
        ),
        Figure(
            "scale: worker memory",
            f"worker RSS (VmRSS) with {sizes.scale_pending:,} approvals pending;"
            " peak while deciding",
            "≤ 300 MB",
            (
                Part("scale_rss_mb", "", " MiB"),
                Part("scale_rss_peak_mb", "peak", " MiB"),
            ),
            # MiB against MB: 300 MB is 286 MiB.
            lambda get: get("scale_rss_peak_mb").median <= 300e6 / 2**20,
        ),
        Figure(
            "scale: decision latency p50 / p99",
            f"REST approve → response at {rate}/s on approvals drawn at random from the"
            f" {sizes.scale_pending:,} waiting",
            "p99 ≤ 250 ms",
            (
                Part("scale_p50_ms", "p50", " ms"),
                Part("scale_p99_ms", "p99", " ms"),
            ),
            _at_most("scale_p99_ms", 250),
        ),
        Figure(
            "the floor",
            "the same database writes per approval (request, decision, snapshot) done directly"
            f" with the activity code, {sizes.floor} at concurrency {sizes.concurrency},"
            " in the same run; ratio = gateway / floor",
            "report the ratio",
            (
                Part("floor_per_s", "", "/s", 1),
                Part("floor_ratio", "ratio", "", 3),
            ),
        ),
    )


FIGURE_NAMES = tuple(figure.name for figure in _figures(Sizes()))
"""The row names of the results table, for the smoke test."""

_CPU_PARTS = (
    ("Temporal dev server", "cpu_ms_per_approval_server"),
    ("worker", "cpu_ms_per_approval_worker"),
    ("API", "cpu_ms_per_approval_api"),
    ("load driver (this benchmark)", "cpu_ms_per_approval_driver"),
    ("all four", "cpu_ms_per_approval_total"),
)

_SERVER_REQUESTS = (
    ("all requests (long polls included)", "server_requests_per_approval"),
    ("workflow tasks completed", "server_workflow_tasks_per_approval"),
    ("activity tasks completed", "server_activity_tasks_per_approval"),
    (
        "starts and Updates (an update-with-start once)",
        "server_starts_and_updates_per_approval",
    ),
)

_CHECKS = (
    (
        "saturation: approvals that failed (create or approve not 201/200 ACCEPTED)",
        "saturation_errors",
    ),
    ("saturation: approvals not recorded ACCEPTED in the database", "saturation_not_recorded"),
    ("saturation: approvals whose notification the worker did not log", "saturation_not_notified"),
    ("latency: decisions not answered 200 ACCEPTED", "latency_errors"),
    ("creations not answered 201 while filling: latency phase", "latency_create_errors"),
    ("creations not answered 201 while filling: Guardian effect", "guardian_create_errors"),
    ("creations not answered 201 while filling: cascade", "cascade_create_errors"),
    ("creations not answered 201 while filling: scale", "scale_create_errors"),
    ("expiry: approvals not rejected with HITL_TIMEOUT", "expiry_not_timeout"),
    ("expiry: spread of the deadlines (s)", "expiry_deadline_spread_s"),
    (
        "Guardian effect: decisions refused (423) that started before the acknowledgement",
        "guardian_refused_in_flight",
    ),
    ("Guardian effect: lock call (ms)", "guardian_lock_ms"),
    ("cascade: approvals pending when the lock came", "cascade_pending_before"),
    ("scale: approvals pending", "scale_pending"),
    ("scale: creation rate while filling (approvals/s)", "scale_create_per_s"),
    ("scale: worker RSS before filling (MiB)", "scale_rss_before_mb"),
    ("scale: dev server RSS (MiB)", "scale_server_rss_mb"),
    ("scale: API RSS (MiB)", "scale_api_rss_mb"),
    ("scale: decisions not answered 200 ACCEPTED", "scale_errors"),
    ("scale: slowest decision (ms)", "scale_max_ms"),
    ("lock at scale: approvals pending", "scale_lock_pending"),
    ("lock at scale: lock call (ms)", "scale_lock_ms"),
    ("lock at scale: the lock call's HTTP status", "scale_lock_status"),
    ("lock at scale: lock sent → none pending in the database (s)", "scale_lock_all_rejected_s"),
    ("saturation: CPU used by our processes (% of all cores)", "saturation_our_cpu_pct"),
    ("saturation: CPU used by other processes (% of all cores)", "saturation_foreign_cpu_pct"),
    ("whole run: CPU used by other processes (% of all cores)", "run_foreign_cpu_pct"),
    ("worker: activity attempts that failed (retried by Temporal)", "worker_activity_failures"),
)


@dataclass
class DatabaseRuns:
    """The runs on one database."""

    label: str
    """Its name in the tables' headings: SQLite, PostgreSQL."""
    description: str
    """Its line in the machine section."""
    runs: list[Measurement] = field(default_factory=list)

    def get(self, key: str) -> Stats:
        """``key`` over this database's runs."""
        return collect(self.runs, key)


@dataclass
class Context:
    """How the benchmark ran."""

    command: str
    sizes: Sizes
    quick: bool
    worker_cache: int | None
    worker_options: str | None
    server_config: Sequence[str]
    pragmas: Sequence[str]
    started: str
    finished: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    code: str = ""
    notes: list[str] = field(default_factory=list)


def _command_output(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def code_version() -> str:
    """The commit measured, and the gateway files changed since it (bench/ and docs/ aside)."""
    commit = _command_output(["git", "-C", str(_REPO), "rev-parse", "--short", "HEAD"])
    status = _command_output(["git", "-C", str(_REPO), "status", "--porcelain"])
    # "XY path" lines; the output was stripped, so split rather than slice.
    paths = [line.split(maxsplit=1)[-1] for line in status.splitlines() if line.strip()]
    changed = sorted(p for p in paths if not p.startswith(("bench/", "docs/", "tests/")))
    if not changed:
        return f"commit {commit}"
    return f"commit {commit} with uncommitted changes to {', '.join(changed)}"


def machine_lines(context: Context, databases: Sequence[DatabaseRuns]) -> list[str]:
    """The machine and software the runs used."""
    temporal = _command_output([str(temporal_binary()), "--version"])
    cache = (
        "the worker's default"
        if context.worker_cache is None
        else f"{context.worker_cache} (HITL_WORKER_MAX_CACHED_WORKFLOWS)"
    )
    return [
        f"- CPU: {procs.cpu_model()}, {_cores()} cores (nproc)",
        f"- memory: {procs.memory_total_mb() / 1024:.1f} GiB",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        f"- {temporal}",
        *(f"- database: {database.description}" for database in databases),
        f"- dev server SQLite pragmas: {', '.join(context.pragmas) or '(defaults)'};"
        f" dynamic config: {', '.join(context.server_config) or '(defaults)'};"
        f" worker workflow cache: {cache}",
        "- worker: "
        + (
            "`python -m worker` as shipped"
            if context.worker_options is None
            else f"tuning experiment `bench.tuned_worker` with `{context.worker_options}`"
        ),
        f"- load average before: {_load(context.load_before)}; after: {_load(context.load_after)}",
        f"- started {context.started}, finished {context.finished}",
        f"- code measured: {context.code}",
    ]


def _cores() -> int:
    return os.cpu_count() or 1


def _heads(
    databases: Sequence[DatabaseRuns], alone: Sequence[str], each: Sequence[str]
) -> list[str]:
    """The per-database headings of a table: ``alone`` with one database; with several, ``each``
    once per database, after its label."""
    if len(databases) == 1:
        return list(alone)
    return [f"{database.label} {head}" for database in databases for head in each]


def _table(heads: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _stats_cells(stats: Stats) -> list[str]:
    low, high = _fmt(stats.low, 1), _fmt(stats.high, 1)
    return [_fmt(stats.median, 1), f"{low}{_DASH}{high}"]


def _stats_rows(
    parts: Sequence[tuple[str, str]], databases: Sequence[DatabaseRuns]
) -> list[list[str]]:
    """One row per (label, key): the key's median and range on each database."""
    return [
        [label, *(cell for database in databases for cell in _stats_cells(database.get(key)))]
        for label, key in parts
    ]


def _ceiling(database: DatabaseRuns, alone: bool) -> list[str]:
    """What the CPU per approval allows on this machine's cores."""
    gateway_ms = sum(
        database.get(key).median
        for _, key in _CPU_PARTS[:3]
        if not math.isnan(database.get(key).median)
    )
    if gateway_ms <= 0:
        return []
    total_ms = database.get("cpu_ms_per_approval_total").median
    lead = "The gateway's" if alone else f"On {database.label}, the gateway's"
    return [
        "",
        f"{lead} three processes need {gateway_ms:.1f} ms of CPU per approval: on"
        f" {_cores()} cores with nothing else running (load driver included as measured:"
        f" {total_ms:.1f} ms), the ceiling is about {_cores() * 1000 / gateway_ms:.0f}"
        f" approvals/s ({_cores() * 1000 / total_ms:.0f}/s with this driver on the same cores).",
    ]


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.2f}" for value in load)


def _profile_lines(name: str, profile: Profile) -> list[str]:
    lines = [
        f"**{name}**: {profile.samples} samples at 100/s ({profile.seconds:.1f} s of thread time"
        " that py-spy did not count as idle; waits inside C code, such as SQLite's lock or"
        " `select`, still count).",
        "",
        "| where the samples were (leaf frame's package) | share |",
        "|---|---|",
    ]
    lines += [f"| {label} | {share:.0%} |" for label, share in profile.by_leaf_package]
    lines += ["", "| hottest functions (self) | share |", "|---|---|"]
    lines += [f"| `{label}` | {share:.0%} |" for label, share in profile.by_leaf_function]
    lines += ["", "| inclusive: samples passing through | share |", "|---|---|"]
    lines += [f"| {label} | {share:.0%} |" for label, share in profile.inclusive]
    return [*lines, ""]


def _previous_analysis(out: Path) -> str:
    if not out.exists():
        return _NO_ANALYSIS
    text = out.read_text(encoding="utf-8")
    begin, end = text.find(ANALYSIS_BEGIN), text.find(ANALYSIS_END)
    if begin < 0 or end < begin:
        return _NO_ANALYSIS
    return text[begin + len(ANALYSIS_BEGIN) : end].strip() or _NO_ANALYSIS


def _produced_by(databases: Sequence[DatabaseRuns], context: Context) -> str:
    stack = (
        " each on a fresh stack (Temporal dev server, `python -m worker`, uvicorn API as separate"
        " processes, as `make run` starts them) and a fresh database."
    )
    if len(databases) == 1:
        return (
            f"Produced by `{context.command}`: {len(databases[0].runs)} run(s),{stack} Figures"
            " are medians over the runs, with the smallest and largest value."
        )
    counts = ", ".join(f"{len(database.runs)} run(s) on {database.label}" for database in databases)
    return (
        f"Produced by `{context.command}`: {counts}, alternating between the databases so that"
        f" a drift of the machine touches each alike;{stack} Figures are medians over each"
        " database's runs, with the smallest and largest value, side by side."
    )


def _profile_section(databases: Sequence[DatabaseRuns]) -> list[str]:
    alone = len(databases) == 1
    lines = [
        "## Profile (py-spy, during a saturation load of the first run"
        + (")" if alone else " on each database)"),
        "",
    ]
    for database in databases:
        if not alone:
            lines += [f"### {database.label}", ""]
        profiled = [run for run in database.runs if run.profiles]
        if not profiled:
            lines += ["Not profiled in this run.", ""]
            continue
        for name, profile in profiled[0].profiles.items():
            lines += _profile_lines(name, profile)
    return lines


def _every_run(databases: Sequence[DatabaseRuns]) -> list[str]:
    """Every value of every run; with several databases, in the order the runs alternated."""
    alone = len(databases) == 1
    columns = [
        (
            f"run {index + 1}" if alone else f"{database.label} run {index + 1}",
            database.runs[index],
        )
        for index in range(max(len(database.runs) for database in databases))
        for database in databases
        if index < len(database.runs)
    ]
    keys = sorted({key for _, run in columns for key in run.values})
    rows = [
        [key, *(_fmt(run.values[key], 3) if key in run.values else "—" for _, run in columns)]
        for key in keys
    ]
    return ["## Every run", "", *_table(["value", *(head for head, _ in columns)], rows)]


def render(databases: Sequence[DatabaseRuns], context: Context, *, out: Path) -> str:
    """The whole report: each database's runs side by side (one database: no labels)."""
    alone = len(databases) == 1
    every_run = [run for database in databases for run in database.runs]
    lines = ["# Benchmarks", ""]
    if context.quick:
        lines += [
            "> **Smoke run** (`--quick`): tiny counts and one run. It proves the benchmark works;"
            " its numbers measure nothing.",
            "",
        ]
    lines += [_produced_by(databases, context), ""]
    heads = _heads(
        databases,
        ("measured (median)", f"min{_DASH}max", "met?"),
        ("median", f"min{_DASH}max", "met?"),
    )
    rows = []
    for figure in _figures(context.sizes):
        cells = [figure.name, figure.how, figure.target]
        for database in databases:
            cells += [*figure.measured(database.get), figure.verdict(database.get)]
        rows.append(cells)
    lines += _table(["figure", "how", "target (2 cores, dev server)", *heads], rows)
    lines += ["", "## The machine", ""]
    lines += machine_lines(context, databases)
    foreign = collect(every_run, "saturation_foreign_cpu_pct")
    if not math.isnan(foreign.median):
        busy = "shared and busy" if foreign.high >= 10 else "quiet"
        lines.append(
            f"- other processes used {_fmt(foreign.low, 0)}{_DASH}{_fmt(foreign.high, 0)}% of the"
            f" machine's CPU during the saturation phases"
            f" ({_fmt(collect(every_run, 'run_foreign_cpu_pct').median, 0)}% over whole runs,"
            f" median): the machine was {busy}."
        )
    lines += [*(f"- {note}" for note in context.notes), ""]
    lines += [
        "## Where the CPU goes",
        "",
        "CPU seconds (user + system, from `/proc/<pid>/stat`) each process used during the"
        " saturation phase, per approval. Steadier than the wall clock on a shared machine, not"
        " immune: the same code has taken 40 % more CPU time in one run than in the next when"
        " the host was busy (slower caches, not other processes on this machine). Compare runs"
        " of one invocation, and the request counts below, which do not vary with the host.",
        "",
    ]
    heads = _heads(
        databases,
        ("CPU ms per approval (median)", f"min{_DASH}max"),
        ("CPU ms per approval (median)", f"min{_DASH}max"),
    )
    lines += _table(["process", *heads], _stats_rows(_CPU_PARTS, databases))
    for database in databases:
        lines += _ceiling(database, alone)
    lines += [
        "",
        "What the dev server was asked, per approval, in the same phase (its frontend's"
        " `service_requests` counter, from the phase's start until its last notification was"
        " logged): counts, not times, so they change only with the code.",
        "",
    ]
    heads = _heads(
        databases, ("per approval (median)", f"min{_DASH}max"), ("median", f"min{_DASH}max")
    )
    lines += _table(
        ["requests to the dev server", *heads], _stats_rows(_SERVER_REQUESTS, databases)
    )
    heads = _heads(databases, ("median", f"min{_DASH}max"), ("median", f"min{_DASH}max"))
    lines += ["", "## Checks", ""]
    lines += _table(["check", *heads], _stats_rows(_CHECKS, databases))
    lines += ["", *_profile_section(databases)]
    notes = [
        note if alone else f"{database.label}: {note}"
        for database in databases
        for run in database.runs
        for note in run.notes
    ]
    if notes:
        lines += ["## Notes from the runs", "", *(f"- {note}" for note in notes), ""]
    lines += _every_run(databases)
    lines += [
        "",
        "## Analysis: tuning and the next bottleneck",
        "",
        ANALYSIS_BEGIN,
        _previous_analysis(out),
        ANALYSIS_END,
        "",
    ]
    return "\n".join(lines)


def python_command(argv: Sequence[str]) -> str:
    """How this benchmark was invoked, for the report."""
    return " ".join(["python -m bench", *argv]) if argv else "python -m bench"
