"""The one way every process connects to Temporal (issue #14 item 4).

The worker, the API, the Discord bot, the ``hitl`` commands and the tests all call
:func:`connect_temporal`, so each gets the same data converter (pydantic for our Decimals, the
AES-GCM payload codec) and the same transport security: TLS or mTLS from PEM files
(``TEMPORAL_TLS_CA``, ``TEMPORAL_TLS_CERT``, ``TEMPORAL_TLS_KEY``, ``TEMPORAL_TLS_SERVER_NAME``)
or an API key (``TEMPORAL_API_KEY``, which implies TLS). A file that is missing, unreadable or not
what its variable says refuses to start with SEC-040 naming the variable, before any connection
is attempted.

It also says quickly when Temporal cannot be reached (:func:`unless_unreachable`, issue #16
item 7): the SDK retries a call that finds no server for about ten seconds, and its
``rpc_timeout`` bounds each attempt, not the retries.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from hitl.errors import ConfigurationError, ErrorCode, HITLError
from hitl.keys import KeyPurpose, KeyringFile
from hitl.settings import Settings, TemporalSettings
from workflows.codec import encrypted_data_converter

CA_VARIABLE = "TEMPORAL_TLS_CA"
CERT_VARIABLE = "TEMPORAL_TLS_CERT"
KEY_VARIABLE = "TEMPORAL_TLS_KEY"

T = TypeVar("T")

PROBE_AFTER = 0.5
"""Seconds a call may run before anyone asks whether the server is there at all."""
PROBE_EVERY = 1.0
"""Seconds between such questions while the call goes on; a live answer serves every call of
the same client for that long."""
PROBE_TIMEOUT = 1.0
"""Seconds the question may take: past it the server counts as unreachable (an address that
drops packets rather than refusing the connection)."""


def gateway_data_converter(settings: Settings) -> DataConverter:
    """The converter every client, worker and replayer of this gateway uses: pydantic plus the
    payload codec over the PAYLOADS keyring file, followed across rotations (SEC-040 when the
    keyring is missing or malformed)."""
    return encrypted_data_converter(KeyringFile(settings.keys_dir, KeyPurpose.PAYLOADS))


def tls_config(temporal: TemporalSettings) -> TLSConfig | bool:
    """The TLS settings for the Temporal connection.

    False when nothing asks for TLS; True (system roots) for an API key alone; a TLSConfig when any
    ``TEMPORAL_TLS_*`` variable is set.

    Raises:
        ConfigurationError: SEC-040 naming the variable whose file is missing, unreadable, not PEM
            of the right kind, expired, or whose certificate and key do not belong together.
    """
    if not (temporal.tls_ca or temporal.tls_cert or temporal.tls_key or temporal.tls_server_name):
        return bool(temporal.api_key.get_secret_value())
    if bool(temporal.tls_cert) != bool(temporal.tls_key):
        missing, present = (
            (KEY_VARIABLE, CERT_VARIABLE) if temporal.tls_cert else (CERT_VARIABLE, KEY_VARIABLE)
        )
        raise ConfigurationError(
            missing, f"is required with {present}: mTLS needs both the certificate and its key"
        )
    ca = _certificates(CA_VARIABLE, temporal.tls_ca) if temporal.tls_ca else None
    cert = key = None
    if temporal.tls_cert:
        cert = _certificates(CERT_VARIABLE, temporal.tls_cert)
        key = _private_key(KEY_VARIABLE, temporal.tls_key)
        _check_pair(cert, key)
    return TLSConfig(
        server_root_ca_cert=ca,
        client_cert=cert,
        client_private_key=key,
        domain=temporal.tls_server_name or None,
    )


async def connect_temporal(
    settings: Settings, *, runtime: Runtime | None = None, lazy: bool = False
) -> Client:
    """A Temporal client with the gateway's data converter and transport security.

    Args:
        settings: the process's settings (``TEMPORAL_*`` and the keys folder).
        runtime: the SDK runtime (the worker's carries its Prometheus exporter).
        lazy: connect on first use, so a process can start while Temporal is still coming up.

    Raises:
        ConfigurationError: SEC-040 for a missing payload keyring or a bad TLS file.
    """
    temporal = settings.temporal
    tls = tls_config(temporal)
    return await Client.connect(
        temporal.address,
        namespace=temporal.namespace,
        data_converter=gateway_data_converter(settings),
        tls=tls,
        api_key=temporal.api_key.get_secret_value() or None,
        runtime=runtime,
        lazy=lazy,
    )


def _read(variable: str, name: str) -> bytes:
    path = Path(name)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            variable, f"names {path}, which cannot be read ({exc.strerror or exc})"
        ) from None


def _certificates(variable: str, name: str) -> bytes:
    """The PEM bytes of a certificate file, after checking they parse and have not expired."""
    data = _read(variable, name)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ConfigurationError(
            variable, f"names {name}, which holds no PEM certificate"
        ) from None
    now = datetime.now(UTC)
    for certificate in certificates:
        if certificate.not_valid_after_utc < now:
            raise ConfigurationError(
                variable,
                f"names {name}, whose certificate expired on "
                f"{certificate.not_valid_after_utc:%Y-%m-%d}: make new certificates "
                "(deploy/temporal/make-certs.sh)",
            )
    return data


def _private_key(variable: str, name: str) -> bytes:
    """The PEM bytes of an unencrypted private key file, after checking they parse."""
    data = _read(variable, name)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigurationError(
            variable, f"names {name}, an encrypted key: the SDK needs it unencrypted (mode 0600)"
        ) from None
    except ValueError:
        raise ConfigurationError(
            variable, f"names {name}, which holds no PEM private key"
        ) from None
    return data


def _check_pair(cert: bytes, key: bytes) -> None:
    """The client certificate (the first in its file) must certify the client key's public key."""
    leaf = x509.load_pem_x509_certificates(cert)[0]
    private: PrivateKeyTypes = serialization.load_pem_private_key(key, password=None)
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        raise ConfigurationError(
            KEY_VARIABLE, f"is not the key of the certificate in {CERT_VARIABLE}"
        )


# --- reachability -------------------------------------------------------------------------------


class _Reachability:
    """Whether one client's server answers, asked with one cheap call that is never retried.

    Holds no reference to its client (it is the value of a weak map keyed by the client)."""

    def __init__(self) -> None:
        self._answered_at = float("-inf")
        self._asking: asyncio.Task[str | None] | None = None

    async def problem(self, client: Client) -> str | None:
        """None when the server answered within the last ``PROBE_EVERY`` seconds or answers
        now; else why it cannot be reached. Concurrent callers share one question."""
        if time.monotonic() - self._answered_at < PROBE_EVERY:
            return None
        asking = self._asking
        if asking is None or asking.done() or asking.get_loop() is not asyncio.get_running_loop():
            asking = self._asking = asyncio.create_task(self._ask(client))
        return await asyncio.shield(asking)

    async def _ask(self, client: Client) -> str | None:
        try:
            # GetSystemInfo: served by the frontend from memory, allowed to every client (the
            # SDK's own connect calls it). retry=False: one attempt, whatever it finds.
            async with asyncio.timeout(PROBE_TIMEOUT):
                await client.workflow_service.get_system_info(
                    GetSystemInfoRequest(),
                    retry=False,
                    timeout=timedelta(seconds=PROBE_TIMEOUT),
                )
        except TimeoutError:
            return f"no answer within {PROBE_TIMEOUT:g} s"
        except RPCError as exc:
            if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
                return f"{exc.status.name}: {exc.message}"
            # Any other status is an answer: the server is there.
        except RuntimeError as exc:
            # A lazy client's first connection failed (the SDK raises no RPCError for it).
            return str(exc)
        self._answered_at = time.monotonic()
        return None


_reachability: weakref.WeakKeyDictionary[Client, _Reachability] = weakref.WeakKeyDictionary()


def _failed_connect(exc: BaseException) -> bool:
    """The SDK's error for a lazy client whose first connection failed."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect")


async def unless_unreachable(client: Client, call: Awaitable[T]) -> T:
    """Await ``call`` (a call on ``client``) for as long as it takes, unless the server turns
    out to be unreachable: then cancel it and raise SEC-070 at once.

    The SDK retries a call that finds no server (connection refused, reset) for about ten
    seconds inside the call (its retry policy, by default up to 10 s or 10 attempts), and the
    call's ``rpc_timeout`` bounds each attempt only: a refused connection fails each attempt
    at once, so nothing bounds the whole. A plain time limit on the call cannot tell that apart
    from a server that is there but slow, or from an Update legitimately waiting for its
    workflow. So a call still running after ``PROBE_AFTER`` seconds, and every ``PROBE_EVERY``
    seconds after, asks the server one question that is never retried (``GetSystemInfo``,
    at most ``PROBE_TIMEOUT`` seconds): answered, the call goes on; unanswered, it is cancelled
    (the SDK drops its retries with it) and the caller gets SEC-070 within about
    ``PROBE_AFTER + PROBE_TIMEOUT`` seconds.

    Raises:
        HITLError: SEC-070 when the server cannot be reached; whatever ``call`` raises otherwise.
    """
    reachability = _reachability.get(client)
    if reachability is None:
        reachability = _reachability[client] = _Reachability()
    task = asyncio.ensure_future(call)
    try:
        pause = PROBE_AFTER
        while True:
            done, _ = await asyncio.wait({task}, timeout=pause)
            if done:
                break
            problem = await reachability.problem(client)
            if problem is not None:
                raise HITLError(
                    ErrorCode.SERVICE_UNAVAILABLE, f"Temporal cannot be reached ({problem})"
                )
            pause = PROBE_EVERY
        try:
            return task.result()
        except RuntimeError as exc:
            if _failed_connect(exc):
                raise HITLError(
                    ErrorCode.SERVICE_UNAVAILABLE, f"Temporal cannot be reached ({exc})"
                ) from exc
            raise
    finally:
        if not task.done():
            task.cancel()
            # Nobody awaits it any more: collect its end so it is not reported as lost.
            task.add_done_callback(_collect)


def _collect(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
