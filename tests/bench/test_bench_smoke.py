"""The benchmark still works: ``python -m bench --quick`` produces a report with every figure.

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

REPO = Path(__file__).resolve().parents[2]
# A guard against a hang, not a timing: the quick run restarts the worker twice (the expiry
# phase's short policy) and took about 200 s on this session's loaded 2-core machine.
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
def test_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
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
    for name in FIGURE_NAMES:
        assert name in rows, f"no row for {name!r} in:\n{report}"
        # | figure | how | target | measured (median) | min-max | met? |
        measured = rows[name][3]
        assert "n/a" not in measured, f"{name}: {measured}"
        assert NUMBER.search(measured), f"{name}: {measured}"
    assert "## The machine" in report
    assert "## Where the CPU goes" in report
