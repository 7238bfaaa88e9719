"""`Idempotency-Key` on POST /v1/files and POST /v1/batches: a retry with the same key and body
gets the first answer and creates nothing; another body is a 409; a request still running
answers 409 with Retry-After; errors are not kept; keys are per owner."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import openai
import pytest

from gateway.store import Store
from tests.conftest import GROUP, Upstream
from tests.helpers import batch_file


def _upload(client: openai.OpenAI, key: str, n: int = 3, prefix: str = "req") -> str:
    f = client.files.create(file=batch_file(n, prefix=prefix), purpose="batch",
                            extra_body={"target_model_names": GROUP},
                            extra_headers={"Idempotency-Key": key})
    return f.id


def _create(client: openai.OpenAI, file_id: str, key: str,
            metadata: dict[str, str] | None = None) -> openai.types.Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata=metadata,
                                 extra_headers={"Idempotency-Key": key})


def _uploads(upstreams: list[Upstream]) -> int:
    return sum(len(up.fake.uploads) for up in upstreams)


def _batches(upstreams: list[Upstream]) -> int:
    return sum(len(up.fake.batches) for up in upstreams)


def test_a_retried_upload_returns_the_first_file_and_copies_nothing_again(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    first = _upload(client, "upload-1")
    copies = _uploads(upstreams)
    assert copies == 2  # the two deployments of GROUP

    raw = client.files.with_raw_response.create(
        file=batch_file(3), purpose="batch", extra_body={"target_model_names": GROUP},
        extra_headers={"Idempotency-Key": "upload-1"})
    assert raw.headers["idempotent-replayed"] == "true"
    assert raw.parse().id == first
    assert _uploads(upstreams) == copies
    assert [f.id for f in client.files.list()] == [first]

    with pytest.raises(openai.ConflictError) as e:
        _upload(client, "upload-1", n=4)
    assert e.value.code == "idempotency_key_reused"
    assert _uploads(upstreams) == copies

    # A new key is a new upload.
    assert _upload(client, "upload-2") != first


def test_a_retried_create_returns_the_first_batch_and_creates_one_upstream(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    file_id = _upload(client, "f")
    batch = _create(client, file_id, "create-1", {"run": "a"})
    again = _create(client, file_id, "create-1", {"run": "a"})
    assert again.id == batch.id
    assert _batches(upstreams) == 1
    with pytest.raises(openai.ConflictError) as e:
        _create(client, file_id, "create-1", {"run": "b"})
    assert e.value.code == "idempotency_key_reused"
    assert _batches(upstreams) == 1
    assert [b.id for b in client.batches.list()] == [batch.id]


def test_an_error_is_not_kept_so_the_corrected_request_may_reuse_the_key(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    with pytest.raises(openai.NotFoundError):
        _create(client, "file-doesnotexist", "create-2")
    file_id = _upload(client, "f")
    # The same key with another body: allowed, since the first attempt left nothing.
    batch = _create(client, file_id, "create-2")
    assert batch.status in ("validating", "in_progress")
    assert _batches(upstreams) == 1


def test_keys_are_per_owner(
    make_key: Callable[..., str], client_for: Callable[[str], openai.OpenAI],
    upstreams: list[Upstream],
) -> None:
    alice, bob = client_for(make_key([GROUP])), client_for(make_key([GROUP]))
    a = _upload(alice, "same-key")
    b = _upload(bob, "same-key", n=5)  # another owner's key space: no conflict, no replay
    assert a != b
    with pytest.raises(openai.NotFoundError):
        bob.files.retrieve(a)


def test_a_retry_while_the_first_still_runs_is_told_to_wait(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    file_id = _upload(client, "f")
    for up in upstreams[:2]:
        up.fake.stall("POST", r"^/v1/batches$", 1.5)
    results: list[object] = []
    first = threading.Thread(target=lambda: results.append(_create(client, file_id, "slow")))
    first.start()
    deadline = time.monotonic() + 5
    # Wait until the first request is inside the stalled upstream call.
    while not any(r[:2] == ("POST", "/v1/batches") for up in upstreams for r in up.fake.requests):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(openai.ConflictError) as e:
        _create(client, file_id, "slow")
    assert e.value.code == "idempotency_key_in_use"
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 61
    first.join()
    (batch,) = results
    assert _create(client, file_id, "slow").id == batch.id  # type: ignore[attr-defined]


def test_bad_keys_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        _upload(client, "x" * 256)
    assert e.value.code == "invalid_idempotency_key"


async def test_claims_hold_once_and_a_dead_holders_claim_is_taken_over(
    database_url: str,
) -> None:
    store = Store(database_url)
    await store.connect()
    try:
        keys = store.idempotency
        now = time.time()
        assert (await keys.claim("o", "files", "k", "a", now, 20)).holder == "a"
        assert (await keys.claim("o", "files", "k", "b", now + 1, 20)).holder == "a"
        # a's process died: its lease runs out and b takes the key over.
        assert (await keys.claim("o", "files", "k", "b", now + 21, 20)).holder == "b"
        await keys.finish("o", "files", "k", "b", "f" * 64, 200, b"{}")
        done = await keys.claim("o", "files", "k", "c", now + 100, 20)
        assert (done.holder, done.state, done.body) == ("b", "done", b"{}")
        # A finished key is kept a day, then forgotten.
        await keys.purge(now + 30, now + 200)
        assert (await keys.claim("o", "files", "k", "d", now + 300, 20)).holder == "d"
    finally:
        await store.disconnect()
