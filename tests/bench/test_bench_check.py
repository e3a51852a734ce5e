"""The regression guard's comparison (``bench/check.py``): ratios to the baseline, 25 % allowed."""

from __future__ import annotations

import pytest

from bench.check import compare, report_values
from bench.figures import GATEWAY_CPU

REPORT = """# Benchmarks

## Where the CPU goes

| process | CPU ms per approval (median) | min-max |
|---|---|---|
| worker | 999.0 | 999.0-999.0 |

## Every run

| value | run 1 | run 2 | run 3 |
|---|---|---|---|
| cpu_ms_per_approval_api | 10.000 | 12.000 | 11.000 |
| cpu_ms_per_approval_driver | 5.000 | 5.000 | 5.000 |
| cpu_ms_per_approval_server | 40.000 | 42.000 | 41.000 |
| cpu_ms_per_approval_worker | 60.000 | 62.000 | 61.000 |
| latency_p99_ms | 1,380.557 | 90.000 | 95.000 |

## Analysis
| not | a value |
"""


def test_report_values_are_medians_and_the_gateway_sum_leaves_out_the_driver() -> None:
    values = report_values(REPORT)
    assert values["latency_p99_ms"] == pytest.approx(95.0)
    assert values["cpu_ms_per_approval_worker"] == pytest.approx(61.0)
    assert values[GATEWAY_CPU] == pytest.approx(11.0 + 41.0 + 61.0)
    assert "worker" not in values
    assert "not" not in values


def test_a_quarter_worse_passes_and_more_fails() -> None:
    baseline = {GATEWAY_CPU: 100.0, "latency_p99_ms": 80.0}
    at_limit = compare(baseline, {GATEWAY_CPU: 125.0, "latency_p99_ms": 100.0})
    assert [v.worse() for v in at_limit] == [False, False]
    beyond = compare(baseline, {GATEWAY_CPU: 125.1, "latency_p99_ms": 60.0})
    assert [v.worse() for v in beyond] == [True, False]
    assert beyond[0].ratio == pytest.approx(1.251)
    assert "WORSE" in beyond[0].line()
    assert "ok" in beyond[1].line()


def test_better_figures_never_fail() -> None:
    verdicts = compare(
        {GATEWAY_CPU: 100.0, "latency_p99_ms": 80.0}, {GATEWAY_CPU: 10.0, "latency_p99_ms": 1.0}
    )
    assert not any(v.worse() for v in verdicts)


def test_a_missing_figure_or_a_zero_baseline_is_an_error() -> None:
    with pytest.raises(ValueError, match="the run measured no latency_p99_ms"):
        compare({GATEWAY_CPU: 1.0, "latency_p99_ms": 1.0}, {GATEWAY_CPU: 1.0})
    with pytest.raises(ValueError, match="the baseline has no"):
        compare({}, {GATEWAY_CPU: 1.0, "latency_p99_ms": 1.0})
    with pytest.raises(ValueError, match="not positive"):
        compare(
            {GATEWAY_CPU: 0.0, "latency_p99_ms": 1.0}, {GATEWAY_CPU: 1.0, "latency_p99_ms": 1.0}
        )
