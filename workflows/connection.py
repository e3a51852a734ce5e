"""The one way every process connects to Temporal (issue #14 item 4).

The worker, the API, the Discord bot, the ``hitl`` commands and the tests all call
:func:`connect_temporal`, so each gets the same data converter (pydantic for our Decimals, the
AES-GCM payload codec) and the same transport security: TLS or mTLS from PEM files
(``TEMPORAL_TLS_CA``, ``TEMPORAL_TLS_CERT``, ``TEMPORAL_TLS_KEY``, ``TEMPORAL_TLS_SERVER_NAME``)
or an API key (``TEMPORAL_API_KEY``, which implies TLS). A file that is missing, unreadable or not
what its variable says refuses to start with SEC-040 naming the variable, before any connection
is attempted.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from hitl.errors import ConfigurationError
from hitl.keys import KeyPurpose, KeyringFile
from hitl.settings import Settings, TemporalSettings
from workflows.codec import encrypted_data_converter

CA_VARIABLE = "TEMPORAL_TLS_CA"
CERT_VARIABLE = "TEMPORAL_TLS_CERT"
KEY_VARIABLE = "TEMPORAL_TLS_KEY"


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
