"""``hitl``: one command for the operators' chores (installed into ``.venv/bin`` by ``make``).

``hitl run``, ``hitl demo``, ``hitl migrate``, ``hitl tokens issue|list|revoke``, and whatever
other group ``launcher/commands/`` holds. Exit codes: 0 done, 1 failed, 2 cannot run (a usage
error or invalid settings).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

from launcher import commands

Handler = Callable[[argparse.Namespace], int]
"""What a command runs: the parsed arguments in, the exit code out."""


def command_modules() -> list[ModuleType]:
    """Every subcommand group in ``launcher/commands/``, by name."""
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(commands.__path__)
        if not info.name.startswith("_")
    )
    return [importlib.import_module(f"{commands.__name__}.{name}") for name in names]


def build_parser() -> argparse.ArgumentParser:
    """The ``hitl`` parser with every group registered."""
    parser = argparse.ArgumentParser(
        prog="hitl",
        description="The HITL Approval Gateway's command: run it, migrate its database, manage"
        " its API tokens. `hitl COMMAND --help` tells what each does.",
    )
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", title="commands"
    )
    for module in command_modules():
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; returns the exit code (argparse exits 2 itself)."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
