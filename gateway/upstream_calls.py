"""What every adapter's upstream calls report, whatever its transport: each deployment gets an
HTTP session of its own over the process's one connection pool, with a client middleware that
counts the call (metrics, the access line's upstream calls), sends the gateway's request id and
logs a failure with the deployment id and the provider's request id.

Adapters need do nothing: a request made through `ProviderContext.http` is counted under its
provider and deployment, and carries the request id as `X-Client-Request-Id` (OpenAI's name).
"""

from __future__ import annotations

import logging
import time

import aiohttp

from gateway import metrics, reqctx

CLIENT_REQUEST_ID = "X-Client-Request-Id"
# Where providers put their own request id: OpenAI and Azure, Anthropic, AWS, Google.
_PROVIDER_IDS = ("x-request-id", "request-id", "x-amzn-requestid", "x-guploader-uploadid")

log = logging.getLogger("gateway.upstream")


def _log_failure(
    deployment_id: str, request: aiohttp.ClientRequest, status: int | None,
    response: aiohttp.ClientResponse | None, error: BaseException | None,
) -> None:
    """Never the URL's query or any header but the provider's request id: credentials may be
    in them. A provider refusing a request (a 404 on a copy already gone) is routine; one
    failing, or refusing the gateway's credential, is not."""
    where = f"upstream {request.method} {request.url.path} on deployment {deployment_id}"
    if status is None:
        log.warning("%s failed: %s (provider request id -)", where, type(error).__name__)
        return
    headers = response.headers if response is not None else {}
    rid = next((headers[h] for h in _PROVIDER_IDS if h in headers), "-")
    level = logging.WARNING if status >= 500 or status in (401, 403, 429) else logging.INFO
    log.log(level, "%s answered HTTP %d (provider request id %s)", where, status, rid)


def _middleware(provider: str, deployment_id: str) -> aiohttp.ClientMiddlewareType:
    async def observe(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        rid = reqctx.request_id()
        if rid and CLIENT_REQUEST_ID not in request.headers:
            request.headers[CLIENT_REQUEST_ID] = rid
        started = time.perf_counter()
        status: int | None = None
        response: aiohttp.ClientResponse | None = None
        error: BaseException | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except BaseException as e:
            error = e
            raise
        finally:  # an answer, or a failure on the way (status None): counted either way
            metrics.observe_upstream(provider, deployment_id, status,
                                     time.perf_counter() - started)
            reqctx.count_upstream_call()
            if status is None or status >= 400:
                _log_failure(deployment_id, request, status, response, error)

    return observe


def session_for(
    connector: aiohttp.BaseConnector, provider: str, deployment_id: str
) -> aiohttp.ClientSession:
    """A deployment's session: its own observation, the shared pool (which it leaves open)."""
    return aiohttp.ClientSession(
        connector=connector, connector_owner=False,
        middlewares=(_middleware(provider, deployment_id),),
    )
