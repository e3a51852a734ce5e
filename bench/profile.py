"""Sampling profiles of the Python processes (py-spy), summarised as text for the report.

py-spy is optional: without it the report says so and keeps the CPU-seconds figures, which come
from ``/proc`` and need nothing.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RATE = 100
"""Samples per second."""

# (label, substring of a frame) for the inclusive shares: the share of samples whose stack
# passes through the part named.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("workflow sandbox (temporalio/worker/workflow_sandbox)", "workflow_sandbox/"),
    ("workflow activations (temporalio/worker/_workflow*)", "temporalio/worker/_workflow"),
    ("activities (temporalio/worker/_activity)", "temporalio/worker/_activity"),
    ("payload conversion (temporalio/converter)", "temporalio/converter"),
    ("pydantic", "pydantic"),
    ("SQLAlchemy", "sqlalchemy/"),
    ("SQLite driver (aiosqlite)", "aiosqlite/"),
    ("asyncpg", "asyncpg/"),
    ("logging (structlog, logging)", "structlog/"),
    ("row hashing (hitl/hashing)", "hitl/hashing"),
    ("FastAPI / Starlette", "starlette/"),
    ("uvicorn / h11 / httptools", "uvicorn/"),
    ("Temporal client calls (temporalio/client)", "temporalio/client"),
    ("rate limiter (limits)", "limits/"),
)

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> Path | None:
    """The py-spy executable beside this interpreter or on the PATH, if installed."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return beside
    found = shutil.which("py-spy")
    return Path(found) if found else None


async def record(pid: int, *, seconds: float, out: Path) -> asyncio.subprocess.Process:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks); await its
    ``wait()`` for the end."""
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed")
    return await asyncio.create_subprocess_exec(
        str(binary),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(RATE),
        "--nonblocking",
        "--full-filenames",
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


_REPO = str(Path(__file__).resolve().parents[1]) + "/"
_STDLIB = f"/lib/python{sys.version_info.major}.{sys.version_info.minor}/"


def _short(path: str) -> str:
    for marker in ("/site-packages/", _REPO, _STDLIB):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _package(path: str) -> str:
    """Who owns the code at ``path``: a library, the standard library or the gateway."""
    first = _short(path).split("/", 1)[0].removesuffix(".py")
    if "/site-packages/" in path:
        return first
    if _STDLIB in path:
        return f"stdlib {first}"
    if path.startswith(_REPO):
        return f"gateway {first}"
    return path  # <frozen importlib._bootstrap> and the like


@dataclass(frozen=True)
class Profile:
    """What one process spent its sampled Python time on."""

    samples: int
    seconds: float
    by_leaf_package: list[tuple[str, float]]
    by_leaf_function: list[tuple[str, float]]
    inclusive: list[tuple[str, float]]


def summarise(raw: Path, *, top: int = 8) -> Profile:
    """The shares (fractions of samples) in py-spy's collapsed-stack output ``raw``."""
    total = 0
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    text = raw.read_text(encoding="utf-8", errors="replace") if raw.exists() else ""
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = _FRAME.match(frames[-1])
        if leaf:
            packages[_package(leaf["file"])] += count
            functions[f"{leaf['function']} ({_short(leaf['file'])})"] += count
        for label, needle in CATEGORIES:
            if any(needle in frame for frame in frames):
                categories[label] += count

    def shares(counter: Counter[str], limit: int) -> list[tuple[str, float]]:
        return [(name, n / total) for name, n in counter.most_common(limit)] if total else []

    return Profile(
        samples=total,
        seconds=total / RATE,
        by_leaf_package=shares(packages, top),
        by_leaf_function=shares(functions, top),
        inclusive=shares(categories, len(CATEGORIES)),
    )
