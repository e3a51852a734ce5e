"""Why the launcher stops, and the exit codes every ``hitl`` command shares."""

from __future__ import annotations

import signal

EXIT_OK = 0
"""The command did what it was asked (for ``hitl run``: stopped by Ctrl-C or SIGTERM)."""
EXIT_FAILURE = 1
"""The command ran and failed: a process died, never became ready, nothing was revoked."""
EXIT_CONFIGURATION = 2
"""The command cannot run: a usage error or a missing or invalid setting (SEC-040)."""


class StartupError(Exception):
    """The gateway could not start; the message says why, for a human."""


class ChildExited(StartupError):
    """A child process ended while the supervisor still needed it."""

    def __init__(self, name: str, returncode: int) -> None:
        how = (
            f"was killed by {signal.Signals(-returncode).name}"
            if returncode < 0
            else f"exited unexpectedly with code {returncode}"
        )
        super().__init__(f"the {name} {how}")
        self.name = name
        self.returncode = returncode
