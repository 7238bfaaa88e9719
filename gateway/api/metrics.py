"""/metrics: Prometheus' text format, with the master key; or, when
`general_settings.metrics_port` is set, also without a key on that port (for a scraper inside
the network; keep the port off the public side).

Besides what the processes count (`gateway.metrics`), each scrape reads the shared state from
the database: batches by status and model group, copies not ready, leases held and how far the
background refresh lags. A database that does not answer within `SCRAPE_TIMEOUT` leaves those
out and sets `gateway_database_up` to 0; the scrape itself still succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator

import sqlalchemy as sa
import uvicorn
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import metrics
from gateway.api.common import gateway
from gateway.runtime import Gateway
from gateway.store import schema

log = logging.getLogger("gateway.metrics")

SCRAPE_TIMEOUT = 5.0
_b, _c, _l = schema.batches, schema.copies, schema.leases


async def database_families(gw: Gateway) -> list[Metric]:
    """Gauges of shared state, read now (on whichever worker answers the scrape)."""
    up = GaugeMetricFamily("gateway_database_up",
                           "1 if the database answered this scrape's queries in time.")
    try:
        families = await asyncio.wait_for(_read(gw), SCRAPE_TIMEOUT)
    except Exception as e:
        log.warning("metrics: database read failed: %s: %s", type(e).__name__, e)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    return [up, *families]


async def _read(gw: Gateway) -> list[Metric]:
    db = gw.store.db
    now = time.time()
    batches = GaugeMetricFamily("gateway_batches", "Batches by status and model group.",
                                labels=["status", "model_group"])
    for r in await db.fetch_all(
        sa.select(_b.c.status, _b.c.model_group, sa.func.count().label("n"))
        .group_by(_b.c.status, _b.c.model_group)
    ):
        batches.add_metric([r["status"], r["model_group"]], r["n"])

    copies = GaugeMetricFamily(
        "gateway_copies_not_ready",
        "Deployments' copies of input files not ready (pending: being made; failed: made "
        "again after a backoff), by state, model group and deployment.",
        labels=["state", "model_group", "deployment"])
    for r in await db.fetch_all(
        sa.select(_c.c.state, _c.c.deployment_id, sa.func.count().label("n"))
        .where(_c.c.state != "ready").group_by(_c.c.state, _c.c.deployment_id)
    ):
        d = gw.deployments.get(r["deployment_id"])
        copies.add_metric([r["state"], d.model_name if d else "", r["deployment_id"]], r["n"])

    leases = GaugeMetricFamily("gateway_batch_leases_held",
                               "Unfinished batches an instance holds a refresh lease on.")
    held = await db.fetch_val(sa.select(sa.func.count()).select_from(_l)
                              .where(_l.c.lease_until > now))
    leases.add_metric([], int(held or 0))

    # When each unfinished batch was last looked at: its last change, or the last time a
    # poller claimed it (a lease runs for one poll interval from the claim).
    interval = gw.settings.batch_poll_interval
    claimed = _l.c.lease_until - interval
    seen = sa.case((claimed > _b.c.updated_at, claimed), else_=_b.c.updated_at)
    oldest = await db.fetch_val(
        sa.select(sa.func.min(seen))
        .select_from(_b.outerjoin(_l, _l.c.batch_id == _b.c.id))
        .where(_b.c.terminal.is_(False), _b.c.deployment_id.in_(list(gw.deployments)))
    )
    lag = GaugeMetricFamily(
        "gateway_batch_refresh_lag_seconds",
        "Seconds since the least recently refreshed unfinished batch was last refreshed (by a "
        "poller's claim or a change); 0 when none is unfinished.")
    lag.add_metric([], max(now - float(oldest), 0.0) if oldest is not None else 0.0)
    return [batches, copies, leases, lag]


async def scrape(gw: Gateway) -> Response:
    families = await database_families(gw)
    body = metrics.exposition(families)
    return Response(body, media_type=None, headers={"Content-Type": metrics.CONTENT_TYPE})


async def metrics_endpoint(request: Request) -> Response:
    gw = gateway(request)
    await gw.auth.master(request)
    return await scrape(gw)


routes = [Route("/metrics", metrics_endpoint, methods=["GET"])]


# -- the separate, open metrics port -------------------------------------------------------


class _QuietServer(uvicorn.Server):
    """A uvicorn server inside the main one's process: the main server handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def metrics_app(gw: Gateway) -> Starlette:
    async def open_metrics(request: Request) -> Response:
        return await scrape(gw)

    return Starlette(routes=[Route("/metrics", open_metrics, methods=["GET"])])


@contextlib.asynccontextmanager
async def metrics_port(gw: Gateway, host: str, port: int) -> AsyncIterator[None]:
    """Serve `/metrics` without a key on host:port while the block runs. The socket takes
    SO_REUSEPORT so every worker of `--workers N` can listen on it: any one of them reports
    the metrics of all (multiprocess mode)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                         socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    server = _QuietServer(uvicorn.Config(metrics_app(gw), lifespan="off", access_log=False,
                                         log_config=None))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("metrics on http://%s:%d/metrics (no key)", host, port)
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        sock.close()
