"""The Temporal connection's transport security: the certificates deploy/temporal/make-certs.sh
makes, the TLS settings every process reads (SEC-040 naming the variable for a bad file), and a
real mTLS connection through ``connect_temporal``.

The dev server has no TLS option, so the mTLS tests put a TLS terminator in front of it that
requires a client certificate from the CA, exactly as the compose frontend does
(``requireClientAuth``); the bytes behind it are the dev server's own gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.service import TLSConfig
from temporalio.testing import WorkflowEnvironment

from hitl.errors import ConfigurationError, ErrorCode
from hitl.keys import KeyPurpose, new_keyring, write_keyring
from hitl.settings import Settings, TemporalSettings, load_settings
from workflows.codec import EncryptionCodec
from workflows.connection import connect_temporal, tls_config

ROOT = Path(__file__).resolve().parents[2]
MAKE_CERTS = ROOT / "deploy" / "temporal" / "make-certs.sh"
LEAVES = ("temporal", "hitl", "temporal-ui", "admin")


def _make_certs(out: Path, *args: str, **env: str) -> str:
    result = subprocess.run(
        ["sh", str(MAKE_CERTS), *args],
        env={**os.environ, "CERTS_DIR": str(out), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The certificates, made once by the documented command."""
    out = tmp_path_factory.mktemp("tls") / "certs"
    _make_certs(out)
    return out


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates from another CA: a stranger's."""
    out = tmp_path_factory.mktemp("tls-other") / "certs"
    _make_certs(out)
    return out


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


# --- the certificates -----------------------------------------------------------------------


def test_every_leaf_is_signed_by_the_ca_for_its_use(certs: Path) -> None:
    ca = _load(certs / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in LEAVES:
        leaf = _load(certs / f"{name}.pem")
        leaf.verify_directly_issued_by(ca)
        usages = set(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        if name == "temporal":
            assert usages == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        else:
            assert usages == {ExtendedKeyUsageOID.CLIENT_AUTH}, name
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_the_server_certificate_names_the_compose_service_and_loopback(certs: Path) -> None:
    names = _load(certs / "temporal.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert {"temporal", "localhost"} <= set(names.value.get_values_for_type(x509.DNSName))
    assert "127.0.0.1" in {str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)}


def test_extra_server_names_come_from_the_environment(tmp_path: Path) -> None:
    _make_certs(tmp_path / "c", TEMPORAL_CERT_HOSTS="temporal.example.internal,10.0.0.5")
    names = _load(tmp_path / "c" / "temporal.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "temporal.example.internal" in names.value.get_values_for_type(x509.DNSName)
    assert "10.0.0.5" in {str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)}


def test_the_folder_is_private_and_the_ca_key_its_owners(certs: Path) -> None:
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert stat.S_IMODE((certs / "ca-key.pem").stat().st_mode) == 0o600


def test_running_it_again_keeps_everything_and_renew_keeps_only_the_ca(tmp_path: Path) -> None:
    out = tmp_path / "c"
    _make_certs(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _make_certs(out) == ""
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    _make_certs(out, "--renew")
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after["ca.pem"] == before["ca.pem"] and after["ca-key.pem"] == before["ca-key.pem"]
    assert all(after[f"{name}.pem"] != before[f"{name}.pem"] for name in LEAVES)


# --- the TLS settings -----------------------------------------------------------------------


def _temporal(**values: str) -> TemporalSettings:
    return TemporalSettings(**values)  # type: ignore[arg-type]


def test_no_tls_variable_means_plain_grpc_and_an_api_key_means_tls() -> None:
    assert tls_config(_temporal()) is False
    assert tls_config(_temporal(api_key="k")) is True


def test_mtls_reads_the_three_files(certs: Path) -> None:
    config = tls_config(
        _temporal(
            tls_ca=str(certs / "ca.pem"),
            tls_cert=str(certs / "hitl.pem"),
            tls_key=str(certs / "hitl-key.pem"),
            tls_server_name="temporal",
        )
    )
    assert isinstance(config, TLSConfig)
    assert config.server_root_ca_cert == (certs / "ca.pem").read_bytes()
    assert config.client_cert == (certs / "hitl.pem").read_bytes()
    assert config.client_private_key == (certs / "hitl-key.pem").read_bytes()
    assert config.domain == "temporal"


def test_server_tls_alone_needs_no_client_certificate(certs: Path) -> None:
    config = tls_config(_temporal(tls_ca=str(certs / "ca.pem")))
    assert isinstance(config, TLSConfig)
    assert config.client_cert is None and config.domain is None


def _refused(temporal: TemporalSettings) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as refused:
        tls_config(temporal)
    assert refused.value.error is ErrorCode.CONFIGURATION
    return refused.value


def test_a_missing_file_names_its_variable(certs: Path, tmp_path: Path) -> None:
    error = _refused(_temporal(tls_ca=str(tmp_path / "nowhere.pem")))
    assert error.variable == "TEMPORAL_TLS_CA"
    assert "nowhere.pem" in error.message


def test_a_file_of_the_wrong_kind_names_its_variable(certs: Path) -> None:
    # A key where the CA belongs, a certificate where the key belongs.
    assert _refused(_temporal(tls_ca=str(certs / "hitl-key.pem"))).variable == "TEMPORAL_TLS_CA"
    error = _refused(_temporal(tls_cert=str(certs / "hitl.pem"), tls_key=str(certs / "hitl.pem")))
    assert error.variable == "TEMPORAL_TLS_KEY"


def test_half_a_client_identity_is_refused(certs: Path) -> None:
    assert _refused(_temporal(tls_cert=str(certs / "hitl.pem"))).variable == "TEMPORAL_TLS_KEY"
    assert _refused(_temporal(tls_key=str(certs / "hitl-key.pem"))).variable == "TEMPORAL_TLS_CERT"


def test_a_key_that_is_not_the_certificates_is_refused(certs: Path) -> None:
    error = _refused(
        _temporal(tls_cert=str(certs / "hitl.pem"), tls_key=str(certs / "admin-key.pem"))
    )
    assert error.variable == "TEMPORAL_TLS_KEY"
    assert "TEMPORAL_TLS_CERT" in error.message


def _self_signed(tmp_path: Path, *, not_after: datetime) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_after - timedelta(days=30))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "old.pem", tmp_path / "old-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return cert_path, key_path


def test_an_expired_certificate_is_refused_before_connecting(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path, not_after=datetime.now(UTC) - timedelta(days=1))
    error = _refused(_temporal(tls_ca=str(cert)))
    assert error.variable == "TEMPORAL_TLS_CA"
    assert "expired" in error.message


def test_an_encrypted_key_is_refused(certs: Path, tmp_path: Path) -> None:
    _, key = _self_signed(tmp_path, not_after=datetime.now(UTC) + timedelta(days=1))
    error = _refused(_temporal(tls_cert=str(certs / "hitl.pem"), tls_key=str(key)))
    assert error.variable == "TEMPORAL_TLS_KEY"
    assert "encrypted" in error.message


def test_the_settings_read_the_tls_variables(certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEMPORAL_TLS_CA", str(certs / "ca.pem"))
    monkeypatch.setenv("TEMPORAL_TLS_CERT", str(certs / "hitl.pem"))
    monkeypatch.setenv("TEMPORAL_TLS_KEY", str(certs / "hitl-key.pem"))
    monkeypatch.setenv("TEMPORAL_TLS_SERVER_NAME", "temporal")
    monkeypatch.setenv("TEMPORAL_API_KEY", "an-api-key")
    temporal = load_settings().temporal
    assert (temporal.tls_ca, temporal.tls_cert, temporal.tls_key) == (
        str(certs / "ca.pem"),
        str(certs / "hitl.pem"),
        str(certs / "hitl-key.pem"),
    )
    assert temporal.tls_server_name == "temporal"
    assert temporal.api_key.get_secret_value() == "an-api-key"
    assert "an-api-key" not in repr(temporal)


# --- a real mTLS connection -----------------------------------------------------------------


@dataclass
class Terminator:
    """A TLS endpoint in front of the dev server that requires a client certificate."""

    port: int
    handshakes_refused: int = 0


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            writer.close()


@contextlib.asynccontextmanager
async def _terminator(certs: Path, upstream: str) -> AsyncIterator[Terminator]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "temporal.pem", certs / "temporal-key.pem")
    context.load_verify_locations(certs / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED  # requireClientAuth
    context.set_alpn_protocols(["h2"])
    host, _, port = upstream.rpartition(":")
    state = Terminator(port=0)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        both = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        await both

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(serve(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def quiet_handshakes(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # A refused handshake is the expected outcome of half these tests; count it instead.
        if isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
            state.handshakes_refused += 1
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(quiet_handshakes)
    server = await asyncio.start_server(lambda r, w: on_connect(r, w), "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        loop.set_exception_handler(previous)


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    """A keys folder with a payloads keyring, as ``make run`` or compose provides it."""
    keys = tmp_path / "keys"
    write_keyring(keys, new_keyring(KeyPurpose.PAYLOADS, now=datetime.now(UTC)))
    return keys


def _settings(monkeypatch: pytest.MonkeyPatch, keys_dir: Path, port: int, **tls: str) -> Settings:
    monkeypatch.setenv("HITL_KEYS_DIR", str(keys_dir))
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{port}")
    for name, value in tls.items():
        monkeypatch.setenv(f"TEMPORAL_TLS_{name.upper()}", value)
    return load_settings()


async def _reachable(settings: Settings) -> bool:
    try:
        client = await asyncio.wait_for(connect_temporal(settings), 20)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace="default")
        )
    except (RuntimeError, OSError, TimeoutError):
        return False
    return True


async def test_a_client_with_the_gateways_certificate_connects_over_mtls(
    dev_env: WorkflowEnvironment, certs: Path, keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = dev_env.client.service_client.config.target_host
    async with _terminator(certs, upstream) as tls:
        settings = _settings(
            monkeypatch,
            keys_dir,
            tls.port,
            ca=str(certs / "ca.pem"),
            cert=str(certs / "hitl.pem"),
            key=str(certs / "hitl-key.pem"),
            server_name="temporal",
        )
        client = await connect_temporal(settings)
        answer = await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace="default")
        )
        assert answer.namespace_info.name == "default"
        assert isinstance(client.data_converter.payload_codec, EncryptionCodec)


@pytest.mark.parametrize(
    "identity",
    ["no client certificate", "a stranger's certificate", "the wrong server name"],
)
async def test_anyone_else_is_refused_at_the_handshake(
    dev_env: WorkflowEnvironment,
    certs: Path,
    other_certs: Path,
    keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    identity: str,
) -> None:
    upstream = dev_env.client.service_client.config.target_host
    tls = {
        "no client certificate": {"ca": str(certs / "ca.pem")},
        "a stranger's certificate": {
            "ca": str(certs / "ca.pem"),
            "cert": str(other_certs / "hitl.pem"),
            "key": str(other_certs / "hitl-key.pem"),
        },
        "the wrong server name": {
            "ca": str(certs / "ca.pem"),
            "cert": str(certs / "hitl.pem"),
            "key": str(certs / "hitl-key.pem"),
            "server_name": "not-temporal",
        },
    }[identity]
    async with _terminator(certs, upstream) as terminator:
        assert not await _reachable(_settings(monkeypatch, keys_dir, terminator.port, **tls))


async def test_a_plain_client_cannot_talk_to_the_tls_endpoint(
    dev_env: WorkflowEnvironment, certs: Path, keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream = dev_env.client.service_client.config.target_host
    async with _terminator(certs, upstream) as terminator:
        assert not await _reachable(_settings(monkeypatch, keys_dir, terminator.port))
