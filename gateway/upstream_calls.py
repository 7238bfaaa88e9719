"""What every adapter's upstream calls report, whatever its transport: each deployment gets an
HTTP session of its own over the process's one connection pool, with a client middleware that
counts the call (metrics, the access line's upstream calls) and sends the gateway's request id.

Adapters need do nothing: a request made through `ProviderContext.http` is counted under its
provider and deployment, and carries the request id as `X-Client-Request-Id` (OpenAI's name).
"""

from __future__ import annotations

import time

import aiohttp

from gateway import metrics, reqctx

CLIENT_REQUEST_ID = "X-Client-Request-Id"


def _middleware(provider: str, deployment_id: str) -> aiohttp.ClientMiddlewareType:
    async def observe(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        rid = reqctx.request_id()
        if rid and CLIENT_REQUEST_ID not in request.headers:
            request.headers[CLIENT_REQUEST_ID] = rid
        started = time.perf_counter()
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:  # an answer, or a failure on the way (status None): counted either way
            metrics.observe_upstream(provider, deployment_id, status,
                                     time.perf_counter() - started)
            reqctx.count_upstream_call()

    return observe


def session_for(
    connector: aiohttp.BaseConnector, provider: str, deployment_id: str
) -> aiohttp.ClientSession:
    """A deployment's session: its own observation, the shared pool (which it leaves open)."""
    return aiohttp.ClientSession(
        connector=connector, connector_owner=False,
        middlewares=(_middleware(provider, deployment_id),),
    )
