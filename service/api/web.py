"""The web page: `GET /` and its three static files, served by the service itself.

Mounted with `app.include_router(web.router)`. The page is hand-written HTML, CSS and JavaScript
in `service/api/static/` (no framework, no build step, nothing from another origin); it talks to the
service's own `/upscale`, `/readyz` and `/models` (the model picker; hidden without it).

The service's limits are written into the page when it is served (a JSON block read by
`app.js`), taken from the app's settings, so the page can refuse a file that is too
large before uploading it.

Caching: the page itself is `no-cache` (revalidated every time, with an ETag, since the limits
may change with a restart). The assets are referenced with `?v=<content hash>` and served
`immutable` for a year under that version; any other version is answered `no-cache`, so a
stale link never pins an old file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response

from service.api.context import context_of

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_CONFIG_PLACEHOLDER = "<!--service-config-->"

#: The only files served under /static/, with their media types.
_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

_SECURITY_HEADERS = {
    # Everything comes from this origin; images are shown from blob: URLs made by the page.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    version: str


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


@cache
def _assets() -> dict[str, _Asset]:
    folder = resources.files("service.api") / "static"
    assets = {}
    for name, media_type in _ASSETS.items():
        body = (folder / name).read_bytes()
        assets[name] = _Asset(body, media_type, hashlib.sha256(body).hexdigest()[:12])
    return assets


@cache
def _template() -> str:
    html = (resources.files("service.api") / "static" / "index.html").read_text(encoding="utf-8")
    for name, asset in _assets().items():
        html = html.replace(f'"static/{name}"', f'"static/{name}?v={asset.version}"')
    return html


def page_config(settings: Any, jobs: bool = False) -> dict[str, Any]:
    """What the page needs to know about the service: its limits, from the settings, and
    `jobs: true` when it keeps jobs (the page then submits every image as one)."""
    config = {
        "maxUploadBytes": settings.max_upload_bytes,
        "maxInputPixels": settings.max_input_pixels,
        "maxEnsembleInputPixels": settings.max_ensemble_input_pixels,
    }
    return {**config, "jobs": True} if jobs else config


def _render(settings: Any, jobs: bool) -> bytes:
    # `<` is escaped so that no value can close the script element.
    config = json.dumps(page_config(settings, jobs)).replace("<", "\\u003c")
    block = f'<script id="service-config" type="application/json">{config}</script>'
    return _template().replace(_CONFIG_PLACEHOLDER, block).encode()


def _answer(request: Request, body: bytes, media_type: str, cache_control: str) -> Response:
    etag = _etag(body)
    headers = {"ETag": etag, "Cache-Control": cache_control, **_SECURITY_HEADERS}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type=media_type, headers=headers)


@router.get("/")
async def index(request: Request) -> Response:
    """The page, with the service's limits written in."""
    context = context_of(request)
    body = _render(context.settings, context.jobs is not None)
    return _answer(request, body, "text/html; charset=utf-8", "no-cache")


@router.get("/static/{name}")
async def static_file(request: Request, name: str) -> Response:
    """One of the page's assets; immutable when asked for under its current version."""
    asset = _assets().get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail=f"no static file {name!r}")
    immutable = request.query_params.get("v") == asset.version
    return _answer(request, asset.body, asset.media_type, _IMMUTABLE if immutable else "no-cache")
