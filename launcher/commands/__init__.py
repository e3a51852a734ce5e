"""The subcommand groups of ``hitl``, one module each.

A module here exposes ``register(subparsers)``: it adds its parser (``help=`` for the list,
``description=`` for its own ``--help``) and sets ``handler``, a function from the parsed
arguments to the exit code (``launcher.errors``). ``launcher.cli`` finds every module in this
package, so adding a group is adding a module.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``register`` receives: the ``hitl`` parser's subcommands."""
