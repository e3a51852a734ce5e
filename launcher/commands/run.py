"""``hitl run``: the whole gateway on this machine (``make run``)."""

from __future__ import annotations

import argparse

from launcher.commands import Subparsers

DESCRIPTION = """\
Run the HITL Approval Gateway on embedded defaults: migrate the database, start the Temporal
dev server (unless TEMPORAL_ADDRESS already answers), the worker, the API and, when
DISCORD_BOT_TOKEN is set, the Discord bot; print their URLs and development tokens once ready.
Ctrl-C stops everything; running again resumes every pending approval. Exit codes: 0 after
Ctrl-C, 1 when a process dies or never becomes ready, 2 on a configuration error."""


def register(subparsers: Subparsers) -> None:
    """Add ``hitl run``."""
    parser = subparsers.add_parser(
        "run",
        help="run the gateway (Temporal dev server, worker, API)",
        description=DESCRIPTION,
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    del args  # no options
    # Imported here: the launcher pulls in Temporal, SQLAlchemy and the API; `hitl --help`
    # and the other commands should not wait for them.
    from launcher.run import run_gateway

    return run_gateway()
