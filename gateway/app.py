"""The ASGI app: routes, lifespan and the one place errors become OpenAI envelopes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import content, recovery
from gateway.api import (
    batches,
    docs,
    files,
    health,
    idempotency,
    keys,
    metrics,
    models,
    spend,
    teams,
    ui,
    usage,
    users,
)
from gateway.api import webhooks as webhook_api
from gateway.errors import GatewayError, envelope
from gateway.middleware import RequestObserver
from gateway.poller import Poller, every
from gateway.runtime import Gateway
from gateway.selfrun.engine import Engine
from gateway.webhooks import Deliverer

log = logging.getLogger("gateway")


async def gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return Response(
        exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers
    )


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return Response(
        envelope(message, "invalid_request_error", None, code),
        status_code=exc.status_code,
        media_type="application/json",
    )


async def internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(
        envelope("Internal gateway error.", "api_error", None, "internal_error"),
        status_code=500,
        media_type="application/json",
    )


def _routes() -> list[BaseRoute]:
    out: list[BaseRoute] = [*health.routes, *metrics.routes, *docs.routes, *webhook_api.routes]
    for module in (files, batches, keys, teams, users, models, usage, spend, ui):
        for route in module.routes:
            out.append(route)
            # Clients configured with a base URL without /v1 (LiteLLM's style) work too.
            if route.path.startswith("/v1/"):
                out.append(Route(route.path[3:], route.endpoint, methods=route.methods))
    return out


def _middleware(gw: Gateway) -> list[Middleware]:
    # The observer is outermost, so CORS preflights and every error get a request id too.
    stack = [Middleware(RequestObserver)]
    origins = gw.settings.cors_origins
    if origins:
        stack.append(Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "api-key", "Content-Type", "x-request-id",
                           "OpenAI-Organization", "OpenAI-Project"],
            expose_headers=["x-request-id", "Retry-After"],
            allow_credentials=False,  # keys travel as headers, never cookies
            max_age=600,
        ))
    return stack


def create_app(gw: Gateway, metrics_host: str = "127.0.0.1") -> Starlette:
    """The app for `gw`; `metrics_host` is where `general_settings.metrics_port` listens
    (`gateway serve` passes its `--host`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gw.start()  # closes what it opened if it fails
        interval = gw.settings.batch_poll_interval
        tasks = [asyncio.create_task(Poller(gw, interval).run())] if interval > 0 else []
        # Failed copies to deployments are made again once their backoff has passed.
        retry = max(min(gw.settings.copy_retry_interval / 2, 30.0), 0.05)
        tasks.append(asyncio.create_task(
            every(retry, lambda: gw.copier.retry_due(gw.providers), "copy retry")))
        # Deletions cut short by a crash or an upstream error are finished on the same beat,
        # and files whose `expires_after` has passed are deleted.
        tasks.append(asyncio.create_task(
            every(retry, lambda: content.finish_deletes(gw), "deletion janitor")))
        tasks.append(asyncio.create_task(
            every(retry, lambda: content.expire_files(gw), "file expiry")))
        tasks.append(asyncio.create_task(
            every(3600.0, lambda: idempotency.purge(gw), "idempotency key purge")))
        # This process's intents stay its own while it lives; a dead one's are reconciled.
        lease = gw.settings.crash_recovery_seconds
        tasks.append(asyncio.create_task(every(lease / 4, gw.journal.renew, "intent renewal")))
        tasks.append(asyncio.create_task(
            every(min(lease / 2, 30.0), lambda: recovery.reconcile(gw), "crash recovery")))
        # Batch events from the outbox, soon after they are queued and when retries fall due
        # (always: any key may be given a webhook_url).
        tick = min(max(gw.settings.webhook_retry_seconds / 2, 0.05), 1.0)
        tasks.append(asyncio.create_task(
            every(tick, Deliverer(gw).deliver_due, "webhook delivery")))
        engine = Engine(gw, gw.settings.gateway_run_lease_seconds)
        if engine.providers:  # deployments whose batches the gateway runs itself
            tasks.append(asyncio.create_task(engine.run()))
        if gw.settings.file_retention_days is not None:
            sweep = min(max(gw.settings.file_retention_days * 86_400 / 4, 0.1), 3600.0)
            tasks.append(asyncio.create_task(
                every(sweep, lambda: content.expire_inputs(gw), "file retention")))
        # Everything alive now lives as long as the process: keep the collector from walking
        # it on every full collection (those pauses showed as the p99 of small requests).
        gc.freeze()
        try:
            async with contextlib.AsyncExitStack() as stack:
                port = gw.settings.metrics_port
                if port:
                    host = gw.settings.metrics_host or metrics_host
                    await stack.enter_async_context(metrics.metrics_port(gw, host, port))
                app.state.ready = True
                try:
                    yield
                finally:
                    app.state.ready = False  # readiness answers 503 while shutting down
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await gw.stop()

    app = Starlette(
        routes=_routes(),
        middleware=_middleware(gw),
        lifespan=lifespan,
        exception_handlers={
            GatewayError: gateway_error,
            HTTPException: http_error,
            Exception: internal_error,
        },
    )
    app.state.gateway = gw
    app.state.ready = False
    return app
