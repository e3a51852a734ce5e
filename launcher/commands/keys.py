"""``hitl keys init|list|rotate``: the gateway's keyrings (commands, payloads, record).

Keys are never printed: ``list`` shows ids and dates only. Running processes read a rotated
keyring again on their next use of it, so a rotation needs no restart.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hitl.errors import ConfigurationError
from hitl.keys import (
    Key,
    KeyPurpose,
    Keyring,
    ensure_keyrings,
    keys_dir_from_environment,
    load_keyring,
    write_keyring,
)
from launcher.commands import Subparsers
from launcher.errors import EXIT_CONFIGURATION, EXIT_OK

DESCRIPTION = """\
Manage the gateway's secret keys, one keyring per purpose: `commands` signs what the API, the
Discord bot and the worker send the workflows; `payloads` encrypts the workflows' payloads in
Temporal; `record` keys the MACs of stored records and the audit chain. The folder is --dir, else
HITL_KEYS_DIR, else <HITL_DATA_DIR>/keys. Exit codes: 0 done, 2 a keyring is missing or invalid."""

DEFAULT_GRACE = {
    KeyPurpose.COMMANDS: "1d",
    # Histories keep their encrypted payloads, and replaying one needs its key: keep them all.
    KeyPurpose.PAYLOADS: "forever",
    KeyPurpose.RECORD: "forever",
}
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(subparsers: Subparsers) -> None:
    """Add ``hitl keys`` and its actions."""
    group = subparsers.add_parser(
        "keys", help="create, list and rotate the secret keys", description=DESCRIPTION
    )
    folder = argparse.ArgumentParser(add_help=False)
    folder.add_argument("--dir", type=Path, help="the keys folder (default: from the settings)")
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = actions.add_parser(
        "init",
        parents=[folder],
        help="create the keyrings that do not exist yet",
        description="Create each missing keyring with one new key (files 0600, folder 0700);"
        " existing keyrings are left as they are.",
    )
    init.set_defaults(handler=_init)
    listing = actions.add_parser(
        "list",
        parents=[folder],
        help="list the keys (ids and dates, never the secrets)",
        description="One line per key, tab-separated: purpose, key id, created, and `active`,"
        " or when it was retired and until when it still verifies.",
    )
    listing.set_defaults(handler=_list)
    rotate = actions.add_parser(
        "rotate",
        parents=[folder],
        help="make a new active key; the old one verifies during a grace period",
        description="Give PURPOSE a new active key. The old key still verifies (or decrypts)"
        " for --grace (e.g. 30m, 12h, 7d, or `forever`); defaults: commands 1d, payloads and"
        " record forever. Record keys must verify forever.",
    )
    rotate.add_argument(
        "purpose", metavar="PURPOSE", choices=[p.value for p in KeyPurpose], help="which keyring"
    )
    rotate.add_argument("--grace", help="how long the old key keeps verifying")
    rotate.set_defaults(handler=_rotate)


def parse_grace(text: str) -> timedelta | None:
    """``30m``, ``12h``, ``7d``, ``2w``, ``90s`` or ``0`` → a timedelta; ``forever`` → None.

    Raises:
        ValueError: Anything else.
    """
    text = text.strip().lower()
    if text == "forever":
        return None
    if text == "0":
        return timedelta(0)
    match = re.fullmatch(r"(\d+)([smhdw])", text)
    if match is None:
        raise ValueError(f"--grace {text!r}: use e.g. 30m, 12h, 7d, 2w, or forever")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def format_key(purpose: KeyPurpose, key: Key, *, active: bool) -> str:
    """One line of ``hitl keys list`` (never the secret)."""
    if active:
        state = "active"
    else:
        until = "forever" if key.verify_until is None else f"{key.verify_until:%Y-%m-%d %H:%M}"
        retired = f"{key.retired_at:%Y-%m-%d %H:%M}" if key.retired_at else "?"
        state = f"retired {retired}, verifies until {until}"
    return f"{purpose.value}\t{key.id}\t{key.created_at:%Y-%m-%d %H:%M}\t{state}"


def _folder(args: argparse.Namespace) -> Path:
    named: Path | None = args.dir
    return named if named is not None else keys_dir_from_environment()


def _init(args: argparse.Namespace) -> int:
    folder = _folder(args)
    created = ensure_keyrings(folder, now=datetime.now(UTC))
    for purpose in KeyPurpose:
        print(f"{purpose.value}\t{'created' if purpose in created else 'exists'}")
    print(f"keys folder: {folder}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    folder = _folder(args)
    rings: list[Keyring] = []
    try:
        rings = [load_keyring(folder, purpose) for purpose in KeyPurpose]
    except ConfigurationError as exc:
        print(f"hitl keys: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    for ring in rings:
        for key in sorted(ring.keys.values(), key=lambda k: k.created_at):
            print(format_key(ring.purpose, key, active=key.id == ring.active_id))
    return EXIT_OK


def _rotate(args: argparse.Namespace) -> int:
    purpose = KeyPurpose(args.purpose)
    try:
        grace = parse_grace(args.grace or DEFAULT_GRACE[purpose])
    except ValueError as exc:
        print(f"hitl keys: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    if purpose is KeyPurpose.RECORD and grace is not None:
        print(
            "hitl keys: record keys must verify forever (stored MACs never expire); drop --grace",
            file=sys.stderr,
        )
        return EXIT_CONFIGURATION
    folder = _folder(args)
    try:
        ring = load_keyring(folder, purpose)
    except ConfigurationError as exc:
        print(f"hitl keys: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    rotated = ring.rotated(now=datetime.now(UTC), grace=grace)
    write_keyring(folder, rotated)
    old = rotated.keys[ring.active_id]
    print(format_key(purpose, rotated.active(), active=True))
    print(format_key(purpose, old, active=False))
    return EXIT_OK
