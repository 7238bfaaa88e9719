"""The whole developer flow through the real OpenAI SDK, against the gateway under uvicorn,
in front of real fake upstreams on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import openai

from tests.conftest import GROUP, OTHER_GROUP, Upstream
from tests.helpers import batch_file, request_line

TERMINAL = {"completed", "failed", "expired", "cancelled"}


def poll(client: openai.OpenAI, batch_id: str, limit: int = 20) -> openai.types.Batch:
    for _ in range(limit):
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"batch {batch_id} never finished")


def native_ids(upstreams: list[Upstream]) -> set[str]:
    out: set[str] = set()
    for up in upstreams:
        out |= set(up.fake.files) | set(up.fake.batches)
    return out


def batch_creates(up: Upstream) -> int:
    return sum(1 for r in up.fake.requests if r[0] == "POST" and r[1] == "/v1/batches")


def test_upload_writes_a_rewritten_copy_to_every_deployment(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    sent = [request_line(f"req-{i}", GROUP, temperature=0.1 * i) for i in range(5)]
    data = b"".join(json.dumps(x).encode() + b"\n" for x in sent)
    f = client.files.create(
        file=("in.jsonl", data), purpose="batch", extra_body={"target_model_names": GROUP}
    )
    assert f.id.startswith("file-") and len(f.id) == 27
    assert (f.bytes, f.filename, f.purpose, f.status) == (len(data), "in.jsonl", "batch",
                                                          "processed")
    for up in upstreams[:2]:
        assert len(up.fake.uploads) == 1
        (native,) = up.fake.uploads
        got = up.fake.file_lines(native)
        # Each copy: every line intact, only body.model renamed to the deployment's model.
        expected = [{**x, "body": {**x["body"], "model": up.model}} for x in sent]
        assert got == expected
        assert native not in f.id
    assert upstreams[2].fake.uploads == {}


def test_full_flow_sync(client: openai.OpenAI, upstreams: list[Upstream]) -> None:
    f = client.files.create(
        file=batch_file(4), purpose="batch", extra_body={"target_model_names": GROUP}
    )
    batch = client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"project": "demo"},
    )
    assert batch.id.startswith("batch_") and len(batch.id) == 28
    assert batch.input_file_id == f.id
    assert batch.status == "validating"
    assert batch.metadata == {"project": "demo"}
    assert sum(batch_creates(up) for up in upstreams) == 1

    done = poll(client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.completed == 4
    assert done.output_file_id and done.output_file_id.startswith("file-")
    assert done.error_file_id is None  # the upstream said "" (the quirk)

    out = client.files.content(done.output_file_id).text
    lines = [json.loads(x) for x in out.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == [f"req-{i}" for i in range(4)]
    assert all(x["response"]["status_code"] == 200 for x in lines)

    output = client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output" and output.bytes == len(out.encode())

    # A finished batch is answered from the database: no further upstream call.
    before = sum(len(up.fake.requests) for up in upstreams)
    again = client.batches.retrieve(batch.id)
    assert again.model_dump() == done.model_dump()
    assert sum(len(up.fake.requests) for up in upstreams) == before

    # Nothing the client saw names a provider object.
    seen = json.dumps([f.model_dump(), done.model_dump(), output.model_dump()])
    assert not any(native in seen for native in native_ids(upstreams))

    # The input file's content comes back as the user wrote it.
    content = client.files.content(f.id).text.splitlines()
    assert [json.loads(x)["body"]["model"] for x in content] == [GROUP] * 4


def test_full_flow_async(
    make_key: Callable[..., str], gateway: object, upstreams: list[Upstream]
) -> None:
    key = make_key([GROUP])

    async def flow() -> None:
        client = openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key=key, max_retries=0  # type: ignore[attr-defined]
        )
        f = await client.files.create(
            file=batch_file(2), purpose="batch", extra_body={"target_model_names": [GROUP]}
        )
        batch = await client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        for _ in range(20):
            batch = await client.batches.retrieve(batch.id)
            if batch.status in TERMINAL:
                break
        assert batch.status == "completed" and batch.output_file_id
        text = (await client.files.content(batch.output_file_id)).text
        assert len(text.splitlines()) == 2
        page = await client.batches.list(limit=10)
        assert [b.id for b in page.data] == [batch.id]
        await client.close()

    asyncio.run(flow())


def test_batches_spread_over_deployments_holding_the_file(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    f = client.files.create(
        file=batch_file(1), purpose="batch", extra_body={"target_model_names": GROUP}
    )
    for _ in range(4):
        client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert [batch_creates(up) for up in upstreams] == [2, 2, 0]


def test_several_target_groups_and_query_parameter(
    make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI],
    upstreams: list[Upstream],
) -> None:
    client = client_for(make_key([GROUP, OTHER_GROUP]))
    client.files.create(
        file=batch_file(2), purpose="batch",
        extra_body={"target_model_names": f"{GROUP}, {OTHER_GROUP}"},
    )
    assert [len(up.fake.uploads) for up in upstreams] == [1, 1, 1]
    (eu_native,) = upstreams[2].fake.uploads
    assert {x["body"]["model"] for x in upstreams[2].fake.file_lines(eu_native)} == {
        "gpt-4o-mini-eu"
    }
    f = client.files.create(
        file=batch_file(1, model=OTHER_GROUP), purpose="batch",
        extra_query={"target_model_names": OTHER_GROUP},
    )
    assert [len(up.fake.uploads) for up in upstreams] == [1, 1, 2]
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.model == OTHER_GROUP
    # A file for two groups runs on either; extra_body can pin the group.
    both = client.files.create(
        file=batch_file(1), purpose="batch",
        extra_body={"target_model_names": [GROUP, OTHER_GROUP]},
    )
    pinned = client.batches.create(
        input_file_id=both.id, endpoint="/v1/chat/completions", completion_window="24h",
        extra_body={"target_model_names": OTHER_GROUP},
    )
    assert pinned.model == OTHER_GROUP
    groups = {
        client.batches.create(input_file_id=both.id, endpoint="/v1/chat/completions",
                              completion_window="24h").model
        for _ in range(3)
    }
    assert groups == {GROUP, OTHER_GROUP}


def test_upload_without_target_names_uses_the_models_in_the_file(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    f = client.files.create(file=batch_file(2), purpose="batch")
    assert [len(up.fake.uploads) for up in upstreams] == [1, 1, 0]
    assert client.files.retrieve(f.id).id == f.id


def test_cancel_list_delete(client: openai.OpenAI, upstreams: list[Upstream]) -> None:
    f = client.files.create(
        file=batch_file(2), purpose="batch", extra_body={"target_model_names": GROUP}
    )
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    final = poll(client, batch.id)
    assert final.status == "cancelled"
    try:
        client.batches.cancel(batch.id)
        raise AssertionError("cancelling a cancelled batch must fail")
    except openai.ConflictError as e:
        assert "cancelled" in str(e)

    listed = client.files.list()
    assert f.id in [x.id for x in listed.data]
    natives = [next(iter(up.fake.uploads)) for up in upstreams[:2]]
    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    # Every upstream copy was deleted, each on its own deployment.
    for up, native in zip(upstreams[:2], natives, strict=True):
        assert ("DELETE", f"/v1/files/{native}") in [(r[0], r[1]) for r in up.fake.requests]
        assert native not in up.fake.files
    try:
        client.files.retrieve(f.id)
        raise AssertionError("a deleted file must be gone")
    except openai.NotFoundError:
        pass


def test_list_filtered_by_model_group_as_query_parameter(
    make_key: Callable[..., str],
    client_for: Callable[[str], openai.OpenAI],
) -> None:
    client = client_for(make_key([GROUP, OTHER_GROUP]))
    made = {}
    for group in (GROUP, OTHER_GROUP):
        f = client.files.create(
            file=batch_file(1, model=group), purpose="batch",
            extra_body={"target_model_names": group},
        )
        made[group] = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
    page = client.batches.list(extra_query={"target_model_names": OTHER_GROUP})
    assert [b.id for b in page.data] == [made[OTHER_GROUP]]
    assert {b.id for b in client.batches.list().data} == set(made.values())


def test_output_file_is_minted_once_under_concurrent_retrieves(
    client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    f = client.files.create(file=batch_file(2), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    for up in upstreams[:2]:
        for native in list(up.fake.batches):
            up.fake.complete(native)
    with ThreadPoolExecutor(16) as pool:
        seen = list(pool.map(lambda _: client.batches.retrieve(batch.id), range(32)))
    assert {b.status for b in seen} == {"completed"}
    assert len({b.output_file_id for b in seen}) == 1
    outputs = [x for x in client.files.list().data if x.purpose == "batch_output"]
    assert [x.id for x in outputs] == [seen[0].output_file_id]
