"""Lists without upstream calls, the background refresh's schedule (claims that never overlap,
backoff, due times moved by retrieves), one upstream call for concurrent retrieves, and how
long a deleted or blocked key keeps working on another instance (the row cache's lifetime)."""

from __future__ import annotations

import asyncio
import secrets
import time
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import httpx
import openai
import pytest

from gateway import poller
from gateway.readthrough import ReadThrough
from gateway.runtime import Gateway
from gateway.store import BatchRow, Store
from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}


def _batch_requests(upstreams: list[Upstream]) -> int:
    return sum(1 for up in upstreams for method, path, _, _ in up.fake.requests
               if path.startswith("/v1/batches/"))


def _create(client: openai.OpenAI, upstreams: list[Upstream]) -> tuple[Any, Upstream, str]:
    """A batch, the upstream it went to and its native id there."""
    f = client.files.create(file=batch_file(2), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    known = [set(up.fake.batches) for up in upstreams]
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    for up, had in zip(upstreams, known, strict=True):
        new = set(up.fake.batches) - had
        if new:
            return batch, up, new.pop()
    raise AssertionError("batch not found upstream")


def _key(url: str, **extra: Any) -> dict[str, Any]:
    resp = httpx.post(url + "/key/generate", json={"models": [GROUP], **extra}, headers=ADMIN)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


# -- lists --------------------------------------------------------------------------------------


def test_list_makes_no_upstream_call(client: openai.OpenAI, upstreams: list[Upstream]) -> None:
    made = []
    for _ in range(3):  # running upstream: the old list polled each of them
        batch, up, native = _create(client, upstreams)
        up.fake.advance(native, "in_progress")
        made.append(batch)
    before = _batch_requests(upstreams)
    page = client.batches.list(limit=100)
    assert [b.id for b in page.data] == [b.id for b in reversed(made)]
    assert all(b.status == "validating" for b in page.data)  # what the database has
    assert _batch_requests(upstreams) == before
    # A retrieve still reads through, and the list then shows what it stored.
    seen = client.batches.retrieve(made[0].id).status
    assert seen != "validating" and _batch_requests(upstreams) == before + 1
    assert client.batches.list(limit=100).data[-1].status == seen


def test_list_shows_what_the_poller_stored(
    upstreams: list[Upstream], database_url: str
) -> None:
    cfg = config_for(upstreams, database_url, batch_poll_interval=0.2)
    with gateway_server(cfg) as server:
        key = _key(server.url)["key"]
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        _, up, native = _create(client, upstreams)
        up.fake.complete(native)
        deadline = time.monotonic() + 20
        while client.batches.list().data[0].status != "completed":
            assert time.monotonic() < deadline, "the poller never stored the batch's end"
            time.sleep(0.05)
        listed = client.batches.list().data[0]
        assert listed.output_file_id is not None and listed.request_counts is not None
        assert listed.request_counts.completed == 2


# -- the schedule -------------------------------------------------------------------------------


def _row(dep: str, created_at: float | None = None) -> BatchRow:
    return BatchRow(
        id="batch_" + secrets.token_hex(8), owner="key_sched", deployment_id=dep,
        model_group="g", provider_batch_id="native-" + secrets.token_hex(6),
        input_file_id="file-x", created_at=int(time.time() if created_at is None else created_at),
        status="in_progress", terminal=False, object={"status": "in_progress"},
    )


async def _due(store: Store, batch_id: str) -> float:
    value = await store.db.fetch_val(
        "SELECT lease_until FROM gateway_batch_leases WHERE batch_id = :b", {"b": batch_id})
    return float(value)


def test_two_instances_claim_disjoint_rows_until_due_again(database_url: str) -> None:
    async def scenario() -> None:
        one, two = Store(database_url), Store(database_url)
        await one.connect()
        await two.connect()
        try:
            dep = "dep-" + secrets.token_hex(4)
            rows = [_row(dep) for _ in range(60)]
            for row in rows:
                await one.insert_batch(row)
            taken: list[list[str]] = [[], []]
            for _ in range(4):  # ticks: both instances claim a share at the same moment
                got = await asyncio.gather(one.batches.claim_unfinished("a", [dep], 7, 60),
                                           two.batches.claim_unfinished("b", [dep], 7, 60))
                for i, claimed in enumerate(got):
                    assert len(claimed) == 7  # a share, not everything due
                    taken[i] += [r.id for r in claimed]
            assert not set(taken[0]) & set(taken[1])
            assert len(set(taken[0] + taken[1])) == 56
            rest = await one.batches.claim_unfinished("a", [dep], 100, 60)
            assert len(rest) == 4
            assert {r.id for r in rest} | set(taken[0] + taken[1]) == {r.id for r in rows}
            # Claimed: not due again for the lease (one interval), by anyone.
            assert await two.batches.claim_unfinished("b", [dep], 100, 60) == []
            now = time.time()
            assert 59 < await _due(one, rows[0].id) - now <= 60
            # Finished: off the schedule.
            scheduled = await one.batches.scheduled()
            await one.update_batch(rows[0].id, status="completed", terminal=True, obj={})
            assert await one.batches.scheduled() == scheduled - 1
            # A later due time never moves earlier.
            await one.batches.postpone([(rows[1].id, now + 1000), (rows[2].id, now + 1)])
            assert await _due(one, rows[1].id) == pytest.approx(now + 1000)
            assert await _due(one, rows[2].id) > now + 59
        finally:
            await one.disconnect()
            await two.disconnect()

    asyncio.run(scenario())


def test_long_running_batches_back_off() -> None:
    interval = 60.0
    assert poller.period(interval, 0) == interval
    assert poller.period(interval, 3600) == interval  # young: every interval
    assert poller.period(interval, 2 * 3600) == 120
    assert poller.period(interval, 5 * 3600) == 300  # a sixtieth of its age
    assert poller.period(interval, 30 * 3600) == 600  # at most ten intervals
    periods = [poller.period(interval, h * 3600) for h in range(30)]
    assert periods == sorted(periods)
    now = time.time()
    for age in (0, 5 * 3600):
        due = poller.next_due(interval, now, now - age)
        wait = poller.period(interval, age)
        assert now + wait <= due <= now + wait + 0.1 * (wait - interval) + 1e-6


def _fake_gateway(store: Store, dep: str, interval: float) -> Gateway:
    settings = types.SimpleNamespace(batch_poll_interval=interval)
    ns = types.SimpleNamespace(store=store, deployments={dep: None}, reads=ReadThrough(),
                               settings=settings, provider=lambda _: None)
    return cast(Gateway, ns)


def test_a_tick_claims_a_share_and_retrieves_move_due_times(database_url: str) -> None:
    async def scenario() -> None:
        store = Store(database_url)
        await store.connect()
        try:
            dep = "dep-" + secrets.token_hex(4)
            rows = [_row(dep) for _ in range(60)]
            old = _row(dep, created_at=time.time() - 10 * 3600)  # running for ten hours
            for row in [*rows, old]:
                await store.insert_batch(row)
            gw = _fake_gateway(store, dep, interval=30)
            p = poller.Poller(gw, 30)
            # A tick (1 s) claims a thirtieth of what is scheduled, and a quarter more.
            assert p.tick == 1.0 and p.share(3000) == 125 and p.share(1) == 1
            # Retrieves polled two batches: the tick moves them first, so it does not claim them.
            gw.reads.polled(rows[0].id, rows[0].created_at)
            gw.reads.polled(rows[1].id, rows[1].created_at)
            assert await p.poll_once() == 59  # everything else that is due (test helper)
            assert await _due(store, rows[0].id) > time.time() + 29
            assert await _due(store, old.id) > time.time() + 290  # backed off: 10 intervals
            assert not gw.reads.notes
        finally:
            await store.disconnect()

    asyncio.run(scenario())


# -- retrieve -----------------------------------------------------------------------------------


def test_concurrent_retrieves_share_one_upstream_call(
    client: openai.OpenAI, upstreams: list[Upstream], gateway: ServerThread
) -> None:
    batch, up, native = _create(client, upstreams)
    up.fake.stall("GET", rf"^/v1/batches/{native}$", seconds=1.0)  # the first call is slow
    before = _batch_requests(upstreams)
    key = client.api_key

    def retrieve(_: int) -> str:
        c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        return c.batches.retrieve(batch.id).status

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(retrieve, range(8)))
    assert _batch_requests(upstreams) == before + 1
    assert len(set(statuses)) == 1  # one answer, shared


# -- the row cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("lifetime", [0.0, 0.5])
def test_a_deleted_or_blocked_key_stops_within_the_cache_lifetime(
    upstreams: list[Upstream], database_url: str, lifetime: float
) -> None:
    cfg = config_for(upstreams, database_url, row_cache_seconds=lifetime)
    with gateway_server(cfg) as a, gateway_server(cfg) as b:
        doomed, blocked = _key(a.url), _key(a.url)
        for server in (a, b):  # warm both caches
            for k in (doomed, blocked):
                assert httpx.get(server.url + "/v1/batches", headers={
                    "Authorization": f"Bearer {k['key']}"}).status_code == 200
        changed = time.monotonic()
        assert httpx.post(a.url + "/key/delete", json={"keys": [doomed["key"]]},
                          headers=ADMIN).status_code == 200
        assert httpx.post(a.url + "/key/block", json={"key": blocked["key"]},
                          headers=ADMIN).status_code == 200

        def status(server: ServerThread, key: str) -> int:
            return httpx.get(server.url + "/v1/batches",
                             headers={"Authorization": f"Bearer {key}"}).status_code

        # The instance that made the change at once; any other at once without the cache.
        for server in (a, b) if lifetime == 0 else (a,):
            assert status(server, doomed["key"]) == 401
            assert status(server, blocked["key"]) == 401
        # Any other instance: once the lifetime has passed since the change.
        wait = changed + lifetime - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        assert status(b, doomed["key"]) == 401
        assert status(b, blocked["key"]) == 401
