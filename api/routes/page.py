"""The operators' approval page: one HTML document, its script and its stylesheet, served by the
API itself from ``api/static`` (no build step, nothing loaded from another origin)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import ServicesDep

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
"""Where the page's files live (shipped inside the ``api`` package)."""

# Only these files are served: a fixed list cannot be walked out of with ``..``.
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

_SECURITY_HEADERS = {
    # The page holds an operator's token: no script, style or connection from anywhere but this
    # origin, and no framing, so another site cannot overlay the approve button (clickjacking).
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    # A deep link carries a one-time token in its query string; never pass it on as a referrer.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    # Revalidate each time, so that operators never run an old script against a newer API.
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["page"], include_in_schema=False)


def _file(name: str, media_type: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_SECURITY_HEADERS)


@router.get("/")
async def approval_page() -> FileResponse:
    """The approval page: sign in, then the pending approvals, live."""
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/approvals/{trade_id}")
async def deep_link_page(trade_id: str) -> FileResponse:
    """The same page, landing on one approval; the script reads the id and the link's ``token``.

    ``trade_id`` stays a string here so that a mistyped link still gets the page, which explains
    the problem to a person instead of answering JSON.
    """
    del trade_id  # read by the script from the address bar
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/page-config")
async def page_config(services: ServicesDep) -> JSONResponse:
    """What the page needs of the settings (nothing secret): where the Temporal UI shows each
    approval (``HITL_TEMPORAL_UI_URL``, empty for no link) and the namespace."""
    settings = services.settings
    return JSONResponse(
        {
            "temporal_ui_url": settings.hitl.temporal_ui_url.strip().rstrip("/"),
            "namespace": settings.temporal.namespace,
        },
        headers=_SECURITY_HEADERS,
    )


@router.get("/static/{name}")
async def static_asset(name: str) -> FileResponse:
    """The page's script and stylesheet."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise StarletteHTTPException(status_code=404, detail=f"no static file {name!r}")
    return _file(name, media_type)
