"""Apply the migrations from code: the gateway's start-up, the tests and ``make run`` use this.

Run as ``python -m migrations.runner upgrade|downgrade [--url URL]``; without ``--url`` the
database is the one the settings name (``DATABASE_URL`` or the embedded SQLite file).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

MIGRATIONS_DIR = Path(__file__).resolve().parent
"""The folder holding ``env.py`` and ``versions/``, found without regard to the working dir."""


def _config(url: str) -> Config:
    config = Config()
    # The ini parser interpolates "%", which a folder name may contain.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    # Handed over as an attribute, not an ini option: URLs carry passwords and "%" escapes.
    config.attributes["url"] = url
    return config


def _ensure_sqlite_folder(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def upgrade_to_head(url: str) -> None:
    """Migrate the database at ``url`` to the newest revision.

    Synchronous, and runs its own event loop: from async code call it through
    ``asyncio.to_thread``. An SQLite file's folder is created if missing.
    """
    _ensure_sqlite_folder(url)
    command.upgrade(_config(url), "head")


def downgrade_to_base(url: str) -> None:
    """Undo every migration on the database at ``url`` (tables, triggers, functions).

    Synchronous, like ``upgrade_to_head``.
    """
    command.downgrade(_config(url), "base")


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``python -m migrations.runner upgrade|downgrade [--url URL]``."""
    parser = argparse.ArgumentParser(
        prog="python -m migrations.runner", description="Migrate the approval database."
    )
    parser.add_argument("action", choices=["upgrade", "downgrade"])
    parser.add_argument("--url", help="SQLAlchemy async URL; default: from the settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)-5.5s [%(name)s] %(message)s")
    url: str | None = args.url
    if url is None:
        # Imported here so that --url works even where HITL_* settings are incomplete.
        from hitl.settings import get_settings

        url = get_settings().database_url
    if args.action == "upgrade":
        upgrade_to_head(url)
    else:
        downgrade_to_base(url)


if __name__ == "__main__":
    main()
