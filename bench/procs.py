"""What the kernel says about a process or the whole machine: CPU seconds and resident memory.

Read from ``/proc`` (Linux only), so the benchmark needs no extra package for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used so far, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    # The command name (field 2) may hold spaces; the fields after its ")" are plain numbers.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    """The resident set size of ``pid`` now (``VmRSS``), in MiB."""
    return _status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """The largest resident set size ``pid`` has had (``VmHWM``), in MiB."""
    return _status_kb(pid, "VmHWM") / 1024


@dataclass(frozen=True)
class MachineCpu:
    """The whole machine's CPU time counters (``/proc/stat``), in seconds."""

    busy: float
    total: float

    @classmethod
    def now(cls) -> MachineCpu:
        """The counters as they stand."""
        first = Path("/proc/stat").read_text(encoding="ascii").splitlines()[0].split()
        values = [int(value) / _TICKS for value in first[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
        total = sum(values[:8])  # guest time is already counted in user time
        return cls(busy=total - idle, total=total)


def memory_total_mb() -> float:
    """The machine's memory (``MemTotal``), in MiB."""
    for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    raise KeyError("MemTotal")


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``."""
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return "unknown"


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen
