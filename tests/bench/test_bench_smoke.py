"""The benchmark still works: ``python -m bench --quick`` on SQLite and PostgreSQL in one
invocation produces a report with every figure measured on each database (issue 19 item 4).

A smoke run of tiny counts. It asserts that each figure was measured and is a number, never what
the number is: performance is measured by the benchmark, not by timed tests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import FIGURE_NAMES
from tests.conftest import POSTGRES_URL
from tests.postgres_server import ensure_postgres

REPO = Path(__file__).resolve().parents[2]
# A guard against a hang, not a timing: each quick run restarts the worker twice (the expiry
# phase's short policy); one run took about 200 s on a loaded 2-core machine, the two of this test
# about 50 s on a quiet one.
SMOKE_SECONDS = 600
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _rows(report: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in report.splitlines():
        if line.startswith("| ") and line.endswith(" |"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows.setdefault(cells[0], cells)
    return rows


# pytest-timeout's default would end it first: the run's own limit, plus time to stop it.
@pytest.mark.timeout(SMOKE_SECONDS + 60)
def test_quick_run_reports_every_figure_on_both_databases(tmp_path: Path) -> None:
    ensure_postgres(POSTGRES_URL)
    out = tmp_path / "benchmarks.md"
    databases = ["--database-url", "sqlite", "--database-url", POSTGRES_URL]
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", *databases, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SMOKE_SECONDS,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = out.read_text(encoding="utf-8")
    assert "Smoke run" in report
    rows = _rows(report)
    # | figure | how | target | SQLite median | SQLite min-max | SQLite met? | PostgreSQL median ...
    for database in ("SQLite", "PostgreSQL"):
        column = rows["figure"].index(f"{database} median")
        for name in FIGURE_NAMES:
            assert name in rows, f"no row for {name!r} in:\n{report}"
            measured = rows[name][column]
            assert "n/a" not in measured, f"{database}, {name}: {measured}"
            assert NUMBER.search(measured), f"{database}, {name}: {measured}"
    # Each approval asks the dev server for one update-with-start and one decision: counted
    # from the server's own metrics, so the count is exact once they are flushed.
    updates = rows["starts and Updates (an update-with-start once)"]
    heads = rows["requests to the dev server"]
    for database in ("SQLite", "PostgreSQL"):
        assert updates[heads.index(f"{database} median")] == "2.0", updates
    assert "## The machine" in report
    assert "## Where the CPU goes" in report
