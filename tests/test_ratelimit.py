"""rpm_limit on keys and teams: requests per minute to the gateway's API, 429 in the OpenAI
envelope with Retry-After, counted in the database so that it holds across instances."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import httpx
import openai
import pytest

from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import MASTER_KEY, Upstream, config_for


def _minute() -> int:
    return int(time.time() // 60)


def _in_one_minute(scenario: Callable[[], list[int]]) -> list[int]:
    """The status codes of `scenario`, run again if a minute boundary fell inside it (the
    windows are whole minutes)."""
    for _ in range(3):
        minute = _minute()
        codes = scenario()
        if _minute() == minute:
            return codes
    raise AssertionError("three minute boundaries in a row")


def _get(server: ServerThread, key: str) -> httpx.Response:
    return httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"})


def test_key_rpm_limit_answers_429_with_retry_after(
    admin: httpx.Client, gateway: ServerThread
) -> None:
    def scenario() -> list[int]:
        key = admin.post("/key/generate", json={"rpm_limit": 3}).json()["key"]
        return [_get(gateway, key).status_code for _ in range(5)]

    assert _in_one_minute(scenario) == [200, 200, 200, 429, 429]
    key = admin.post("/key/generate", json={"rpm_limit": 1}).json()["key"]
    _get(gateway, key)
    refused = _get(gateway, key)
    if refused.status_code == 429:  # (unless a new minute began in between)
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert "1 requests per minute" in error["message"]
        # The OpenAI SDK sees a RateLimitError.
        sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            sdk.models.list()
    # rpm_limit 0: no requests at all; the master key is never limited.
    blocked = admin.post("/key/generate", json={"rpm_limit": 0}).json()["key"]
    assert _get(gateway, blocked).status_code == 429
    assert all(_get(gateway, MASTER_KEY).status_code == 200 for _ in range(5))
    # A key without a limit is not counted at all.
    free = admin.post("/key/generate", json={}).json()["key"]
    assert all(_get(gateway, free).status_code == 200 for _ in range(10))


def test_a_request_counts_once_even_with_an_idempotency_key(
    admin: httpx.Client, gateway: ServerThread
) -> None:
    def scenario() -> list[int]:
        key = admin.post("/key/generate", json={"rpm_limit": 2}).json()["key"]
        return [httpx.post(gateway.url + "/v1/batches", json={}, headers={
            "Authorization": f"Bearer {key}", "Idempotency-Key": f"k{i}"}).status_code
            for i in range(3)]

    # 400: the empty body is refused after authentication, which is what is counted.
    assert _in_one_minute(scenario) == [400, 400, 429]


def test_team_rpm_limit_holds_across_two_instances(
    upstreams: list[Upstream], database_url: str
) -> None:
    cfg = config_for(upstreams, database_url)
    with gateway_server(cfg) as one, gateway_server(cfg) as two, httpx.Client(
        base_url=one.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}
    ) as admin:
        def scenario() -> list[int]:
            team_id = f"rpm-{uuid.uuid4().hex[:8]}"
            assert admin.post("/team/new", json={"team_id": team_id, "rpm_limit": 4}) \
                .status_code == 200
            keys = [admin.post("/key/generate", json={"team_id": team_id}).json()["key"]
                    for _ in range(2)]
            # Alternating instances and keys: the team's 4 are shared by all of them.
            return [_get((one, two)[i % 2], keys[i // 2 % 2]).status_code for i in range(7)]

        assert _in_one_minute(scenario) == [200, 200, 200, 200, 429, 429, 429]
        # The key's own limit applies too, whichever is smaller.
        def own() -> list[int]:
            team_id = f"rpm-{uuid.uuid4().hex[:8]}"
            admin.post("/team/new", json={"team_id": team_id, "rpm_limit": 100})
            key = admin.post("/key/generate", json={"team_id": team_id, "rpm_limit": 2}) \
                .json()["key"]
            return [_get((one, two)[i % 2], key).status_code for i in range(3)]

        assert _in_one_minute(own) == [200, 200, 429]
