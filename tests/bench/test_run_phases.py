"""A phase that fails ends its run with a note; the invocation goes on (its earlier runs' figures
are still reported: a Guardian lock answered SEC-070 on a loaded host once cost a benchmark its
22 minutes of figures)."""

from __future__ import annotations

from typing import Any, cast

from bench.__main__ import run_phases
from bench.figures import Bench, Measurement


class _Phases:
    """Three phases, the second failing as the Guardian phase did."""

    def __init__(self) -> None:
        self.m = Measurement()
        self.ran: list[str] = []

    async def saturation(self) -> None:
        self.ran.append("saturation")
        self.m.values["saturation_per_s"] = 10.5

    async def guardian_effect(self) -> None:
        self.ran.append("guardian_effect")
        raise RuntimeError("lock answered 503: SEC-070")

    async def cascade(self) -> None:
        self.ran.append("cascade")


async def test_a_failed_phase_ends_its_run_with_a_note_and_keeps_what_was_measured() -> None:
    phases = _Phases()
    checks: list[Any] = []
    await run_phases(
        cast(Bench, phases),
        ["saturation", "guardian_effect", "cascade"],
        name="run 2 (PostgreSQL)",
        check=lambda: checks.append(1),
    )
    assert phases.ran == ["saturation", "guardian_effect"]
    assert phases.m.values == {"saturation_per_s": 10.5}
    assert phases.m.notes == [
        "run 2 (PostgreSQL): guardian_effect failed: RuntimeError: lock answered 503: SEC-070;"
        " its later phases were skipped"
    ]
    assert len(checks) == 1
