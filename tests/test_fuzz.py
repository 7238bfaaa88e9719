"""Every route in `/openapi.json`, fuzzed with schemathesis against a running gateway (with the
master key and with a virtual key): no 500, and no stack trace or internal name in any body."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for

# What must never reach a client: a traceback, a module path, a driver's or ORM's name.
LEAKS = re.compile(
    rb"Traceback|File \"|\bgateway\.[a-z_]+\.|sqlalchemy|asyncpg|aiosqlite|sqlite3|"
    rb"msgspec\.|starlette\.|aiohttp\.|sk-upstream",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, str]]:
    ups = [Upstream("sk-upstream-one", "gpt-4o-mini"),
           Upstream("sk-upstream-two", "gpt-4o-mini-2024-07-18"),
           Upstream("sk-upstream-eu", "gpt-4o-mini-eu")]
    db = tmp_path_factory.mktemp("fuzz") / "gateway.db"
    cfg = config_for(ups, f"sqlite:///{Path(db)}", max_file_size_mb=1, max_line_size_mb=1)
    with gateway_server(cfg) as server:
        key = httpx.post(f"{server.url}/key/generate", json={"models": [GROUP]},
                         headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
        yield server, key
    for up in ups:
        up.server.stop()
        up.fake.close()


def _check(response: Any) -> None:
    assert response.status_code != 500, (response.status_code, response.content[:500])
    if response.headers.get("content-type", [""])[0].startswith("application/json"):
        # (Static assets, the docs' JavaScript, are not answers.)
        assert not LEAKS.search(response.content), response.content[:500]


def test_no_route_answers_500_or_leaks_internals(served: tuple[ServerThread, str]) -> None:
    server, key = served
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40  # every route the gateway serves is described

    calls: dict[int, int] = {}
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            for bearer in (MASTER_KEY, key):
                headers = {**(case.headers or {}), "Authorization": f"Bearer {bearer}"}
                response = case.call(base_url=server.url, headers=headers, timeout=30)
                calls[response.status_code] = calls.get(response.status_code, 0) + 1
                _check(response)

        fuzz()
    # The fuzz reached past validation, not just the front door.
    assert sum(n for status, n in calls.items() if status < 300) > 50
