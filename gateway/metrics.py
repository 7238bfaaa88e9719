"""Prometheus metrics (prometheus_client): what each process counts as it serves.

Counters and histograms live in this process's registry, or, when `PROMETHEUS_MULTIPROC_DIR` is
set (`gateway serve --workers N` sets it), in files every worker writes and any worker reads
back at scrape time: whichever worker answers `/metrics` reports the sum over all of them.
The environment variable must be set before this module is first imported, which is why the
workers (fresh processes) see it and the supervising process does not need to.

Gauges that describe shared state (batches by status, copies not ready, leases) are read from
the database at scrape time instead: see `gateway.api.metrics`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

if os.environ.get(MULTIPROC_ENV):
    # The metrics below open their files there as they are defined.
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

# Requests are mostly small control-plane calls; uploads and downloads take seconds to minutes.
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

REQUESTS = Counter(
    "gateway_requests", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
REQUEST_SECONDS = Histogram(
    "gateway_request_duration_seconds", "Time to answer an HTTP request, by route template.",
    ["method", "route"], buckets=_LATENCY,
)
UPSTREAM = Counter(
    "gateway_upstream_requests",
    "Calls to providers, by provider, deployment id and outcome (ok, http_4xx, http_429, "
    "http_5xx, network).",
    ["provider", "deployment", "outcome"],
)
UPSTREAM_SECONDS = Histogram(
    "gateway_upstream_request_duration_seconds",
    "Time to a provider's answer (headers, for streamed content), by provider, deployment id "
    "and outcome.",
    ["provider", "deployment", "outcome"], buckets=_LATENCY,
)
UPLOADED = Counter("gateway_uploaded_bytes", "Bytes of files received from clients (uploads).")
DOWNLOADED = Counter(
    "gateway_downloaded_bytes", "Bytes of file content sent to clients (files.content).")
BACKGROUND_SUCCESS = Gauge(
    "gateway_background_last_success_timestamp_seconds",
    "When a background job (batch poll, copy retry, file retention) last ran without error, "
    "most recent over the workers; its age is the background lag.",
    ["job"], multiprocess_mode="max",
)


def outcome_of(status: int | None) -> str:
    """An upstream answer's outcome label: `ok`, `http_429`, `http_4xx`, `http_5xx`, or
    `network` for no answer at all."""
    if status is None:
        return "network"
    if status < 400:
        return "ok"
    if status == 429:
        return "http_429"
    return "http_4xx" if status < 500 else "http_5xx"


def observe_upstream(provider: str, deployment: str, status: int | None,
                     seconds: float) -> None:
    outcome = outcome_of(status)
    UPSTREAM.labels(provider, deployment, outcome).inc()
    UPSTREAM_SECONDS.labels(provider, deployment, outcome).observe(seconds)


def background_succeeded(job: str) -> None:
    BACKGROUND_SUCCESS.labels(job).set(time.time())


class _Fixed(Collector):
    """A collector for families already built (those read from the database)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(extra: Iterable[Metric] = ()) -> bytes:
    """The text exposition: this process's (or every worker's) metrics, then `extra`."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        counted = generate_latest(registry)
    else:
        counted = generate_latest(REGISTRY)
    return counted + generate_latest(_Fixed(extra))
