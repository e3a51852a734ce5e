"""The report's side-by-side tables (issue 19 item 4): runs on SQLite and on PostgreSQL, each
database with its own median, range and verdict, and the hand-written analysis kept.

The measurements are made up: these tests check the renderer, not the gateway.
"""

from __future__ import annotations

from pathlib import Path

from bench.check import report_values
from bench.figures import Measurement, Sizes
from bench.profile import Profile
from bench.report import ANALYSIS_BEGIN, ANALYSIS_END, Context, DatabaseRuns, render

ANALYSIS = "Tuned: nothing yet.\n\n| a | hand-written table |\n|---|---|\n\nNext: the worker."


def _context() -> Context:
    return Context(
        command="python -m bench --database-url sqlite --database-url postgresql+asyncpg://pg/x",
        sizes=Sizes(),
        quick=False,
        worker_cache=None,
        worker_options=None,
        server_config=[],
        pragmas=[],
        started="2026-01-01 00:00 UTC",
        finished="2026-01-01 01:00 UTC",
        load_before=(0.0, 0.0, 0.0),
        load_after=(0.0, 0.0, 0.0),
    )


def _run(rate: float, worker_ms: float, errors: float, *, profiled: bool = False) -> Measurement:
    profile = Profile(
        samples=100,
        seconds=1.0,
        by_leaf_package=[("temporalio", 1.0)],
        by_leaf_function=[("poll", 1.0)],
        inclusive=[("all", 1.0)],
    )
    return Measurement(
        values={
            "saturation_per_s": rate,
            "cpu_ms_per_approval_server": 40.0,
            "cpu_ms_per_approval_worker": worker_ms,
            "cpu_ms_per_approval_api": 10.0,
            "cpu_ms_per_approval_driver": 5.0,
            "cpu_ms_per_approval_total": 55.0 + worker_ms,
            "saturation_errors": errors,
        },
        profiles={"worker": profile} if profiled else {},
    )


def _databases() -> list[DatabaseRuns]:
    sqlite = DatabaseRuns(
        "SQLite",
        "SQLite (embedded default), a fresh file per run",
        [_run(10, 60, 0, profiled=True), _run(14, 64, 2), _run(12, 62, 1)],
    )
    postgres = DatabaseRuns(
        "PostgreSQL",
        "PostgreSQL 16.4 on 127.0.0.1:5432, a fresh database per run",
        [_run(70, 90, 0, profiled=True), _run(50, 80, 0), _run(60, 100, 3)],
    )
    return [sqlite, postgres]


def _rows(report: str) -> dict[str, list[str]]:
    """The first table row of each name, as its cells (en dashes as hyphens)."""
    rows: dict[str, list[str]] = {}
    for line in report.splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            cells = [
                cell.strip().replace("\N{EN DASH}", "-") for cell in line.strip("|").split(" | ")
            ]
            rows.setdefault(cells[0], cells)
    return rows


def test_each_database_has_its_own_columns(tmp_path: Path) -> None:
    report = render(_databases(), _context(), out=tmp_path / "benchmarks.md")
    rows = _rows(report)

    assert rows["figure"][3:] == [
        *("SQLite median", "SQLite min-max", "SQLite met?"),
        *("PostgreSQL median", "PostgreSQL min-max", "PostgreSQL met?"),
    ]
    assert rows["sustained approvals per second"][3:] == [
        *("12.0/s", "10.0-14.0/s", "**not met**"),
        *("60.0/s", "50.0-70.0/s", "**met**"),
    ]
    # A figure no run measured.
    assert rows["decision latency p50 / p99"][5] == "not measured"
    assert rows["worker"][1:] == ["62.0", "60.0-64.0", "90.0", "80.0-100.0"]
    assert rows["saturation: approvals that failed (create or approve not 201/200 ACCEPTED)"][
        1:
    ] == ["1.0", "0.0-2.0", "0.0", "0.0-3.0"]
    # The ceiling, from each database's own CPU per approval (40 + worker + 10 ms).
    assert "On SQLite, the gateway's three processes need 112.0 ms" in report
    assert "On PostgreSQL, the gateway's three processes need 140.0 ms" in report
    assert "- database: SQLite (embedded default), a fresh file per run" in report
    assert "- database: PostgreSQL 16.4 on 127.0.0.1:5432, a fresh database per run" in report
    assert "### SQLite" in report and "### PostgreSQL" in report
    assert report.count("**worker**: 100 samples") == 2
    # Every run, in the order the runs alternated.
    assert rows["value"][1:] == [
        f"{database} run {index}" for index in (1, 2, 3) for database in ("SQLite", "PostgreSQL")
    ]
    assert rows["saturation_per_s"][1:] == [
        "10.000",
        "70.000",
        "14.000",
        "50.000",
        "12.000",
        "60.000",
    ]


def test_one_database_keeps_the_single_layout(tmp_path: Path) -> None:
    sqlite = _databases()[0]
    report = render([sqlite], _context(), out=tmp_path / "benchmarks.md")
    rows = _rows(report)

    assert rows["figure"][3:] == ["measured (median)", "min-max", "met?"]
    assert rows["sustained approvals per second"][3:] == ["12.0/s", "10.0-14.0/s", "**not met**"]
    assert "PostgreSQL" not in report
    assert "The gateway's three processes need 112.0 ms" in report
    assert rows["value"][1:] == ["run 1", "run 2", "run 3"]
    # The regression guard reads the same report.
    assert report_values(report)["saturation_per_s"] == 12.0


def test_a_database_not_yet_run_shows_nothing_measured(tmp_path: Path) -> None:
    sqlite, postgres = _databases()
    postgres.runs.clear()
    rows = _rows(render([sqlite, postgres], _context(), out=tmp_path / "benchmarks.md"))

    assert rows["sustained approvals per second"][6:] == ["n/a/s", "n/a-n/a/s", "not measured"]
    assert rows["value"][1:] == ["SQLite run 1", "SQLite run 2", "SQLite run 3"]


def test_the_analysis_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text(
        f"# Old results\n\n| old | table |\n\n{ANALYSIS_BEGIN}\n{ANALYSIS}\n{ANALYSIS_END}\n",
        encoding="utf-8",
    )
    report = render(_databases(), _context(), out=out)

    assert f"{ANALYSIS_BEGIN}\n{ANALYSIS}\n{ANALYSIS_END}\n" in report
    assert "Old results" not in report
