"""docker-compose.yml's trust boundary (issue #14 item 4), checked without a Docker engine:
Temporal's frontend requires a client certificate from the gateway's CA, every client of Temporal
(our services, the UI, the server's own CLI and health check) presents one, the certificates and
keyrings come from compose ``secrets:`` made by the documented commands, and nothing without its
own login is published beyond loopback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from hitl.keys import KeyPurpose
from hitl.settings import known_variables

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
MAKE_CERTS = ROOT / "deploy" / "temporal" / "make-certs.sh"
CERTS_DIR = "./deploy/temporal/certs/"
TEMPORAL_CLIENTS = ("api", "worker", "discord-bot")
"""Our services that connect to Temporal (the migrations do not)."""
LOGIN_FREE = ("temporal", "temporal-ui", "prometheus", "grafana", "api", "postgres")
"""Services whose published ports must stay on loopback (the API has tokens but speaks plain
HTTP: a TLS proxy goes in front before it is published further)."""


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml, anchors and merge keys resolved."""
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "write environment as a mapping"
    return {str(k): str(v) for k, v in environment.items()}


def _mounted_secrets(compose: dict[str, Any], name: str) -> dict[str, str]:
    """Where each secret a service mounts appears in its container → the host file it is."""
    declared = compose.get("secrets", {})
    mounted: dict[str, str] = {}
    for entry in compose["services"][name].get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = entry.get("target", source) if isinstance(entry, dict) else source
        path = target if target.startswith("/") else f"/run/secrets/{target}"
        assert source in declared, f"{name} mounts the undeclared secret {source}"
        mounted[path] = declared[source]["file"]
    return mounted


def _leaves_made_by_the_script() -> set[str]:
    """The certificate files make-certs.sh writes (ca.pem, NAME.pem, NAME-key.pem)."""
    script = MAKE_CERTS.read_text(encoding="utf-8")
    names = re.findall(r'^leaf ([a-z-]+) "', script, flags=re.MULTILINE)
    assert names, "make-certs.sh issues no certificate"
    return {"ca.pem"} | {f"{n}.pem" for n in names} | {f"{n}-key.pem" for n in names}


def _server_names_of_the_script() -> set[str]:
    script = MAKE_CERTS.read_text(encoding="utf-8")
    (san,) = re.findall(r'^san="([^"]+)"', script, flags=re.MULTILINE)
    return {part.removeprefix("DNS:") for part in san.split(",") if part.startswith("DNS:")}


def _file_of(compose: dict[str, Any], service: str, variable: str) -> str:
    """The host file behind a path variable of a service, which must be a mounted secret."""
    path = _environment(compose["services"][service])[variable]
    mounted = _mounted_secrets(compose, service)
    assert path in mounted, f"{service}: {variable}={path} is not a mounted secret"
    return mounted[path]


def test_the_temporal_frontend_requires_a_client_certificate(compose: dict[str, Any]) -> None:
    env = _environment(compose["services"]["temporal"])
    assert env["TEMPORAL_TLS_REQUIRE_CLIENT_AUTH"] == "true"
    ca = CERTS_DIR + "ca.pem"
    for variable in ("TEMPORAL_TLS_CLIENT1_CA_CERT", "TEMPORAL_TLS_SERVER_CA_CERT"):
        assert _file_of(compose, "temporal", variable) == ca, variable
    for variable in ("TEMPORAL_TLS_FRONTEND_CERT", "TEMPORAL_TLS_SERVER_CERT"):
        assert _file_of(compose, "temporal", variable) == CERTS_DIR + "temporal.pem", variable
    for variable in ("TEMPORAL_TLS_FRONTEND_KEY", "TEMPORAL_TLS_SERVER_KEY"):
        assert _file_of(compose, "temporal", variable) == CERTS_DIR + "temporal-key.pem"
    # Names the server certificate carries, so internode and frontend verification pass.
    names = _server_names_of_the_script()
    assert env["TEMPORAL_TLS_FRONTEND_SERVER_NAME"] in names
    assert env["TEMPORAL_TLS_INTERNODE_SERVER_NAME"] in names


def test_the_servers_own_cli_and_health_check_present_a_certificate(
    compose: dict[str, Any],
) -> None:
    temporal = compose["services"]["temporal"]
    mounted = _mounted_secrets(compose, "temporal")
    check = " ".join(str(part) for part in temporal["healthcheck"]["test"])
    flags = dict(re.findall(r"--(tls-[a-z-]+) (\S+)", check))
    assert mounted[flags["tls-ca-path"]] == CERTS_DIR + "ca.pem"
    assert mounted[flags["tls-cert-path"]] == CERTS_DIR + "admin.pem"
    assert mounted[flags["tls-key-path"]] == CERTS_DIR + "admin-key.pem"
    assert flags["tls-server-name"] in _server_names_of_the_script()
    # auto-setup registers the namespace with the bundled CLI, which reads its TLS from these
    # variables (both spellings: the CLI renamed them).
    env = _environment(temporal)
    for old, new in (
        ("TEMPORAL_TLS_CA", "TEMPORAL_TLS_SERVER_CA_CERT_PATH"),
        ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_CLIENT_CERT_PATH"),
        ("TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CLIENT_KEY_PATH"),
    ):
        assert env[old] == env[new] and env[old] in mounted, old


@pytest.mark.parametrize("name", [*TEMPORAL_CLIENTS, "temporal-ui"])
def test_every_client_of_temporal_connects_with_mtls(compose: dict[str, Any], name: str) -> None:
    env = _environment(compose["services"][name])
    assert _file_of(compose, name, "TEMPORAL_TLS_CA") == CERTS_DIR + "ca.pem"
    cert = _file_of(compose, name, "TEMPORAL_TLS_CERT")
    key = _file_of(compose, name, "TEMPORAL_TLS_KEY")
    assert key == cert.removesuffix(".pem") + "-key.pem", "a certificate and its own key"
    assert cert != CERTS_DIR + "temporal.pem", "clients use client certificates"
    assert env["TEMPORAL_TLS_SERVER_NAME"] in _server_names_of_the_script()
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    if name == "temporal-ui":
        assert env["TEMPORAL_TLS_ENABLE_HOST_VERIFICATION"] == "true"


def test_every_certificate_is_one_the_documented_command_makes(compose: dict[str, Any]) -> None:
    made = _leaves_made_by_the_script()
    for name, secret in compose["secrets"].items():
        file = str(secret["file"])
        if file.startswith(CERTS_DIR):
            assert file.removeprefix(CERTS_DIR) in made, f"secret {name}: {file} is never made"
    # The CA's key signs certificates; no container needs it.
    assert CERTS_DIR + "ca-key.pem" not in {str(s["file"]) for s in compose["secrets"].values()}


@pytest.mark.parametrize("name", TEMPORAL_CLIENTS)
def test_our_services_get_every_keyring_from_secrets(compose: dict[str, Any], name: str) -> None:
    env = _environment(compose["services"][name])
    keys_dir = env["HITL_KEYS_DIR"]
    mounted = _mounted_secrets(compose, name)
    for purpose in KeyPurpose:
        path = f"{keys_dir}/{purpose.value}.json"
        assert path in mounted, f"{name} lacks the {purpose.value} keyring"
        assert mounted[path] == f"./data/keys/{purpose.value}.json"


def test_the_settings_read_the_variables_compose_passes() -> None:
    assert {
        "TEMPORAL_TLS_CA",
        "TEMPORAL_TLS_CERT",
        "TEMPORAL_TLS_KEY",
        "TEMPORAL_TLS_SERVER_NAME",
        "TEMPORAL_API_KEY",
        "HITL_KEYS_DIR",
    } <= known_variables()


@pytest.mark.parametrize("name", LOGIN_FREE)
def test_published_ports_stay_on_loopback(compose: dict[str, Any], name: str) -> None:
    for mapping in compose["services"][name].get("ports", []):
        text = str(mapping)
        assert text.startswith("127.0.0.1:"), f"{name} publishes {text} beyond loopback"


def test_temporal_ui_login_is_configurable(compose: dict[str, Any]) -> None:
    env = _environment(compose["services"]["temporal-ui"])
    assert env["TEMPORAL_AUTH_ENABLED"].startswith("${TEMPORAL_UI_AUTH_ENABLED:-false")
    for variable in (
        "TEMPORAL_AUTH_PROVIDER_URL",
        "TEMPORAL_AUTH_CLIENT_ID",
        "TEMPORAL_AUTH_CLIENT_SECRET",
        "TEMPORAL_AUTH_CALLBACK_URL",
    ):
        assert variable in env, variable
