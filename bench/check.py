"""``python -m bench.check`` (``make bench-check``): the regression guard of issue 19 item 5.

Runs the quick benchmark and fails when a guarded figure is more than 25 % worse than the committed
baseline ``bench/baseline.json``. Figures are compared as ratios (measured / baseline), so the
guard means the same on any machine whose baseline was taken on it; it is not part of
``make test``. ``--write-baseline`` records a new baseline from the run (or from ``--report``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.figures import GATEWAY_CPU, gateway_cpu_ms

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "bench" / "baseline.json"
TOLERANCE = 0.25
"""How much worse than the baseline a figure may be: 25 % (issue 19 item 5)."""

GUARDED = (GATEWAY_CPU, "latency_p99_ms")
"""CPU per approval of the gateway's processes (dev server + worker + API, without the load
driver), and decision p99; both lower is better."""


@dataclass(frozen=True)
class Verdict:
    """One guarded figure compared with its baseline."""

    name: str
    baseline: float
    measured: float

    @property
    def ratio(self) -> float:
        """measured / baseline (above 1 is worse)."""
        return self.measured / self.baseline

    def worse(self, tolerance: float = TOLERANCE) -> bool:
        """Whether the figure is more than ``tolerance`` worse than its baseline."""
        return self.ratio > 1 + tolerance

    def line(self, tolerance: float = TOLERANCE) -> str:
        """One line for the terminal."""
        mark = "WORSE" if self.worse(tolerance) else "ok"
        return (
            f"{self.name}: {self.measured:.1f} vs baseline {self.baseline:.1f}"
            f" (ratio {self.ratio:.2f}, limit {1 + tolerance:.2f}) {mark}"
        )


def compare(
    baseline: Mapping[str, float],
    measured: Mapping[str, float],
    names: Sequence[str] = GUARDED,
) -> list[Verdict]:
    """The verdict of each guarded figure.

    Raises:
        ValueError: a figure missing from either side, or a baseline that is not positive (a
            ratio to it means nothing).
    """
    verdicts: list[Verdict] = []
    for name in names:
        if name not in baseline:
            raise ValueError(f"the baseline has no {name}")
        if name not in measured:
            raise ValueError(f"the run measured no {name}")
        if baseline[name] <= 0:
            raise ValueError(f"the baseline's {name} is {baseline[name]}, not positive")
        verdicts.append(Verdict(name=name, baseline=baseline[name], measured=measured[name]))
    return verdicts


def report_values(report: str) -> dict[str, float]:
    """The medians over the runs of the report's "Every run" table, with the gateway's CPU per
    approval (dev server + worker + API) added as ``cpu_ms_per_approval_gateway``."""
    values: dict[str, float] = {}
    inside = False
    for line in report.splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Every run"
            continue
        if not inside or not line.startswith("| ") or line.startswith(("| value", "|---")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        numbers = [float(cell.replace(",", "")) for cell in cells[1:] if cell]
        if numbers:
            values[cells[0]] = statistics.median(numbers)
    gateway = gateway_cpu_ms(values)
    if gateway is not None:
        values[GATEWAY_CPU] = gateway
    return values


def _quick_report() -> str:
    with tempfile.TemporaryDirectory(prefix="hitl-bench-check-") as tmp:
        out = Path(tmp) / "benchmarks.md"
        subprocess.run(
            [sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO, check=True
        )
        return out.read_text(encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; 1 when a guarded figure is more than 25 % worse."""
    parser = argparse.ArgumentParser(prog="python -m bench.check", description=__doc__)
    parser.add_argument(
        "--report", type=Path, help="compare this report instead of running the quick benchmark"
    )
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--write-baseline", action="store_true", help="record the run instead")
    parser.add_argument("--note", default="", help="with --write-baseline: how it was taken")
    args = parser.parse_args(argv)
    report = args.report.read_text(encoding="utf-8") if args.report else _quick_report()
    measured = report_values(report)
    if args.write_baseline:
        missing = [name for name in GUARDED if name not in measured]
        if missing:
            print(f"the run measured no {', '.join(missing)}", file=sys.stderr)
            return 1
        document = {
            "note": args.note,
            "written": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "figures": {name: round(measured[name], 3) for name in GUARDED},
        }
        args.baseline.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        print(f"baseline written to {args.baseline}")
        return 0
    baseline = json.loads(args.baseline.read_text(encoding="utf-8"))["figures"]
    verdicts = compare(baseline, measured)
    for verdict in verdicts:
        print(verdict.line())
    return 1 if any(verdict.worse() for verdict in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
