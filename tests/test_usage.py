"""Usage is recorded once per batch, even if nobody retrieves it and several instances race;
background refresh is shared between instances through leases in the database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from gateway import ids
from gateway.store import BatchRow, Store
from gateway.testing.servers import ServerThread, gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file


@pytest.fixture
def two_instances(
    upstreams: list[Upstream], database_url: str
) -> Iterator[tuple[ServerThread, ServerThread]]:
    """Two gateway processes' worth of app on one database, polling every 0.2 s."""
    cfg = config_for(upstreams, database_url, batch_poll_interval=0.2)
    with gateway_server(cfg) as a, gateway_server(cfg) as b:
        yield a, b


def usage_rows(server: ServerThread, key: str) -> list[dict[str, Any]]:
    resp = httpx.get(server.url + "/usage", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200
    rows: list[dict[str, Any]] = resp.json()["data"]
    return rows


def test_finished_batch_is_billed_once_without_a_retrieve(
    two_instances: tuple[ServerThread, ServerThread], upstreams: list[Upstream]
) -> None:
    a, b = two_instances
    key = httpx.post(a.url + "/key/generate", json={"models": [GROUP]},
                     headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
    client = openai.OpenAI(base_url=a.url + "/v1", api_key=key, max_retries=0)
    f = client.files.create(file=batch_file(3), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    (up,) = [u for u in upstreams if u.fake.batches]
    (native,) = up.fake.batches
    up.fake.complete(native)
    expected = up.fake.batches[native]["usage"]

    # Nobody retrieves: the pollers notice the end. Meanwhile clients of both instances
    # retrieve concurrently too, racing the pollers to record the same batch.
    deadline = time.monotonic() + 15
    while not usage_rows(a, key) and time.monotonic() < deadline:
        time.sleep(0.05)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: openai.OpenAI(
            base_url=(a, b)[i % 2].url + "/v1", api_key=key, max_retries=0,
        ).batches.retrieve(batch.id), range(16)))
    time.sleep(0.5)  # a few more poll rounds on both instances

    rows = usage_rows(b, key)
    assert len(rows) == 1
    row = rows[0]
    assert (row["batch_id"], row["model_group"], row["status"]) == (batch.id, GROUP, "completed")
    assert row["requests_completed"] == 3 and row["requests_failed"] == 0
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        expected["input_tokens"], expected["output_tokens"], expected["total_tokens"])
    # Another key sees none of it; the master key sees it.
    other = httpx.post(a.url + "/key/generate", json={"models": [GROUP]},
                       headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
    assert usage_rows(a, other) == []
    assert batch.id in [r["batch_id"] for r in usage_rows(a, MASTER_KEY)]


def _row(n: int) -> BatchRow:
    return BatchRow(
        id=ids.new_batch_id(), owner="key_x", deployment_id="dep", model_group="g",
        provider_batch_id=f"native-{n}", input_file_id=ids.new_file_id(),
        created_at=int(time.time()), status="in_progress", terminal=False,
        object={"status": "in_progress"},
    )


def test_instances_never_claim_the_same_batch(database_url: str) -> None:
    async def scenario() -> None:
        one, two = Store(database_url), Store(database_url)
        await one.connect()
        await two.connect()
        try:
            rows = [_row(n) for n in range(30)]
            for row in rows:
                await one.insert_batch(row)
            ours = {r.id for r in rows}
            got = await asyncio.gather(
                one.claim_unfinished("holder-1", ["dep"], 100, ttl=60),
                two.claim_unfinished("holder-2", ["dep"], 100, ttl=60),
            )
            first = {r.id for r in got[0]} & ours
            second = {r.id for r in got[1]} & ours
            assert not first & second
            assert first | second == ours
            # Leases still running: nobody gets them again.
            again = await one.claim_unfinished("holder-3", ["dep"], 100, ttl=60)
            assert not {r.id for r in again} & ours
            # An expired lease (a dead instance) is picked up.
            await one.db.execute(
                "UPDATE gateway_batch_leases SET lease_until = 0 WHERE batch_id = :b",
                {"b": rows[0].id},
            )
            picked = await two.claim_unfinished("holder-4", ["dep"], 100, ttl=60)
            assert rows[0].id in {r.id for r in picked}
        finally:
            await one.disconnect()
            await two.disconnect()

    asyncio.run(scenario())


def test_unknown_tokens_are_null_not_zero(database_url: str) -> None:
    async def scenario() -> None:
        store = Store(database_url)
        await store.connect()
        try:
            row = _row(1)
            obj = {"status": "completed", "request_counts": {"completed": 2, "failed": 1}}
            await store.record_usage(row, obj)
            await store.record_usage(row, {**obj, "usage": {"total_tokens": 99}})  # ignored
            (got,) = [r for r in await store.list_usage("key_x", 1000) if r["batch_id"] == row.id]
            assert got["total_tokens"] is None and got["input_tokens"] is None
            assert (got["requests_completed"], got["requests_failed"]) == (2, 1)
        finally:
            await store.disconnect()

    asyncio.run(scenario())
