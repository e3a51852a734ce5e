"""Addresses: ``host:port`` parsing, URLs a browser can open, and whether a port answers."""

from __future__ import annotations

import asyncio
import contextlib

from hitl.errors import ConfigurationError


def split_address(address: str, variable: str = "TEMPORAL_ADDRESS") -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets) as its parts.

    Raises:
        ConfigurationError: ``address`` has no valid port.
    """
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigurationError(variable, f"is invalid: {address!r} is not host:port")
    return host, int(port)


def url_host(host: str) -> str:
    """``host`` as it goes in a URL a browser on this machine can open."""
    # A wildcard bind address is reachable on the loopback interface.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104
    return f"[{host}]" if ":" in host else host


_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"})  # noqa: S104


def is_local(host: str) -> bool:
    return host in _LOCAL_HOSTS or host.startswith("127.")


async def answers(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` within a second."""
    try:
        async with asyncio.timeout(1):
            _reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
