"""``hitl migrate``: bring the approval database's schema to the newest revision."""

from __future__ import annotations

import argparse
import logging
import sys

from hitl.errors import ConfigurationError
from hitl.settings import get_settings
from launcher.commands import Subparsers
from launcher.errors import EXIT_CONFIGURATION, EXIT_OK

DESCRIPTION = """\
Apply every pending migration to the approval database (an SQLite file's folder is created if
missing). The database is --url, else the settings' DATABASE_URL, else the embedded SQLite file
in HITL_DATA_DIR. Running it on an up-to-date database changes nothing. Exit codes: 0 migrated,
1 the migration failed, 2 no database could be named (invalid settings)."""


def register(subparsers: Subparsers) -> None:
    """Add ``hitl migrate``."""
    parser = subparsers.add_parser(
        "migrate", help="migrate the database to the newest schema", description=DESCRIPTION
    )
    parser.add_argument("--url", help="SQLAlchemy async URL (default: from the settings)")
    parser.set_defaults(handler=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    url: str | None = args.url
    if url is None:
        try:
            url = get_settings().database_url
        except ConfigurationError as exc:
            print(f"hitl migrate: {exc}", file=sys.stderr)
            return EXIT_CONFIGURATION
    # Alembic reports each revision it applies through logging.
    logging.basicConfig(level=logging.INFO, format="%(levelname)-5.5s [%(name)s] %(message)s")
    from migrations.runner import upgrade_to_head  # Alembic and SQLAlchemy: only when run

    upgrade_to_head(url)
    return EXIT_OK
