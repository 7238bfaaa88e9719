"""The store on its own, on SQLite and PostgreSQL: copy leases, retry backoff, result files
minted once, adapter state, batch leases, transactions and the retention query.

The PostgreSQL database is shared by the session: every test uses ids of its own."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from gateway.store import BatchRow, Copy, FileRow, Store

_DUPLICATE = (sqlite3.IntegrityError, asyncpg.UniqueViolationError)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = Store(database_url)
    await s.connect()
    try:
        yield s
    finally:
        await s.disconnect()


def _id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(6)}"


def _file(file_id: str | None = None, *, purpose: str = "batch", created_at: int | None = None,
          copies: tuple[Copy, ...] = (), **extra: Any) -> FileRow:
    return FileRow(
        id=file_id or _id("file"), owner="key_store", purpose=purpose, filename="in.jsonl",
        bytes=10, created_at=int(time.time()) if created_at is None else created_at,
        status="processed", model_groups=["g"], source_model=None, copies=copies,
        **extra,
    )


def _batch(deployment_id: str) -> BatchRow:
    return BatchRow(
        id=_id("batch"), owner="key_store", deployment_id=deployment_id, model_group="g",
        provider_batch_id=_id("native"), input_file_id=_id("file"), created_at=int(time.time()),
        status="in_progress", terminal=False, object={"status": "in_progress", "n": [1, 2]},
    )


async def _copy(store: Store, file_id: str, dep: str) -> dict[str, Any]:
    row = await store.db.fetch_row(
        "SELECT state, attempts, next_attempt_at, holder, lease_until FROM gateway_copies"
        " WHERE file_id = :f AND deployment_id = :d", {"f": file_id, "d": dep},
    )
    assert row is not None
    return dict(row)


async def test_rows_round_trip(store: Store) -> None:
    key = await store.insert_key(_id("hash"), models=["g"], key_alias="a", team_id=None,
                                 user_id="u", metadata={"x": 1}, expires_at=None)
    assert await store.key_by_id(key.id) == key
    row = _file(copies=(Copy("dep-a", "native-a", "ready"), Copy("dep-b", None, "failed", 1)),
                request_count=3, kept_key="k/1")
    await store.insert_file(row)
    assert await store.get_file("key_store", row.id) == row
    assert await store.get_file(None, row.id) == row
    assert await store.get_file("key_other", row.id) is None
    batch = _batch(_id("dep"))
    await store.insert_batch(batch)
    assert await store.get_batch("key_store", batch.id) == batch
    await store.update_batch(batch.id, status="completed", terminal=True, obj={"status": "done"})
    got = await store.get_batch("key_store", batch.id)
    assert got is not None and (got.status, got.terminal, got.object) == \
        ("completed", True, {"status": "done"})


async def test_copy_claim_is_leased_to_one_holder(store: Store) -> None:
    row = _file()
    await store.insert_file(row)
    dep = _id("dep")
    # A new copy: the first holder gets it, the second waits for the lease.
    assert await store.claim_copy(row.id, dep, "one", 60, due_only=False)
    assert not await store.claim_copy(row.id, dep, "two", 60, due_only=False)
    assert (await _copy(store, row.id, dep))["holder"] == "one"
    # The holder died: once its lease has run out, another takes over.
    await store.db.execute(
        "UPDATE gateway_copies SET lease_until = :t WHERE file_id = :f", {"t": 0.0, "f": row.id}
    )
    assert await store.claim_copy(row.id, dep, "two", 60, due_only=False)
    assert not await store.claim_copy(row.id, dep, "one", 60, due_only=False)
    # A ready copy is never claimed again.
    await store.copy_made(row.id, dep, "native-1")
    assert not await store.claim_copy(row.id, dep, "three", 60, due_only=False)
    got = await store.get_file("key_store", row.id)
    assert got is not None and got.copy_on(dep) == Copy(dep, "native-1", "ready")


async def test_copy_claim_due_only_waits_for_the_retry_time(store: Store) -> None:
    row = _file()
    await store.insert_file(row)
    dep = _id("dep")
    assert await store.claim_copy(row.id, dep, "one", 60, due_only=False)
    await store.copy_failed(row.id, dep, backoff=60)  # releases the lease, retry in 60 s
    assert not await store.claim_copy(row.id, dep, "retrier", 60, due_only=True)
    assert await store.copies_due([dep], 10) == []
    await store.db.execute(
        "UPDATE gateway_copies SET next_attempt_at = 0 WHERE file_id = :f", {"f": row.id}
    )
    assert await store.copies_due([dep, "elsewhere"], 10) == [("key_store", row.id, dep)]
    assert await store.claim_copy(row.id, dep, "retrier", 60, due_only=True)
    assert await store.copies_due([dep], 10) == []  # leased now
    # Without due_only, a failed copy whose lease ran out is taken at once.
    other = _id("dep")
    assert await store.claim_copy(row.id, other, "one", 60, due_only=False)
    await store.copy_failed(row.id, other, backoff=60)
    assert await store.claim_copy(row.id, other, "user", 60, due_only=False)


async def test_copy_failed_doubles_the_backoff(store: Store) -> None:
    row = _file(copies=(Copy("dep", None, "failed", 0),))
    await store.insert_file(row)
    for attempt, wait in ((1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0)):
        before = time.time()
        await store.copy_failed(row.id, "dep", backoff=10)
        copy = await _copy(store, row.id, "dep")
        assert (copy["state"], copy["attempts"], copy["holder"]) == ("failed", attempt, None)
        assert before + wait <= float(copy["next_attempt_at"]) <= time.time() + wait
    await store.copy_failed(row.id, "dep", backoff=10_000)  # capped at a day
    assert float((await _copy(store, row.id, "dep"))["next_attempt_at"]) <= \
        time.time() + 86_400


async def test_result_file_is_minted_once_under_concurrency(store: Store) -> None:
    batch_id = _id("batch")
    rows = [_file(purpose="batch_output", source_batch=batch_id, result_kind="output")
            for _ in range(10)]
    ids = await asyncio.gather(*(store.mint_result_file(r) for r in rows))
    assert len(set(ids)) == 1 and ids[0] in {r.id for r in rows}
    assert await store.result_file_id(batch_id, "output") == ids[0]
    assert await store.result_file_id(batch_id, "errors") is None
    count = await store.db.fetch_val(
        "SELECT count(*) FROM gateway_files WHERE source_batch = :b", {"b": batch_id}
    )
    assert count == 1
    # The errors file of the same batch is a file of its own.
    errors = await store.mint_result_file(
        _file(purpose="batch_output", source_batch=batch_id, result_kind="errors"))
    assert errors != ids[0]


async def test_adapter_state(store: Store) -> None:
    dep, other = _id("dep"), _id("dep")
    assert await store.state_get(dep, "token") is None
    await store.state_put(dep, "token", b"\x00one")
    await store.state_put(other, "token", b"other")
    assert await store.state_get(dep, "token") == b"\x00one"
    await store.state_put(dep, "token", b"two")  # overwrite
    assert await store.state_get(dep, "token") == b"two"
    await store.state_delete(dep, "token")
    assert await store.state_get(dep, "token") is None
    await store.state_delete(dep, "token")  # deleting nothing is fine
    assert await store.state_get(other, "token") == b"other"


async def test_unfinished_batches_go_to_one_holder_each(database_url: str) -> None:
    stores = [Store(database_url) for _ in range(3)]
    for s in stores:
        await s.connect()
    try:
        dep = _id("dep")
        rows = [_batch(dep) for _ in range(25)]
        for row in rows:
            await stores[0].insert_batch(row)
        finished = _batch(dep)
        await stores[0].insert_batch(finished)
        await stores[0].update_batch(finished.id, status="completed", terminal=True, obj={})
        # Six holders on three stores, ten batches each at a time, until all are taken.
        claimed: list[BatchRow] = []
        for _ in range(10):
            got = await asyncio.gather(*(
                s.claim_unfinished(f"holder-{i}-{j}", [dep], 10, ttl=60)
                for j in range(2) for i, s in enumerate(stores)
            ))
            claimed += [r for rs in got for r in rs]
            if not any(got):
                break
        ids = [r.id for r in claimed]
        assert len(ids) == len(set(ids))  # nobody got a batch twice
        assert set(ids) == {r.id for r in rows}  # and the finished one is nobody's
        assert all(r.object == {"status": "in_progress", "n": [1, 2]} for r in claimed)
        assert await stores[1].claim_unfinished("late", [dep], 100, ttl=60) == []
        # Expired leases come back, least recently claimed first.
        await stores[0].db.execute(
            "UPDATE gateway_batch_leases SET lease_until = :t WHERE batch_id = :b",
            {"t": 1.0, "b": rows[3].id},
        )
        await stores[0].db.execute(
            "UPDATE gateway_batch_leases SET lease_until = :t WHERE batch_id = :b",
            {"t": 0.5, "b": rows[7].id},
        )
        again = await stores[2].claim_unfinished("next", [dep], 100, ttl=60)
        assert [r.id for r in again] == [rows[7].id, rows[3].id]
    finally:
        for s in stores:
            await s.disconnect()


async def test_transaction_rolls_back_on_error(store: Store) -> None:
    row = _file()
    with pytest.raises(RuntimeError):
        async with store.db.transaction():
            await store.db.execute(
                "INSERT INTO gateway_adapter_state VALUES (:d, 'k', :v, 0)",
                {"d": row.id, "v": b"x"},
            )
            async with store.db.transaction():  # nested: the same transaction
                await store.state_put(row.id, "k2", b"y")
                assert await store.state_get(row.id, "k") == b"x"
            raise RuntimeError("boom")
    assert await store.state_get(row.id, "k") is None
    assert await store.state_get(row.id, "k2") is None
    # A store method's own transaction: the file is not kept when a copy cannot be.
    dup = _file(copies=(Copy("dep", "n1", "ready"), Copy("dep", "n2", "ready")))
    with pytest.raises(_DUPLICATE):
        await store.insert_file(dup)
    assert await store.get_file(None, dup.id) is None
    # The connection went back to the pool in a usable state.
    await store.insert_file(row)
    assert await store.get_file(None, row.id) is not None


async def test_transaction_is_isolated_until_commit(store: Store) -> None:
    dep = _id("dep")
    inside, release = asyncio.Event(), asyncio.Event()

    async def writer() -> None:
        async with store.db.transaction():
            await store.state_put(dep, "k", b"v")
            inside.set()
            await release.wait()

    task = asyncio.create_task(writer())
    await inside.wait()
    assert await store.state_get(dep, "k") is None  # another task: not committed yet
    release.set()
    await task
    assert await store.state_get(dep, "k") == b"v"


async def test_a_transaction_cancelled_at_any_moment_leaves_every_connection_usable(
    store: Store,
) -> None:
    dep = _id("dep")

    async def write(i: int) -> None:
        async with store.db.transaction():
            await store.state_put(dep, f"k{i}", b"v")

    # Cancel writers at every point of their life: waiting for BEGIN, inside, at COMMIT.
    for i in range(60):
        task = asyncio.create_task(write(i))
        for _ in range(i % 6):
            await asyncio.sleep(0)
        await asyncio.sleep((i % 5) * 0.0005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Every pooled connection still works, outside a transaction and in one.
    await asyncio.gather(*(write(1000 + i) for i in range(8)))
    for i in range(8):
        assert await store.state_get(dep, f"k{1000 + i}") == b"v"


async def test_inputs_created_before(store: Store) -> None:
    # Long ago, so only this test's rows and older ones qualify.
    old = [_file(created_at=1_000 + n, copies=(Copy("dep", f"n{n}", "ready"),))
           for n in (3, 1, 2)]
    for row in old:
        await store.insert_file(row)
    await store.insert_file(_file(created_at=1_500, purpose="batch_output"))  # not an input
    await store.insert_file(_file(created_at=5_000))  # too recent
    mine = {r.id for r in old}
    got = [r for r in await store.inputs_created_before(2_000, 1_000) if r.id in mine]
    assert [r.id for r in got] == [r.id for r in old]  # upload order, oldest first
    assert got[0].copies == (Copy("dep", "n3", "ready"),)
    assert len(await store.inputs_created_before(2_000, 2)) == 2
    assert [r for r in await store.inputs_created_before(1_002, 1_000) if r.id in mine] == \
        [old[1]]


async def test_delete_file_of_another_owner_touches_nothing(database_url: str) -> None:
    store = Store(database_url)
    await store.connect()
    try:
        row = FileRow(id="file-" + secrets.token_hex(8), owner="key_a", purpose="batch",
                      filename="f.jsonl", bytes=1, created_at=1, status="processed",
                      model_groups=["g"], source_model=None,
                      copies=(Copy("dep1", "native-1", "ready"),))
        await store.insert_file(row)
        await store.delete_file("key_b", row.id)
        kept = await store.get_file("key_a", row.id)
        assert kept is not None and [c.provider_file_id for c in kept.copies] == ["native-1"]
        await store.delete_file("key_a", row.id)
        assert await store.get_file("key_a", row.id) is None
    finally:
        await store.disconnect()
