"""``hitl demo``: the gateway plus a simulated bot, so there is always something to decide."""

from __future__ import annotations

import argparse

from launcher.commands import Subparsers
from launcher.dev_defaults import DEMO_INTERVAL_SECONDS

DESCRIPTION = """\
Run the gateway as `hitl run` does, plus a simulated bot that proposes a trade at once and then
every --interval seconds, with the first bot token of HITL_API_TOKENS (or the generated
development one). Decide its requests on the operator page. Exit codes as `hitl run`."""


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def register(subparsers: Subparsers) -> None:
    """Add ``hitl demo``."""
    parser = subparsers.add_parser(
        "demo", help="run the gateway with a simulated bot", description=DESCRIPTION
    )
    parser.add_argument(
        "--interval",
        type=_positive,
        default=DEMO_INTERVAL_SECONDS,
        metavar="SECONDS",
        help=f"seconds between two demo proposals (default: {DEMO_INTERVAL_SECONDS:g})",
    )
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from launcher.run import run_gateway  # heavy: only when the demo runs (see run.py)

    return run_gateway(demo=True, demo_interval=args.interval)
