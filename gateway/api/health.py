"""Health probes, LiteLLM's paths, no key needed.

- `/health/liveliness` (and `/health/liveness`): the process answers; no I/O.
- `/health/readiness`: the gateway has started (file store, providers), the database answers
  within `READINESS_TIMEOUT` seconds and its schema is at the version this code migrates to;
  otherwise 503 with the reason. While shutting down it is 503 too, so balancers drain it.
- `/health`: kept as it always was.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api.common import gateway, json_response
from gateway.runtime import Gateway
from gateway.store import schema

log = logging.getLogger("gateway.health")

READINESS_TIMEOUT = 2.0
_SCHEMA_VERSION = sa.select(sa.func.coalesce(sa.func.max(schema.schema_version.c.version), 0))


async def health(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def liveliness(request: Request) -> Response:
    return Response(b'{"status":"alive"}', media_type="application/json")


async def not_ready(gw: Gateway, started: bool) -> tuple[str | None, dict[str, Any]]:
    """Why the gateway cannot take traffic (None: it can), and what it checked."""
    if not started:
        return "starting or shutting down", {}
    missing = [d for d in gw.deployments if gw.provider(d) is None]
    if gw.http is None or missing:
        return f"{len(missing)} of {len(gw.deployments)} providers not started", {}
    try:
        version = await asyncio.wait_for(gw.store.db.fetch_val(_SCHEMA_VERSION),
                                         READINESS_TIMEOUT)
    except TimeoutError:
        return f"database did not answer within {READINESS_TIMEOUT:g} s", {}
    except Exception as e:
        # The probe is unauthenticated: the reason names the failure, the log has the detail.
        log.warning("readiness: database check failed: %s: %s", type(e).__name__, e)
        return f"database unreachable ({type(e).__name__})", {}
    wanted = len(schema.MIGRATIONS)
    if int(version or 0) < wanted:
        return f"database schema at version {version}, migrations to {wanted} not applied", {}
    return None, {"database": "connected", "schema_version": int(version),
                  "deployments": len(gw.deployments)}


async def readiness(request: Request) -> Response:
    gw = gateway(request)
    reason, facts = await not_ready(gw, bool(getattr(request.app.state, "ready", False)))
    if reason is not None:
        return json_response({"status": "not ready", "reason": reason}, status=503)
    return json_response({"status": "ready", **facts})


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/health/liveliness", liveliness, methods=["GET"]),
    Route("/health/liveness", liveliness, methods=["GET"]),
    Route("/health/readiness", readiness, methods=["GET"]),
]
