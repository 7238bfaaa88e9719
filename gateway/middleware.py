"""The outermost layer of every HTTP request: request id, access log, metrics, last-resort
error envelope.

- `x-request-id` is taken from the request (sanitised, at most 128 characters) or made up,
  set for the request's duration (`gateway.reqctx`: the OpenAI wire sends it upstream as
  `X-Client-Request-Id`, logs carry it) and returned on every response, errors included.
- One access line per request on `gateway.access`: method, route template, path, status,
  duration, the key's token id (never the key), model group and upstream calls where known,
  client address and request id. Probes and scrapes log at DEBUG.
- `gateway_requests_total` / `gateway_request_duration_seconds` by route template (never the
  raw path: ids would make every request a new series), uploaded and downloaded bytes.
- An exception no handler turned into an answer is logged once with its request id and
  answered with OpenAI's 500 envelope.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics, reqctx
from gateway.errors import envelope

access_log = logging.getLogger("gateway.access")
log = logging.getLogger("gateway")

UNMATCHED = "<unmatched>"
# Routes whose access lines are DEBUG: polled by machines every few seconds.
QUIET_ROUTES = frozenset({"/health", "/health/liveliness", "/health/liveness",
                          "/health/readiness", "/metrics"})
UPLOAD_ROUTES = frozenset({"/v1/files", "/files"})
# A request that ended without an answer (the client went away): nginx's convention.
CLIENT_CLOSED = 499


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestObserver:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = next((v for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = reqctx.accept_request_id(given.decode("latin-1") if given else None)
        raw_rid = rid.encode("ascii")
        info, token = reqctx.begin(rid)
        status = 0
        received = sent = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
            return message

        async def tagged_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", raw_rid)]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, tagged_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status == 0:
                body = envelope("Internal gateway error.", "api_error", None, "internal_error")
                await tagged_send({"type": "http.response.start", "status": 500, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]})
                await tagged_send({"type": "http.response.body", "body": body})
            # A response already under way cannot change its status: the connection closes.
        finally:
            reqctx.end(token)
            self._record(scope, info, status or CLIENT_CLOSED, received, sent,
                         time.perf_counter() - started)

    @staticmethod
    def _record(scope: Scope, info: reqctx.RequestInfo, status: int, received: int, sent: int,
                seconds: float) -> None:
        method: str = scope["method"]
        route = route_template(scope)
        metrics.REQUESTS.labels(method, route, str(status)).inc()
        metrics.REQUEST_SECONDS.labels(method, route).observe(seconds)
        if method == "POST" and route in UPLOAD_ROUTES and received:
            metrics.UPLOADED.inc(received)
        elif route.endswith("/content") and sent and status == 200:
            metrics.DOWNLOADED.inc(sent)
        level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
        if not access_log.isEnabledFor(level):
            return  # nothing more to build
        client = scope.get("client")
        fields: dict[str, Any] = {
            "method": method,
            "route": route,
            "path": scope["path"],  # no query string: it may hold a key (`/key/info?key=`)
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "key": info.key,
            "model_group": info.model_group,
            "upstream_calls": info.upstream_calls,
            "client": client[0] if client else None,
            "request_id": info.request_id,
        }
        access_log.log(
            level,
            "%s %s %d %.1fms key=%s group=%s upstream=%d client=%s request_id=%s",
            method, route, status, fields["duration_ms"], info.key or "-",
            info.model_group or "-", info.upstream_calls, fields["client"] or "-",
            info.request_id, extra=fields,
        )

