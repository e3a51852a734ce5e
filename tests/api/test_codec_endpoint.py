"""The codec endpoint (the Temporal UI's remote-codec protocol): it decodes for an operator or an
admin, and for the embedded UI's own loopback origin when the gateway runs embedded; it refuses a
bot, no token, a wrong token and a foreign origin with SEC codes. The last test runs a real
approval and checks that Temporal's history holds only ciphertext, which the endpoint decodes.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from api.main import create_app
from hitl.keys import KeyPurpose, load_keyring
from hitl.settings import get_settings, load_settings
from store.engine import create_engine, session_factory
from store.tables import AuditRow
from tests.api.conftest import TOKENS, auth, start_api
from tests.temporal_fixtures import make_proposal, start_gateway
from workflows.approval import ApprovalWorkflow
from workflows.codec import ENCODING, EncryptionCodec
from workflows.connection import gateway_data_converter
from workflows.guardian import GuardianWorkflow

UI_PORT = 8765
UI_ORIGIN = f"http://127.0.0.1:{UI_PORT}"
REASONING = "Breakout above resistance with rising volume."


def _as_json(*payloads: Payload) -> dict[str, Any]:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def _from_json(body: dict[str, Any]) -> list[Payload]:
    return [json_format.ParseDict(item, Payload()) for item in body["payloads"]]


PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(REASONING).encode())


@dataclass
class Codec:
    """The app, a codec with the same keys, and the database behind it."""

    app: Any
    codec: EncryptionCodec
    sessions: async_sessionmaker[AsyncSession]

    def http(self, *, client_host: str = "127.0.0.1") -> httpx.AsyncClient:
        """An HTTP client whose requests come from ``client_host``."""
        transport = httpx.ASGITransport(app=self.app, client=(client_host, 43210))
        return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000")


async def _codec_app(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str, *, embedded: bool
) -> AsyncIterator[Codec]:
    # Temporal is connected lazily and never used here: the codec needs only the keys.
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("TEMPORAL_UI_PORT", str(UI_PORT))
    monkeypatch.setenv("TEMPORAL_UI_LOOPBACK_CODEC", "true" if embedded else "false")
    monkeypatch.setenv("HITL_API_TOKENS", ",".join(f"{p}:{r}:{t}" for p, (r, t) in TOKENS.items()))
    settings = load_settings()
    app = create_app(settings)
    engine = create_engine(sqlite_url)
    async with app.router.lifespan_context(app):
        yield Codec(
            app=app,
            codec=EncryptionCodec(load_keyring(settings.keys_dir, KeyPurpose.PAYLOADS)),
            sessions=session_factory(engine),
        )
    await engine.dispose()


@pytest.fixture
async def embedded(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> AsyncIterator[Codec]:
    """The API as ``make run`` starts it: the embedded UI's origin is trusted from loopback."""
    async for codec in _codec_app(monkeypatch, sqlite_url, embedded=True):
        yield codec


@pytest.fixture
async def production(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> AsyncIterator[Codec]:
    """The API as compose starts it: tokens only."""
    async for codec in _codec_app(monkeypatch, sqlite_url, embedded=False):
        yield codec


async def _sealed(codec: Codec) -> Payload:
    (sealed,) = await codec.codec.encode([PLAIN])
    return sealed


@pytest.mark.parametrize("principal", ["alice", "admin"])
async def test_an_operator_or_admin_token_decodes(production: Codec, principal: str) -> None:
    sealed = await _sealed(production)
    async with production.http(client_host="203.0.113.9") as http:
        answer = await http.post(
            "/codec/decode",
            json=_as_json(sealed, PLAIN),
            headers={**auth(principal), "X-Namespace": "default"},
        )
    assert answer.status_code == 200, answer.text
    assert _from_json(answer.json()) == [PLAIN, PLAIN]  # plaintext passes through


async def test_encode_then_decode_round_trips(production: Codec) -> None:
    async with production.http() as http:
        encoded = await http.post("/codec/encode", json=_as_json(PLAIN), headers=auth("alice"))
        assert encoded.status_code == 200
        (sealed,) = _from_json(encoded.json())
        assert sealed.metadata["encoding"] == ENCODING
        assert REASONING.encode() not in sealed.data
        decoded = await http.post("/codec/decode", json=encoded.json(), headers=auth("alice"))
    assert _from_json(decoded.json()) == [PLAIN]


async def test_a_bot_token_is_refused_and_audited(production: Codec) -> None:
    sealed = await _sealed(production)
    async with production.http() as http:
        answer = await http.post("/codec/decode", json=_as_json(sealed), headers=auth("bot-1"))
    assert answer.status_code == 403
    assert answer.json()["error_code"] == "SEC-090"
    assert REASONING not in answer.text
    async with production.sessions() as session:
        refused = (
            await session.execute(select(AuditRow).where(AuditRow.action == "api.refused"))
        ).scalar_one()
    assert (refused.actor_id, refused.error_code) == ("bot-1", "SEC-090")
    assert refused.payload["path"] == "/codec/decode"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic YWxpY2U6eA=="}],
    ids=["no token", "wrong token", "not bearer"],
)
async def test_no_valid_token_is_refused(production: Codec, headers: dict[str, str]) -> None:
    sealed = await _sealed(production)
    async with production.http() as http:
        answer = await http.post("/codec/decode", json=_as_json(sealed), headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "SEC-001"


async def test_the_embedded_ui_decodes_from_its_own_loopback_origin(embedded: Codec) -> None:
    sealed = await _sealed(embedded)
    for origin in (UI_ORIGIN, f"http://localhost:{UI_PORT}"):
        async with embedded.http() as http:
            answer = await http.post(
                "/codec/decode",
                json=_as_json(sealed),
                headers={"Origin": origin, "X-Namespace": "default"},
            )
        assert answer.status_code == 200, answer.text
        assert _from_json(answer.json()) == [PLAIN]
        assert answer.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        f"http://127.0.0.1:{UI_PORT + 1}",
        f"https://127.0.0.1:{UI_PORT}",
        f"http://127.0.0.1.evil.example:{UI_PORT}",
        "null",
    ],
)
async def test_a_foreign_origin_is_refused(embedded: Codec, origin: str) -> None:
    sealed = await _sealed(embedded)
    async with embedded.http() as http:
        answer = await http.post("/codec/decode", json=_as_json(sealed), headers={"Origin": origin})
    assert answer.status_code == 401
    assert answer.json()["error_code"] == "SEC-001"
    assert "access-control-allow-origin" not in answer.headers


async def test_the_ui_origin_from_another_machine_is_refused(embedded: Codec) -> None:
    # Anyone can write an Origin header; only a loopback caller is the embedded UI's browser.
    sealed = await _sealed(embedded)
    async with embedded.http(client_host="192.0.2.7") as http:
        answer = await http.post(
            "/codec/decode", json=_as_json(sealed), headers={"Origin": UI_ORIGIN}
        )
    assert answer.status_code == 401


async def test_outside_the_embedded_setup_the_ui_origin_needs_a_token(production: Codec) -> None:
    sealed = await _sealed(production)
    async with production.http() as http:
        answer = await http.post(
            "/codec/decode", json=_as_json(sealed), headers={"Origin": UI_ORIGIN}
        )
    assert answer.status_code == 401


async def test_a_bot_token_is_refused_even_from_the_ui_origin(embedded: Codec) -> None:
    sealed = await _sealed(embedded)
    async with embedded.http() as http:
        answer = await http.post(
            "/codec/decode",
            json=_as_json(sealed),
            headers={"Origin": UI_ORIGIN, **auth("bot-1")},
        )
    assert answer.status_code == 403


@pytest.mark.parametrize("path", ["/codec/decode", "/codec/encode"])
async def test_the_preflight_allows_the_uis_origin_and_headers(embedded: Codec, path: str) -> None:
    async with embedded.http() as http:
        answer = await http.options(
            path,
            headers={
                "Origin": UI_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
            },
        )
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == UI_ORIGIN
    allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"x-namespace", "authorization", "content-type"} <= allowed
    assert "POST" in answer.headers["access-control-allow-methods"]


async def test_the_preflight_refuses_a_foreign_origin(embedded: Codec) -> None:
    async with embedded.http() as http:
        answer = await http.options(
            "/codec/decode",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
    assert answer.status_code == 403
    assert answer.json()["error_code"] == "SEC-090"
    assert "access-control-allow-origin" not in answer.headers


async def test_a_tampered_payload_is_sec_080(production: Codec) -> None:
    sealed = await _sealed(production)
    tampered = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + b"\x00")
    async with production.http() as http:
        answer = await http.post("/codec/decode", json=_as_json(tampered), headers=auth("alice"))
    assert answer.status_code == 409
    assert answer.json()["error_code"] == "SEC-080"


async def test_a_body_that_is_not_base64_is_sec_003(production: Codec) -> None:
    async with production.http() as http:
        answer = await http.post(
            "/codec/decode",
            json={"payloads": [{"metadata": {"encoding": "!!"}, "data": "AAAA"}]},
            headers=auth("alice"),
        )
    assert answer.status_code == 422
    assert answer.json()["error_code"] == "SEC-003"


# --- a real history -------------------------------------------------------------------------


def _history_payloads(history: dict[str, Any]) -> list[dict[str, Any]]:
    """Every payload object in a history's JSON (anything with ``data`` and ``metadata``)."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "metadata" in node and "data" in node and isinstance(node["metadata"], dict):
                found.append(node)
                return
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history)
    return found


async def test_temporal_holds_ciphertext_that_an_operator_decodes(
    dev_env: WorkflowEnvironment,
    sqlite_url: str,
    sqlite_sessions: async_sessionmaker[AsyncSession],
) -> None:
    gw = await start_gateway(dev_env, sqlite_sessions)
    proposal = make_proposal(gw.market)
    async with gw.worker:
        async for api in start_api(gw, sqlite_url):
            created = await api.http.post(
                "/api/hitl/requests",
                json=proposal.model_dump(mode="json", exclude={"correlation_id"}),
                headers=auth("bot-1"),
            )
            assert created.status_code == 201, created.text
            # A client without the payload key: what anyone with Temporal access sees.
            stranger = await Client.connect(
                dev_env.client.service_client.config.target_host,
                data_converter=pydantic_data_converter,
            )
            handle = stranger.get_workflow_handle(f"approval-{proposal.trade_id}")
            history = (await handle.fetch_history()).to_json_dict()
            payloads = _history_payloads(history)
            assert payloads
            # Ours are sealed: the workflow's input and every activity's input and result (the
            # request's are local activities: their results are in markers).
            started = history["events"][0]["workflowExecutionStartedEventAttributes"]
            ours = _history_payloads(started["input"])
            for event in history["events"]:
                for kind in (
                    "activityTaskScheduledEventAttributes",
                    "activityTaskCompletedEventAttributes",
                ):
                    ours += _history_payloads(event.get(kind, {}))
                marker = event.get("markerRecordedEventAttributes", {})
                if marker.get("markerName") == "core_local_activity":
                    ours += _history_payloads(marker["details"].get("result", {}))
            # The input, and the admission's with the request's write (one local activity from
            # approval-v9 on: its result, policy and stored request, in its marker).
            assert len(ours) >= 2
            assert all(base64.b64decode(p["metadata"]["encoding"]) == ENCODING for p in ours)
            # What stays plain is the SDK's own bookkeeping (patch and local-activity markers,
            # the change-version search attribute): none of our fields.
            for payload in payloads:
                if base64.b64decode(payload["metadata"]["encoding"]) != ENCODING:
                    bookkeeping = base64.b64decode(payload["data"])
                    for name in ("reasoning_summary", "instrument", "operator_id", "comment"):
                        assert name.encode() not in bookkeeping, bookkeeping
            # The bytes Temporal stores (JSON shows them base64): no proposal field in clear.
            stored = b"".join(base64.b64decode(p["data"]) for p in payloads)
            for clear in (REASONING, "reasoning_summary", str(proposal.trade_id)):
                assert clear.encode() not in stored
            # A history lists the workflow id (approval-<trade id>) in clear, by design; the
            # proposal's own fields appear nowhere.
            assert REASONING not in json.dumps(history)

            answer = await api.http.post(
                "/codec/decode", json={"payloads": payloads}, headers=auth("alice")
            )
            assert answer.status_code == 200, answer.text
            decoded = b"".join(p.data for p in _from_json(answer.json()))
            assert REASONING.encode() in decoded
            assert str(proposal.trade_id).encode() in decoded
            refused = await api.http.post(
                "/codec/decode", json={"payloads": payloads}, headers=auth("bot-1")
            )
            assert refused.status_code == 403

            # An encrypted history replays with the gateway's converter (the worker's view).
            replayer = Replayer(
                workflows=[ApprovalWorkflow, GuardianWorkflow],
                data_converter=gateway_data_converter(get_settings()),
            )
            replayed = await replayer.replay_workflow(await handle.fetch_history())
            assert replayed.replay_failure is None


def test_the_history_walker_finds_nested_payloads() -> None:
    history = {"events": [{"a": {"payloads": [{"metadata": {"e": "eA=="}, "data": "AA=="}]}}]}
    assert _history_payloads(history) == [{"metadata": {"e": "eA=="}, "data": "AA=="}]
