"""Budgets: once a key's, user's or team's spend (real finished batches) reaches its
max_budget, batches.create answers 400 budget_exceeded with the figures; budget_duration
starts a new window; two instances racing creates on the last cent let at most one through."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.store import Charge, Store
from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import Upstream
from tests.spend_helpers import (
    BATCH_PRICED,
    UNPRICED,
    admin,
    cost,
    create,
    finish,
    priced_config,
    run_batch,
    upload,
)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def priced(upstreams: list[Upstream], database_url: str) -> Iterator[ServerThread]:
    with gateway_server(priced_config(upstreams, database_url)) as server:
        yield server


def _refusal(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 400, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert error["code"] == "budget_exceeded" and error["type"] == "invalid_request_error"
    return error


def _key_with_budget(a: httpx.Client, level: str, budget: float, **extra: Any) -> dict[str, Any]:
    """A key whose `level` (key, user or team) has `budget`; the others have none."""
    team_id, user_id = unique("team"), unique("user")
    assert a.post("/team/new", json={"team_id": team_id, **(
        {"max_budget": budget, **extra} if level == "team" else {})}).status_code == 200
    assert a.post("/user/new", json={"user_id": user_id, "auto_create_key": False, **(
        {"max_budget": budget, **extra} if level == "user" else {})}).status_code == 200
    minted: dict[str, Any] = a.post("/key/generate", json={
        "user_id": user_id, "team_id": team_id,
        **({"max_budget": budget, **extra} if level == "key" else {})}).json()
    return minted


@pytest.mark.parametrize("level", ["key", "user", "team"])
def test_create_is_refused_once_real_spend_reaches_the_budget(
    priced: ServerThread, upstreams: list[Upstream], level: str
) -> None:
    with admin(priced) as a:
        minted = _key_with_budget(a, level, 1e-9)
    key = minted["key"]
    # Spend 0 is under any positive budget: the first batch runs, and costs more than 1e-9.
    _, usage = run_batch(priced, upstreams, key, BATCH_PRICED)
    spent = cost(BATCH_PRICED, usage)
    error = _refusal(create(priced, key, upload(priced, key, BATCH_PRICED)))
    figures = error["budget"]
    assert figures["level"] == level and figures["max_budget"] == 1e-9
    assert figures["spend"] == pytest.approx(spent, rel=1e-9) and figures["reserved"] == 0
    assert f"{spent:.6f}" in error["message"]
    expected_id = {"key": minted["token"], "user": minted["user_id"],
                   "team": minted["team_id"]}[level]
    assert figures["id"] == expected_id
    # Nothing went upstream for the refused create.
    assert sum(len(u.fake.batches) for u in upstreams[:1]) == 1
    # Raising the budget lets creates through again.
    with admin(priced) as a:
        path, body = {"key": ("/key/update", {"key": minted["token"]}),
                      "user": ("/user/update", {"user_id": minted["user_id"]}),
                      "team": ("/team/update", {"team_id": minted["team_id"]})}[level]
        assert a.post(path, json={**body, "max_budget": 1.0}).status_code == 200
    assert create(priced, key, upload(priced, key, BATCH_PRICED)).status_code == 200


def test_running_batches_hold_their_estimate(
    priced: ServerThread, upstreams: list[Upstream]
) -> None:
    with admin(priced) as a:
        minted = _key_with_budget(a, "key", 1e-9)
    key = minted["key"]
    first = create(priced, key, upload(priced, key, BATCH_PRICED))
    assert first.status_code == 200
    # The first batch is still running: its estimate is held against the budget.
    error = _refusal(create(priced, key, upload(priced, key, BATCH_PRICED)))
    assert error["budget"]["spend"] == 0 and error["budget"]["reserved"] > 1e-9
    # An unpriced model holds nothing (no price to estimate with) and is charged nothing.
    with admin(priced) as a:
        other = a.post("/key/generate", json={"max_budget": 1e-9}).json()
    run_batch(priced, upstreams, other["key"], UNPRICED)
    assert create(priced, other["key"], upload(priced, other["key"], UNPRICED)).status_code \
        == 200
    # A create that fails upstream releases its hold.
    with admin(priced) as a:
        third = a.post("/key/generate", json={"max_budget": 1e-9}).json()
    upstreams[0].fake.fail("POST", r"^/v1/batches$", 500, times=-1)
    try:
        failed = create(priced, third["key"], upload(priced, third["key"], BATCH_PRICED))
        assert failed.status_code == 502
    finally:
        upstreams[0].fake.clear_faults()
    assert create(priced, third["key"], upload(priced, third["key"], BATCH_PRICED)) \
        .status_code == 200


def test_budget_duration_starts_a_new_window(
    priced: ServerThread, upstreams: list[Upstream], database_url: str
) -> None:
    with admin(priced) as a:
        minted = a.post("/key/generate", json={"max_budget": 1e-9,
                                               "budget_duration": "30d"}).json()
        reset_at = datetime.datetime.fromisoformat(minted["budget_reset_at"])
        days = (reset_at - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
        assert 29.9 < days <= 30
    key = minted["key"]
    run_batch(priced, upstreams, key, BATCH_PRICED)
    _refusal(create(priced, key, upload(priced, key, BATCH_PRICED)))

    # 30 days pass: the window's end moves into the past.
    async def age() -> None:
        store = Store(database_url)
        await store.connect()
        try:
            await store.db.execute(
                "UPDATE gateway_keys SET budget_reset_at = :t WHERE id = :id",
                {"t": int(time.time()) - 5, "id": minted["token"]})
        finally:
            await store.disconnect()

    asyncio.run(age())
    with admin(priced) as a:
        info = a.get("/key/info", params={"key": minted["token"]}).json()["info"]
    assert info["spend"] == 0
    next_reset = datetime.datetime.fromisoformat(info["budget_reset_at"])
    assert next_reset > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=29)
    second = create(priced, key, upload(priced, key, BATCH_PRICED))
    assert second.status_code == 200, second.text
    usage2 = finish(priced, upstreams, key, BATCH_PRICED, second.json()["id"])
    with admin(priced) as a:
        info = a.get("/key/info", params={"key": minted["token"]}).json()["info"]
    # Only the new window's batch counts.
    assert info["spend"] == pytest.approx(cost(BATCH_PRICED, usage2), rel=1e-9)


def test_two_instances_racing_on_the_last_cent_let_at_most_one_through(
    upstreams: list[Upstream], database_url: str
) -> None:
    cfg = priced_config(upstreams, database_url)
    with gateway_server(cfg) as one, gateway_server(cfg) as two, admin(one) as a:
        team_id = unique("race")
        assert a.post("/team/new", json={"team_id": team_id}).status_code == 200
        keys = [a.post("/key/generate", json={"team_id": team_id}).json()["key"]
                for _ in range(6)]
        _, usage = run_batch(one, upstreams, keys[0], BATCH_PRICED)
        spent = cost(BATCH_PRICED, usage)
        # Less than any batch's estimate is left.
        assert a.post("/team/update", json={"team_id": team_id,
                                            "max_budget": spent + 1e-9}).status_code == 200
        files = [upload(one, key, BATCH_PRICED) for key in keys]
        before = len(upstreams[0].fake.batches)
        start = threading.Barrier(len(keys))

        def race(i: int) -> httpx.Response:
            start.wait()
            return create((one, two)[i % 2], keys[i], files[i])

        with ThreadPoolExecutor(len(keys)) as pool:
            answers = list(pool.map(race, range(len(keys))))
    passed = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code != 200]
    assert len(passed) == 1, [r.text for r in answers]
    for r in refused:
        assert _refusal(r)["budget"]["level"] == "team"
    assert len(upstreams[0].fake.batches) == before + 1


def test_concurrent_holds_on_two_stores_serialize_on_the_budget_rows(database_url: str) -> None:
    """The check-and-hold itself, raced as tightly as it can be: 20 holds at once through two
    connection pools (two instances) on one team with room for one."""
    team_id = unique("tight")

    async def scenario() -> list[bool]:
        one, two = Store(database_url), Store(database_url)
        await one.connect()
        await two.connect()
        try:
            await one.db.execute(
                "INSERT INTO gateway_teams (team_id, models, metadata, blocked, max_budget,"
                " created_at, spend) VALUES (:t, '[]', '{}', false, 1.0, 0, 0.5)", {"t": team_id})
            outcomes = await asyncio.gather(*(
                (one, two)[i % 2].spend.hold(f"hold-{team_id}-{i}", Charge(None, None, team_id),
                                             0.5)
                for i in range(20)))
            return [o is None for o in outcomes]
        finally:
            await one.disconnect()
            await two.disconnect()

    assert sum(asyncio.run(scenario())) == 1
