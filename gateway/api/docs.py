"""/openapi.json and /docs: the API description and a page rendering it, no key needed.

The description is `gateway/openapi.yaml` (OpenAPI 3.1, written by hand next to the code; a
test checks that it and the app's routes name the same paths and methods). `servers` is the
root path the gateway is served under, so "Try it out" works behind a proxy prefix. The page
is Swagger UI, vendored in `gateway/docs_assets/` (package data, Apache-2.0): every asset comes
from the gateway itself, so it works offline.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import msgspec
import yaml
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "init.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
_HEADERS = {
    # Swagger UI sets inline styles; everything else is the gateway's own.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@cache
def description() -> dict[str, Any]:
    text = resources.files("gateway").joinpath("openapi.yaml").read_text()
    spec: dict[str, Any] = yaml.safe_load(text)
    from gateway import __version__

    spec["info"]["version"] = __version__
    return spec


@cache
def _asset(name: str) -> bytes:
    return resources.files("gateway").joinpath("docs_assets", name).read_bytes()


async def openapi(request: Request) -> Response:
    spec = {**description(), "servers": [{"url": request.scope.get("root_path") or "/"}]}
    return Response(msgspec.json.encode(spec), media_type="application/json")


async def page(request: Request) -> Response:
    return Response(_asset("index.html"), media_type=_TYPES["index.html"], headers=_HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in _TYPES or name == "index.html":
        raise HTTPException(404, "Not Found")
    return Response(_asset(name), media_type=_TYPES[name],
                    headers={**_HEADERS, "Cache-Control": "public, max-age=86400"})


routes = [
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", page, methods=["GET"]),
    Route("/docs/{name}", asset, methods=["GET"]),
]
