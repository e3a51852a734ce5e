"""``hitl audit verify|export``: check the tamper-evident record (issue 15, docs/audit.md).

Run from the repository root with the environment ``make run`` uses (``HITL_DATA_DIR``,
``DATABASE_URL``, ``HITL_KEYS_DIR``). ``verify`` checks every MAC, the chain, the checkpoints and
every approval against its last audit entry; ``export`` writes one trade's trail with the chain
values and the checkpoint covering it; ``verify --export FILE`` checks such a file on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from hitl.audit_chain import verify_export
from hitl.errors import ConfigurationError
from hitl.keys import KeyPurpose, Keyring, keys_dir_from_environment, load_keyring
from hitl.settings import DatabaseSettings
from launcher.commands import Subparsers
from launcher.errors import EXIT_CONFIGURATION, EXIT_FAILURE, EXIT_OK

if TYPE_CHECKING:
    from store.audit_record import RecordReport

# store/ (SQLAlchemy) is imported when a check runs, not here: `hitl --help` and the other
# commands then start without it.

DESCRIPTION = """\
Check that the record (approvals, audit entries, snapshots, the Guardian row) is exactly what the
gateway wrote: every keyed MAC, the hash chain over the audit log, the checkpoints kept outside
the database, and each approval against its last audit entry. The database is --url, else
DATABASE_URL, else the SQLite file in HITL_DATA_DIR; the RECORD keyring comes from HITL_KEYS_DIR
(default <HITL_DATA_DIR>/keys). Exit codes: 0 intact, 1 broken (the first broken entry and what is
wrong are printed), 2 the check cannot run (no keyring, no database)."""


def register(subparsers: Subparsers) -> None:
    """Add ``hitl audit`` and its actions."""
    group = subparsers.add_parser(
        "audit",
        help="verify the tamper-evident record, export a trade's trail",
        description=DESCRIPTION,
    )
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--url", help="SQLAlchemy async URL (default: from the environment)")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = actions.add_parser(
        "verify",
        parents=[database],
        help="check the whole record (or an exported trail with --export FILE)",
        description="Check the whole record; with --export FILE, check a file written by"
        " `hitl audit export` instead (only the RECORD keyring is needed then).",
    )
    verify.add_argument("--export", type=Path, metavar="FILE", help="an exported trail to check")
    verify.set_defaults(handler=_verify)
    export = actions.add_parser(
        "export",
        parents=[database],
        help="write one trade's trail, its chain values and covering checkpoint as JSON",
        description="Write TRADE_ID's approval, every audit entry about it, the chain links from"
        " its first entry to the checkpoint covering its last one, and that checkpoint.",
    )
    export.add_argument("trade_id", type=UUID, metavar="TRADE_ID")
    export.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    export.set_defaults(handler=_export)


def _fail(message: str) -> int:
    print(f"hitl audit: {message}", file=sys.stderr)
    return EXIT_CONFIGURATION


def _data_dir() -> Path:
    return Path(os.environ.get("HITL_DATA_DIR", "").strip() or "data")


def _database_url(args: argparse.Namespace) -> str:
    # The settings' own rule (hitl.settings.Settings.database_url), without requiring the
    # settings an auditor has no use for (operators, tokens).
    if args.url:
        return str(args.url)
    url = DatabaseSettings().url
    return url or f"sqlite+aiosqlite:///{(_data_dir() / 'hitl.db').resolve()}"


def _keys() -> Keyring:
    return load_keyring(keys_dir_from_environment(), KeyPurpose.RECORD)


def _describe(report: RecordReport, checkpoints: int) -> str:
    legacy = ""
    if report.legacy_entries or report.legacy_approvals:
        legacy = (
            f"; before the chain: {report.legacy_entries} entries (genesis digest),"
            f" {report.legacy_approvals} approvals (unkeyed row hash only)"
        )
    return (
        f"intact: {report.entries} chained audit entries up to seq {report.head.seq},"
        f" {report.approvals} approvals, {checkpoints} checkpoints{legacy}"
    )


async def _verify_database(url: str, keys: Keyring, data_dir: Path) -> tuple[int, str]:
    from store.audit_record import verify_record
    from store.checkpoints import checkpoint_path, read_checkpoints
    from store.engine import create_engine

    stored = read_checkpoints(checkpoint_path(data_dir), keys)
    if stored.finding is not None:
        return EXIT_FAILURE, f"BROKEN: {stored.finding.describe()}"
    engine = create_engine(url)
    try:
        report = await verify_record(engine, keys, checkpoints=stored.checkpoints)
    finally:
        await engine.dispose()
    if report.finding is not None:
        return EXIT_FAILURE, f"BROKEN: {report.finding.describe()}"
    return EXIT_OK, _describe(report, len(stored.checkpoints))


def _verify(args: argparse.Namespace) -> int:
    try:
        keys = _keys()
    except ConfigurationError as exc:
        return _fail(str(exc))
    if args.export is not None:
        try:
            data: Any = json.loads(args.export.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return _fail(f"cannot read {args.export}: {exc}")
        try:
            check = verify_export(data, keys)
        except (KeyError, TypeError, ValueError) as exc:
            print(f"BROKEN: the export is malformed ({type(exc).__name__}: {exc})")
            return EXIT_FAILURE
        if check.finding is not None:
            print(f"BROKEN: {check.finding.describe()}")
            return EXIT_FAILURE
        print(f"intact: trade {data.get('trade_id')}'s trail, covered by {check.covered_by}")
        return EXIT_OK
    from store.audit_record import UNREADABLE

    try:
        code, line = asyncio.run(_verify_database(_database_url(args), keys, _data_dir()))
    except UNREADABLE as exc:
        return _fail(f"cannot read the database: {type(exc).__name__}: {exc}")
    print(line)
    return code


def _export(args: argparse.Namespace) -> int:
    from store.audit_record import UNREADABLE, export_trail
    from store.checkpoints import checkpoint_path, read_checkpoints
    from store.engine import create_engine

    try:
        keys = _keys()
    except ConfigurationError as exc:
        return _fail(str(exc))

    async def run() -> dict[str, Any] | None:
        stored = read_checkpoints(checkpoint_path(_data_dir()), keys)
        engine = create_engine(_database_url(args))
        try:
            return await export_trail(engine, args.trade_id, checkpoints=stored.checkpoints)
        finally:
            await engine.dispose()

    try:
        data = asyncio.run(run())
    except UNREADABLE as exc:
        return _fail(f"cannot read the database: {type(exc).__name__}: {exc}")
    if data is None:
        print(f"hitl audit: no audit entry about trade {args.trade_id}", file=sys.stderr)
        return EXIT_FAILURE
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return EXIT_OK
