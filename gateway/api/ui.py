"""/ui: the dashboard, a static page that is a client of the public API.

Three files from `gateway/ui/` (package data), served with a strict Content-Security-Policy:
only the gateway's own script, styles and API (no CDN, works offline). The page keeps the
key the user enters in the tab's sessionStorage and sends it as a Bearer header; nothing here
reads it.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("gateway").joinpath("ui", name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_asset(name), media_type=_TYPES[name], headers=_HEADERS)


async def page(request: Request) -> Response:
    return _serve("index.html")


async def bare(request: Request) -> Response:
    # Relative, so the page's relative asset and API URLs work behind a path prefix too.
    return RedirectResponse("ui/", status_code=308)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _TYPES:
        raise HTTPException(404, "Not Found")
    return _serve(name)


routes = [
    Route("/ui", bare, methods=["GET"]),
    Route("/ui/", page, methods=["GET"]),
    Route("/ui/{name}", asset, methods=["GET"]),
]
