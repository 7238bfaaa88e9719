"""Spend: each finished batch priced once (tokens x the deployment's batch prices), added to
its key, user and team, listed in /spend/logs; an unpriced deployment's batches cost null."""

from __future__ import annotations

import datetime
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import MASTER_KEY, Upstream
from tests.spend_helpers import (
    BATCH_PRICED,
    HALF_PRICED,
    TABLE_PRICED,
    UNPRICED,
    admin,
    cost,
    priced_config,
    run_batch,
)


@pytest.fixture
def priced(upstreams: list[Upstream], database_url: str) -> Iterator[ServerThread]:
    with gateway_server(priced_config(upstreams, database_url)) as server:
        yield server


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _logs(server: ServerThread, key: str = MASTER_KEY, **params: Any) -> list[dict[str, Any]]:
    resp = httpx.get(server.url + "/spend/logs", params=params,
                     headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    body: list[dict[str, Any]] = resp.json()
    return body


def test_spend_is_tokens_times_prices_on_key_user_and_team(
    priced: ServerThread, upstreams: list[Upstream], caplog: pytest.LogCaptureFixture
) -> None:
    team_id, user_id = unique("research"), unique("alice")  # PostgreSQL: one db per session
    with admin(priced) as a:
        assert a.post("/team/new", json={"team_id": team_id}).status_code == 200
        assert a.post("/user/new", json={"user_id": user_id, "teams": [team_id],
                                         "auto_create_key": False}).status_code == 200
        minted = a.post("/key/generate", json={"user_id": user_id, "team_id": team_id}).json()
        key, token = minted["key"], minted["token"]
        assert minted["spend"] == 0.0 and minted["budget_reset_at"] is None
        datetime.datetime.fromisoformat(minted["created_at"])  # ISO 8601, as LiteLLM

        expected = 0.0
        runs = {}
        for group in (BATCH_PRICED, HALF_PRICED, TABLE_PRICED):
            batch_id, usage = run_batch(priced, upstreams, key, group)
            assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
            runs[batch_id] = (group, usage)
            expected += cost(group, usage)
        with caplog.at_level(logging.WARNING, logger="gateway.spend"):
            unpriced_id, _ = run_batch(priced, upstreams, key, UNPRICED)
        assert any(unpriced_id in r.getMessage() and "null" in r.getMessage()
                   for r in caplog.records)

        info = a.get("/key/info", params={"key": token}).json()["info"]
        assert info["spend"] == pytest.approx(expected, rel=1e-9)
        user = a.get("/user/info", params={"user_id": user_id}).json()
        assert user["user_info"]["spend"] == pytest.approx(expected, rel=1e-9)
        assert user["keys"][0]["spend"] == pytest.approx(expected, rel=1e-9)
        team = a.get("/team/info", params={"team_id": team_id}).json()
        assert team["team_info"]["spend"] == pytest.approx(expected, rel=1e-9)
        listed = a.get("/key/list", params={"return_full_object": "true"}).json()["keys"]
        assert [k["spend"] for k in listed if k["token"] == token] == [
            pytest.approx(expected, rel=1e-9)]
        teams = a.get("/team/list", params={"user_id": user_id}).json()
        assert [t["spend"] for t in teams] == [pytest.approx(expected, rel=1e-9)]
        users = a.get("/user/list", params={"user_ids": user_id}).json()["users"]
        assert [u["spend"] for u in users] == [pytest.approx(expected, rel=1e-9)]

    # One log entry per batch; the unpriced one costs null, never 0.
    logs = {e["request_id"]: e for e in _logs(priced, user_id=user_id)}
    assert set(logs) == {*runs, unpriced_id}
    for batch_id, (group, usage) in runs.items():
        entry = logs[batch_id]
        assert entry["spend"] == pytest.approx(cost(group, usage), rel=1e-9)
        assert (entry["api_key"], entry["user"], entry["team_id"], entry["model_group"]) == (
            token, user_id, team_id, group)
        assert (entry["prompt_tokens"], entry["completion_tokens"], entry["total_tokens"]) == (
            usage["input_tokens"], usage["output_tokens"], usage["total_tokens"])
        start = datetime.datetime.fromisoformat(entry["startTime"])
        assert start <= datetime.datetime.fromisoformat(entry["endTime"])
    assert logs[unpriced_id]["spend"] is None
    assert key not in str(logs)  # the key's token id, never the secret


def test_a_batch_seen_finished_many_times_is_charged_once(
    priced: ServerThread, upstreams: list[Upstream]
) -> None:
    with admin(priced) as a:
        minted = a.post("/key/generate", json={}).json()
        batch_id, usage = run_batch(priced, upstreams, minted["key"], BATCH_PRICED)
        for _ in range(3):
            httpx.get(priced.url + f"/v1/batches/{batch_id}",
                      headers={"Authorization": f"Bearer {minted['key']}"})
        assert a.get("/v1/batches", params={"limit": 5}).status_code == 200
        info = a.get("/key/info", params={"key": minted["token"]}).json()["info"]
    assert info["spend"] == pytest.approx(cost(BATCH_PRICED, usage), rel=1e-9)
    assert len(_logs(priced, api_key=minted["token"])) == 1


def test_spend_logs_filters_paging_and_who_sees_what(
    priced: ServerThread, upstreams: list[Upstream]
) -> None:
    team_id, user_id = unique("t1"), unique("bob")
    with admin(priced) as a:
        assert a.post("/team/new", json={"team_id": team_id}).status_code == 200
        bob = a.post("/key/generate", json={"user_id": user_id, "team_id": team_id}).json()
        bob2 = a.post("/key/generate", json={"user_id": user_id}).json()
        solo = a.post("/key/generate", json={}).json()
    ids = {
        "bob": run_batch(priced, upstreams, bob["key"], BATCH_PRICED)[0],
        "bob2": run_batch(priced, upstreams, bob2["key"], BATCH_PRICED)[0],
        "solo": run_batch(priced, upstreams, solo["key"], HALF_PRICED)[0],
    }

    def got(key: str = MASTER_KEY, **params: Any) -> set[str]:
        # Only this test's batches (PostgreSQL keeps other tests' in the session's database).
        return {e["request_id"] for e in _logs(priced, key, **params)} & set(ids.values())

    assert got() == set(ids.values())
    assert got(api_key=bob["token"]) == {ids["bob"]}
    assert got(api_key=bob["key"]) == {ids["bob"]}  # the secret works as a filter too
    assert got(user_id=user_id) == {ids["bob"], ids["bob2"]}
    assert got(team_id=team_id) == {ids["bob"]}
    assert got(request_id=ids["solo"]) == {ids["solo"]}
    today = datetime.datetime.now(datetime.UTC).date()
    day = datetime.timedelta(days=1)
    assert got(start_date=str(today), end_date=str(today)) == set(ids.values())
    assert got(end_date=str(today - day)) == set()
    assert got(start_date=str(today + day)) == set()
    assert got(start_date=f"{today} 00:00:00") == set(ids.values())
    assert got(start_date=f"{today + day}T00:00:00Z") == set()
    bad = httpx.get(priced.url + "/spend/logs", params={"start_date": "yesterday"},
                    headers={"Authorization": f"Bearer {MASTER_KEY}"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "start_date"

    # Pages, newest first, with the total in a header.
    seen: list[str] = []
    for page in (1, 2, 3):
        resp = httpx.get(priced.url + "/spend/logs",
                         headers={"Authorization": f"Bearer {MASTER_KEY}"},
                         params={"page": page, "page_size": 1, "user_id": user_id})
        assert resp.headers["x-total-count"] == "2"
        seen += [e["request_id"] for e in resp.json()]
    assert seen == [ids["bob2"], ids["bob"]]

    # A virtual key sees its own: a user's keys see the user's; filters cannot widen that.
    assert got(bob2["key"]) == {ids["bob"], ids["bob2"]}
    assert got(solo["key"]) == {ids["solo"]}
    assert got(solo["key"], user_id=user_id) == set()
    assert got(solo["key"], api_key=bob["token"]) == set()
