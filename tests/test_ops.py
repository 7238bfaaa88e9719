"""Operations, in process: the access log (text and JSON), request ids (to the client, into
upstream calls and error logs), every metric family after a scripted flow, health probes
(readiness failing while the database is down and recovering), the OpenAPI description."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.docs import description
from gateway.logs import JSONFormatter, TextFormatter
from gateway.store import Store
from gateway.store.schema import MIGRATIONS
from gateway.testing.fixtures import PG_ADMIN_DSN
from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file


class Captured:
    """Log records of the `gateway` loggers, formatted as `gateway serve` would."""

    def __init__(self, formatter: logging.Formatter) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(formatter)
        self.logger = logging.getLogger("gateway")

    def __enter__(self) -> Captured:
        self.old_level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.old_level)

    @property
    def lines(self) -> list[str]:
        return self.stream.getvalue().splitlines()

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


def access_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["logger"] == "gateway.access"]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


# -- logs and request ids ---------------------------------------------------------------------


def test_access_log_json_and_request_id_end_to_end(
    gateway: ServerThread, upstreams: list[Upstream], make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI], admin: httpx.Client,
) -> None:
    key = make_key([GROUP])
    token = admin.get("/key/info", params={"key": key}).json()["key"]
    client = client_for(key)
    with Captured(JSONFormatter()) as logs:
        file = client.files.create(file=batch_file(2), purpose="batch",
                                   extra_body={"target_model_names": GROUP},
                                   extra_headers={"x-request-id": "upload-1"})
        batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                      completion_window="24h",
                                      extra_headers={"x-request-id": "create-1"})
        raw = client.batches.with_raw_response.retrieve(
            batch.id, extra_headers={"x-request-id": "retrieve-1"})
        assert raw.headers["x-request-id"] == "retrieve-1"
        missing = client.with_options(max_retries=0).files.with_raw_response
        with pytest.raises(openai.NotFoundError) as info:
            missing.retrieve("file-nope", extra_headers={"x-request-id": "gone-1"})
    assert info.value.response.headers["x-request-id"] == "gone-1"

    records = logs.json()  # every line is one JSON object
    assert all(isinstance(r, dict) and r["ts"].endswith("Z") for r in records)
    lines = {r["request_id"]: r for r in access_lines(records)}
    upload, create, retrieve = lines["upload-1"], lines["create-1"], lines["retrieve-1"]
    assert upload["method"] == "POST" and upload["route"] == "/v1/files"
    assert upload["status"] == 200 and upload["model_group"] == GROUP
    assert upload["upstream_calls"] == 2  # one copy per deployment of the group
    assert create["route"] == "/v1/batches" and create["model_group"] == GROUP
    assert create["upstream_calls"] >= 1
    assert retrieve["route"] == "/v1/batches/{id}" and retrieve["path"] == f"/v1/batches/{batch.id}"
    assert retrieve["model_group"] == GROUP and retrieve["upstream_calls"] == 1
    assert lines["gone-1"]["status"] == 404 and lines["gone-1"]["route"] == "/v1/files/{id}"
    for line in (upload, create, retrieve):
        assert line["key"] == token and token.startswith("key_")
        assert isinstance(line["duration_ms"], float) and line["client"] == "127.0.0.1"
    # The key itself never reaches a log line.
    assert key not in logs.stream.getvalue()

    # The request id went upstream as OpenAI's X-Client-Request-Id.
    sent = [(m, p, h.get("x-client-request-id")) for up in upstreams[:2]
            for m, p, _, h in up.fake.requests]
    assert ("POST", "/v1/files", "upload-1") in sent
    assert any(p == "/v1/batches" and rid == "create-1" for m, p, rid in sent)
    assert any(p.startswith("/v1/batches/") and rid == "retrieve-1" for m, p, rid in sent)


def test_request_ids_are_sanitised_bounded_or_made_up(gateway: ServerThread) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        made = http.get("/v1/models").headers["x-request-id"]  # a 401: errors get one too
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        assert http.get("/v1/models").headers["x-request-id"] != made
        dirty = http.get("/health", headers={"x-request-id": 'a b"<c>\tok;' + "x" * 300})
        assert dirty.headers["x-request-id"] == "abcok" + "x" * 123
        assert len(dirty.headers["x-request-id"]) == 128
        only_junk = http.get("/health", headers={"x-request-id": "<>;"}).headers
        assert re.fullmatch(r"[0-9a-f]{32}", only_junk["x-request-id"])
        assert http.get("/nowhere").headers["x-request-id"]


def test_text_access_line_and_error_logs_carry_the_request_id(
    gateway: ServerThread, upstreams: list[Upstream], client: openai.OpenAI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file = client.files.create(file=batch_file(2), purpose="batch",
                               extra_body={"target_model_names": GROUP})
    for up in upstreams[:2]:
        up.fake.fail("POST", r"^/v1/batches$", 500, times=1)
    app = gateway.server.config.app
    gw = app.state.gateway

    async def broken(owner: str | None, limit: int) -> list[dict[str, Any]]:
        raise RuntimeError("boom")

    monkeypatch.setattr(gw.store, "list_usage", broken)
    with Captured(TextFormatter()) as logs:
        with pytest.raises(openai.APIStatusError):
            client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h",
                                  extra_headers={"x-request-id": "fail-1"})
        resp = httpx.get(gateway.url + "/usage", headers={
            "Authorization": f"Bearer {MASTER_KEY}", "x-request-id": "crash-1"})
    assert resp.status_code == 500 and resp.headers["x-request-id"] == "crash-1"
    assert resp.json()["error"]["code"] == "internal_error"

    text = logs.stream.getvalue()
    # Upstream failures: deployment id, the provider's own request id, ours; no credential.
    failures = [line for line in logs.lines if "upstream POST /v1/batches " in line]
    assert len(failures) == 2
    deployment_ids = {d for d in gw.deployments if gw.deployments[d].model_name == GROUP}
    for line in failures:
        assert "HTTP 500" in line and "request_id=fail-1" in line
        assert re.search(r"provider request id req_[0-9a-f]{32}", line)
        assert any(f"deployment {d}" in line for d in deployment_ids)
    for up in upstreams:
        assert up.api_key not in text
    crash = [line for line in logs.lines if "unhandled error on GET /usage" in line]
    assert crash and "request_id=crash-1" in crash[0] and "RuntimeError: boom" in text
    access = [line for line in logs.lines if " gateway.access: " in line]
    assert any(re.search(r"INFO gateway\.access: GET /usage 500 \d+\.\dms key=master group=- "
                         r"upstream=0 client=127\.0\.0\.1 request_id=crash-1$", line)
               for line in access), access


# -- metrics ----------------------------------------------------------------------------------


def scrape(url: str, key: str | None = MASTER_KEY) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                         float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return samples(resp.text)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return sum(v for (n, lbls), v in values.items()
               if n == name and all((k, v2) in lbls for k, v2 in labels.items()))


def scripted_flow(client: openai.OpenAI) -> tuple[int, int]:
    """Upload, create, retrieve until complete, content; (bytes uploaded, bytes downloaded)."""
    data = batch_file(3)
    size = len(data.getvalue())
    file = client.files.create(file=data, purpose="batch",
                               extra_body={"target_model_names": GROUP})
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    for _ in range(10):
        batch = client.batches.retrieve(batch.id)
        if batch.status == "completed":
            break
    assert batch.output_file_id
    output = client.files.content(batch.output_file_id).content
    return size, len(output)


FAMILIES = ("gateway_requests_total", "gateway_request_duration_seconds_count",
            "gateway_upstream_requests_total", "gateway_upstream_request_duration_seconds_count",
            "gateway_uploaded_bytes_total", "gateway_downloaded_bytes_total",
            "gateway_batches", "gateway_copies_not_ready", "gateway_batch_leases_held",
            "gateway_batch_refresh_lag_seconds",
            "gateway_background_last_success_timestamp_seconds")


def test_every_metric_family_moves_after_a_scripted_flow(
    upstreams: list[Upstream], database_url: str,
) -> None:
    # The poller's first pass is a minute away: the test takes its lease itself.
    cfg = config_for(upstreams, database_url, copy_retry_interval=0.1, batch_poll_interval=60)
    with gateway_server(cfg) as server:
        admin = httpx.Client(base_url=server.url,
                             headers={"Authorization": f"Bearer {MASTER_KEY}"})
        key = admin.post("/key/generate", json={"models": [GROUP]}).json()["key"]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        assert httpx.get(server.url + "/metrics").status_code == 401
        assert httpx.get(server.url + "/metrics",
                         headers={"Authorization": f"Bearer {key}"}).status_code == 403
        before = scrape(server.url)
        up, down = scripted_flow(client)
        # One deployment refuses the next copy: it stays not ready (failed, retried later).
        upstreams[1].fake.fail("POST", r"^/v1/files$", 500, times=-1)
        file = client.files.create(file=batch_file(1), purpose="batch",
                                   extra_body={"target_model_names": GROUP})
        pending = client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
        # A poller's lease on the unfinished batch, taken through the store as one would.
        gw = server.server.config.app.state.gateway

        async def lease() -> int:
            store = Store(database_url)
            await store.connect()
            try:
                return len(await store.claim_unfinished("test", list(gw.deployments), 10,
                                                        gw.settings.batch_poll_interval))
            finally:
                await store.disconnect()

        assert asyncio.run(lease()) == 1
        time.sleep(0.3)  # the copy retry job runs (and fails again) at least once
        after = scrape(server.url)
        admin.close()
        client.close()

    for name in FAMILIES:
        assert any(n == name for n, _ in after), f"{name} missing"
    routes = {"/v1/files": "POST", "/v1/batches": "POST", "/v1/batches/{id}": "GET",
              "/v1/files/{id}/content": "GET"}
    for route, method in routes.items():
        for family in ("gateway_requests_total", "gateway_request_duration_seconds_count"):
            grew = total(after, family, route=route, method=method) - \
                total(before, family, route=route, method=method)
            assert grew >= 1, (family, route)
    assert total(after, "gateway_requests_total", route="/metrics", status="401") >= 1
    ok = dict(provider="openai", outcome="ok")
    assert total(after, "gateway_upstream_requests_total", **ok) - \
        total(before, "gateway_upstream_requests_total", **ok) >= 6
    assert total(after, "gateway_upstream_request_duration_seconds_count", **ok) > \
        total(before, "gateway_upstream_request_duration_seconds_count", **ok)
    assert total(after, "gateway_upstream_requests_total", outcome="http_5xx") >= 1
    assert total(after, "gateway_uploaded_bytes_total") - \
        total(before, "gateway_uploaded_bytes_total") >= up
    assert total(after, "gateway_downloaded_bytes_total") - \
        total(before, "gateway_downloaded_bytes_total") == down

    def grew(name: str, **labels: str) -> float:  # PostgreSQL's database is the session's
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("gateway_batches", status="completed", model_group=GROUP) == 1
    assert grew("gateway_batches", model_group=GROUP) == 2
    assert grew("gateway_copies_not_ready", model_group=GROUP) == 1  # failed, or retrying
    assert grew("gateway_batch_leases_held") == 1
    assert 0.3 <= total(after, "gateway_batch_refresh_lag_seconds") < 30
    assert total(after, "gateway_database_up") == 1
    assert time.time() - total(after, "gateway_background_last_success_timestamp_seconds",
                               job="copy retry") < 60
    assert pending.id


def test_metrics_port_is_open_without_a_key(upstreams: list[Upstream], sqlite_url: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = config_for(upstreams, sqlite_url, metrics_port=port)
    with gateway_server(cfg) as server:
        values = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
        assert total(values, "gateway_database_up") == 1
        assert httpx.get(server.url + "/metrics").status_code == 401  # still keyed here
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics")


# -- health -------------------------------------------------------------------------------------


def test_liveliness_readiness_and_health_need_no_key(gateway: ServerThread) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/health/liveliness").json() == {"status": "alive"}
        assert http.get("/health/liveness").status_code == 200
        ready = http.get("/health/readiness")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready", "database": "connected",
                                "schema_version": len(MIGRATIONS), "deployments": 3}


def test_readiness_says_when_migrations_are_missing(
    upstreams: list[Upstream], sqlite_url: str,
) -> None:
    with gateway_server(config_for(upstreams, sqlite_url)) as server:
        path = sqlite_url.removeprefix("sqlite:///")
        last = len(MIGRATIONS)
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM gateway_schema_version WHERE version = ?", (last,))
        resp = httpx.get(server.url + "/health/readiness")
        assert resp.status_code == 503
        assert resp.json() == {"status": "not ready", "reason": f"database schema at version "
                               f"{last - 1}, migrations to {last} not applied"}
        with sqlite3.connect(path) as db:
            db.execute("INSERT INTO gateway_schema_version VALUES (?, 0)", (last,))
        assert httpx.get(server.url + "/health/readiness").status_code == 200


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def own_postgres() -> Iterator[tuple[str, str]]:
    """A database of this test's own (it is made unreachable and back)."""
    name = f"gw_ready_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name, name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def connections(name: str, allowed: bool) -> None:
    """Let clients connect to a database, or not and cut those connected (as a database
    server going away looks to the gateway)."""
    asyncio.run(_admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}'))
    if not allowed:
        asyncio.run(_admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           f"WHERE datname = '{name}'"))


def test_readiness_fails_while_the_database_is_down_and_recovers(
    upstreams: list[Upstream], own_postgres: tuple[str, str],
) -> None:
    url, name = own_postgres
    with gateway_server(config_for(upstreams, url)) as server:
        ready = server.url + "/health/readiness"
        assert httpx.get(ready).status_code == 200
        connections(name, allowed=False)
        started = time.monotonic()
        down = httpx.get(ready, timeout=10)
        assert time.monotonic() - started < 5
        assert down.status_code == 503
        assert down.json()["status"] == "not ready"
        assert down.json()["reason"].startswith("database unreachable (")
        assert httpx.get(server.url + "/health/liveliness").status_code == 200  # still alive
        connections(name, allowed=True)
        deadline = time.monotonic() + 10
        while httpx.get(ready).status_code != 200:
            assert time.monotonic() < deadline, "readiness did not recover"
            time.sleep(0.1)


# -- the API description ------------------------------------------------------------------------


def test_openapi_describes_every_route_and_only_those(gateway: ServerThread) -> None:
    app = gateway.server.config.app
    served = {(r.path, m) for r in app.routes for m in (r.methods or ()) - {"HEAD"}
              if not any(r.path == f"/{x}" or r.path.startswith(f"/{x}/")
                         for x in ("files", "batches", "models"))}
    spec = httpx.get(gateway.url + "/openapi.json").json()
    assert spec["openapi"].startswith("3.1") and spec["servers"] == [{"url": "/"}]
    documented = {(p, m.upper()) for p, ops in spec["paths"].items() for m in ops
                  if m in ("get", "post", "delete", "put", "patch")}
    assert served == documented
    from gateway import __version__

    assert spec["info"]["version"] == __version__

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "$ref":
                    yield v
                else:
                    yield from refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from refs(v)

    for ref in set(refs(spec)):
        target: Any = spec
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
    assert description()["paths"]
