"""The codec endpoint: the Temporal UI's remote-codec protocol over the gateway's payload codec,
so operators can still read approvals in the UI although Temporal stores only ciphertext
(issue #14 item 5).

``POST /codec/decode`` and ``POST /codec/encode`` take and answer
``{"payloads": [{"metadata": {key: base64}, "data": base64}]}`` (Temporal's JSON form of
``Payloads``). They answer an operator or admin bearer token, or, when the gateway runs embedded
(``TEMPORAL_UI_LOOPBACK_CODEC``, set by ``make run``), a browser request from this machine whose
Origin is the embedded UI's own (``http://127.0.0.1:<TEMPORAL_UI_PORT>`` or
``http://localhost:<TEMPORAL_UI_PORT>``); anyone else gets SEC-001 or SEC-090. The UI calls the
endpoint from the browser, so the routes answer the CORS preflight for the UI's origin.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

import structlog
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from api.auth import authenticate
from api.correlation import current_correlation_id
from api.deps import ServicesDep, SessionDep
from api.errors import ErrorBody, responses
from api.services import Services
from hitl.errors import ErrorCode, HITLError
from hitl.principals import Role
from hitl.settings import Settings

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/codec", tags=["codec"])

ALLOWED_HEADERS = "authorization, content-type, x-namespace"
"""What the Temporal UI sends: its namespace, JSON, and (when configured) an access token."""
ALLOWED_METHODS = "POST, OPTIONS"
UI_PRINCIPAL = "temporal-ui"
"""Who a decode is logged as when the embedded UI's origin, not a token, admitted it."""
_READERS = (Role.OPERATOR, Role.ADMIN)


class CodecPayload(BaseModel):
    """One payload in Temporal's JSON form: metadata values and data are base64."""

    model_config = ConfigDict(extra="ignore")

    metadata: dict[str, str] = Field(default_factory=dict)
    data: str = ""


class CodecPayloads(BaseModel):
    """The remote-codec request and answer body."""

    model_config = ConfigDict(extra="ignore")

    payloads: list[CodecPayload]


def ui_origins(settings: Settings) -> frozenset[str]:
    """The origins the embedded Temporal UI is served from."""
    port = settings.temporal.ui_port
    return frozenset({f"http://127.0.0.1:{port}", f"http://localhost:{port}"})


def _cors(settings: Settings, origin: str | None) -> dict[str, str]:
    """CORS headers for the UI's origin; none for any other (the browser then withholds the
    answer from that page)."""
    if origin is None or origin not in ui_origins(settings):
        return {"Vary": "Origin"}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": ALLOWED_METHODS,
        "Access-Control-Allow-Headers": ALLOWED_HEADERS,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def _from_loopback(request: Request) -> bool:
    if request.client is None:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


async def _caller(
    request: Request,
    services: Services,
    session: SessionDep,
    *,
    authorization: str | None,
    origin: str | None,
) -> str:
    """Who may use the codec: an operator or admin token, or the embedded UI from this machine.

    A token always decides when one is sent. The Origin header alone proves nothing to a
    non-browser client, so it admits only when the gateway runs embedded and the request comes
    from a loopback address: whoever can send that can read the keys folder anyway.
    """
    settings = services.settings
    if authorization is not None:
        principal = await authenticate(
            authorization, declared=services.declared_tokens, session=session
        )
        await services.rate_limiter.hit(principal.id)
        if principal.role not in _READERS:
            await services.audit(
                actor_id=principal.id,
                action="api.refused",
                target_id="-",
                correlation_id=current_correlation_id(),
                error_code=ErrorCode.UNAUTHORISED_OPERATOR.code,
                payload={"path": request.url.path, "role": principal.role.value},
            )
            raise HITLError(
                ErrorCode.UNAUTHORISED_OPERATOR,
                f"the {principal.role.value} role may not read workflow payloads",
            )
        return principal.id
    if (
        settings.temporal.ui_loopback_codec
        and origin in ui_origins(settings)
        and _from_loopback(request)
    ):
        return UI_PRINCIPAL
    raise HITLError(
        ErrorCode.UNAUTHENTICATED, "the codec answers an operator or admin bearer token only"
    )


def _to_protobuf(body: CodecPayloads) -> list[Payload]:
    try:
        return [
            Payload(
                metadata={
                    key: base64.b64decode(value, validate=True)
                    for key, value in item.metadata.items()
                },
                data=base64.b64decode(item.data, validate=True),
            )
            for item in body.payloads
        ]
    except (binascii.Error, ValueError):
        raise HITLError(
            ErrorCode.INVALID_INPUT, "payload metadata values and data must be base64"
        ) from None


def _to_json(payloads: Sequence[Payload]) -> CodecPayloads:
    return CodecPayloads(
        payloads=[
            CodecPayload(
                metadata={
                    key: base64.b64encode(value).decode("ascii")
                    for key, value in payload.metadata.items()
                },
                data=base64.b64encode(payload.data).decode("ascii"),
            )
            for payload in payloads
        ]
    )


def _codec(services: Services) -> PayloadCodec:
    codec = services.temporal.data_converter.payload_codec
    if codec is None:
        raise HITLError(ErrorCode.SERVICE_UNAVAILABLE, "this process has no payload codec")
    return codec


async def _apply(
    action: str,
    transform: Callable[[PayloadCodec], Callable[[Sequence[Payload]], Awaitable[list[Payload]]]],
    *,
    body: CodecPayloads,
    request: Request,
    response: Response,
    services: Services,
    session: SessionDep,
    authorization: str | None,
    origin: str | None,
    namespace: str | None,
) -> CodecPayloads:
    response.headers.update(_cors(services.settings, origin))
    caller = await _caller(request, services, session, authorization=authorization, origin=origin)
    payloads = _to_protobuf(body)
    result = await transform(_codec(services))(payloads)
    log.info(
        f"payloads {action}d",
        actor=caller,
        action=f"codec.{action}",
        result="ok",
        count=len(payloads),
        namespace=namespace or "-",
    )
    return _to_json(result)


_ERRORS = responses(
    ErrorCode.UNAUTHENTICATED, ErrorCode.UNAUTHORISED_OPERATOR, ErrorCode.INTEGRITY_FAILURE
)
OriginHeader = Annotated[str | None, Header()]
AuthorizationHeader = Annotated[str | None, Header()]
NamespaceHeader = Annotated[str | None, Header(alias="x-namespace")]


@router.post("/decode", responses=_ERRORS)
async def decode(
    body: CodecPayloads,
    request: Request,
    response: Response,
    services: ServicesDep,
    session: SessionDep,
    authorization: AuthorizationHeader = None,
    origin: OriginHeader = None,
    x_namespace: NamespaceHeader = None,
) -> CodecPayloads:
    """Decrypt payloads for the Temporal UI or an operator's ``temporal --codec-endpoint``;
    payloads that are not encrypted come back as they are. SEC-080 when one does not decrypt."""
    return await _apply(
        "decode",
        lambda codec: codec.decode,
        body=body,
        request=request,
        response=response,
        services=services,
        session=session,
        authorization=authorization,
        origin=origin,
        namespace=x_namespace,
    )


@router.post("/encode", responses=_ERRORS)
async def encode(
    body: CodecPayloads,
    request: Request,
    response: Response,
    services: ServicesDep,
    session: SessionDep,
    authorization: AuthorizationHeader = None,
    origin: OriginHeader = None,
    x_namespace: NamespaceHeader = None,
) -> CodecPayloads:
    """Encrypt payloads under the active key (what the UI sends when it starts or signals a
    workflow; those commands still need the gateway's signature to be accepted)."""
    return await _apply(
        "encode",
        lambda codec: codec.encode,
        body=body,
        request=request,
        response=response,
        services=services,
        session=session,
        authorization=authorization,
        origin=origin,
        namespace=x_namespace,
    )


@router.options("/decode", include_in_schema=False)
@router.options("/encode", include_in_schema=False)
async def preflight(services: ServicesDep, origin: OriginHeader = None) -> Response:
    """The CORS preflight: allowed for the embedded UI's origin, SEC-090 for any other."""
    headers = _cors(services.settings, origin)
    if "Access-Control-Allow-Origin" not in headers:
        error = ErrorCode.UNAUTHORISED_OPERATOR
        body = ErrorBody(
            error_code=error.code,
            message=f"origin {origin!r} may not call the codec from a browser",
            correlation_id=current_correlation_id(),
        )
        return JSONResponse(body.model_dump(mode="json", exclude_none=True), 403, headers=headers)
    return Response(status_code=204, headers=headers)
