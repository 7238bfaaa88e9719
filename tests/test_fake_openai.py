"""The fake OpenAI follows reference/providers.md section 1, checked with the real SDK."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import ServerThread

KEY = "sk-upstream"
MODEL = "gpt-4o-mini"


def line(i: int | str, model: str = MODEL, url: str = "/v1/chat/completions",
         **body: Any) -> dict[str, Any]:
    return {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": url,
        "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}], **body},
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join(
        (item if isinstance(item, bytes) else json.dumps(item).encode()) + b"\n" for item in lines
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=KEY, models=[MODEL, "gpt-4.1-mini"])
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app) as server:
        yield server


@pytest.fixture
def client(server: ServerThread, fake: FakeOpenAI) -> openai.OpenAI:
    fake.clear_faults()
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def raw(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def upload(client: openai.OpenAI, lines: list[Any], name: str = "in.jsonl") -> Any:
    return client.files.create(file=(name, jsonl(lines)), purpose="batch")


def batch_for(client: openai.OpenAI, lines: list[Any]) -> Any:
    f = upload(client, lines)
    return client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


# -- transport, auth, envelopes -----------------------------------------------------------------


def test_wrong_or_missing_key_is_401_invalid_api_key(server: ServerThread) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.files.list()
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    r = httpx.get(server.url + "/v1/batches")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.headers["x-request-id"].startswith("req_")


def test_every_response_has_request_id_and_success_is_200(raw: httpx.Client) -> None:
    up = raw.post("/v1/files", files={"file": ("a.jsonl", jsonl([line(1)]))},
                  data={"purpose": "batch"})
    assert up.status_code == 200 and up.headers["x-request-id"]
    created = raw.post("/v1/batches", json={"input_file_id": up.json()["id"],
                                            "endpoint": "/v1/chat/completions",
                                            "completion_window": "24h"})
    assert created.status_code == 200 and created.headers["x-request-id"]
    missing = raw.get("/v1/files/file-nope")
    assert missing.status_code == 404 and missing.headers["x-request-id"]
    assert len({up.headers["x-request-id"], created.headers["x-request-id"],
                missing.headers["x-request-id"]}) == 3


def test_unknown_route_is_openai_404(raw: httpx.Client) -> None:
    r = raw.get("/v1/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Invalid URL (GET /v1/nothing)"


# -- files ---------------------------------------------------------------------------------------


def test_upload_retrieve_content_delete(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    data = jsonl([line(1), line(2)])
    f = client.files.create(file=("input.jsonl", data), purpose="batch")
    assert f.object == "file" and f.id.startswith("file-") and len(f.id) == 27
    assert (f.bytes, f.filename, f.purpose, f.status) == (len(data), "input.jsonl", "batch",
                                                          "processed")
    assert f.expires_at == f.created_at + 30 * 86400  # batch files expire after 30 days
    assert client.files.retrieve(f.id) == f
    assert client.files.content(f.id).content == data
    assert fake.uploads[f.id].read_bytes() == data
    assert fake.file_lines(f.id) == [line(1), line(2)]
    deleted = client.files.delete(f.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (f.id, "file", True)
    with pytest.raises(openai.NotFoundError) as info:
        client.files.retrieve(f.id)
    assert info.value.body == {"message": f"No such File object: {f.id}",
                               "type": "invalid_request_error", "param": "id", "code": None}
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(f.id)


def test_upload_expires_after_brackets_and_dotted(client: openai.OpenAI,
                                                  raw: httpx.Client) -> None:
    f = client.files.create(file=("a.jsonl", jsonl([line(1)])), purpose="batch",
                            expires_after={"anchor": "created_at", "seconds": 7200})
    assert f.expires_at == f.created_at + 7200
    r = raw.post("/v1/files", files={"file": ("a.jsonl", jsonl([line(1)]))},
                 data={"purpose": "batch", "expires_after.anchor": "created_at",
                       "expires_after.seconds": "3600"})
    assert r.status_code == 200
    assert r.json()["expires_at"] == r.json()["created_at"] + 3600
    r = raw.post("/v1/files", files={"file": ("a.jsonl", jsonl([line(1)]))},
                 data={"purpose": "batch", "expires_after[anchor]": "created_at",
                       "expires_after[seconds]": "60"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "expires_after.seconds"


def test_upload_rejects_bad_requests(client: openai.OpenAI, raw: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="nonsense")  # type: ignore[arg-type]
    assert info.value.body["param"] == "purpose"  # type: ignore[index]
    r = raw.post("/v1/files", data={"purpose": "batch"}, files={"other": ("x", b"1")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = raw.post("/v1/files", files={"file": ("a.jsonl", b"{}\n")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = raw.post("/v1/files", files={"file": ("a.txt", b"{}\n")}, data={"purpose": "batch"})
    assert r.status_code == 400


def test_chunked_upload_streams_to_disk(server: ServerThread, fake: FakeOpenAI) -> None:
    boundary = "fakeboundary1234"
    chunk = (json.dumps(line("x")) + "\n").encode() * 512  # ~60 KiB
    count = 400  # ~24 MiB

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n"
               f"batch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               f"filename=\"big.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n").encode()
        for _ in range(count):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    tracemalloc.start()
    try:
        r = httpx.post(
            server.url + "/v1/files",
            content=body(),  # a generator: sent with Transfer-Encoding: chunked
            headers={"Authorization": f"Bearer {KEY}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
            timeout=60,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == len(chunk) * count
    assert fake.uploads[r.json()["id"]].stat().st_size == len(chunk) * count
    assert peak < 8 << 20, f"upload held {peak} bytes in memory"
    assert fake.requests[-1][3]["transfer-encoding"] == "chunked"


def test_list_files_pagination_order_and_purpose(server: ServerThread) -> None:
    fake = FakeOpenAI(api_key=KEY)
    with ServerThread(fake.app) as own:
        client = openai.OpenAI(base_url=own.url + "/v1", api_key=KEY, max_retries=0)
        ids = [upload(client, [line(i)]).id for i in range(5)]
        other = client.files.create(file=("x.txt", b"hello"), purpose="user_data")
        page = client.files.list(limit=2, purpose="batch")
        assert [f.id for f in page.data] == ids[::-1][:2]  # newest first by default
        assert page.has_more is True
        body = client.files.with_raw_response.list(limit=2, purpose="batch").http_response.json()
        assert body["object"] == "list"
        assert (body["first_id"], body["last_id"]) == (ids[4], ids[3])
        assert [f.id for f in client.files.list(limit=2, purpose="batch")] == ids[::-1]
        assert [f.id for f in client.files.list(order="asc", purpose="batch")] == ids
        after = client.files.list(order="asc", after=ids[1], limit=2, purpose="batch")
        assert [f.id for f in after.data] == ids[2:4] and after.has_more is True
        assert [f.id for f in client.files.list(purpose="user_data")] == [other.id]
        assert len(client.files.list().data) == 6
        last = client.files.list(after=ids[0], purpose="batch")
        assert last.data == [] and last.has_more is False
        with pytest.raises(openai.BadRequestError):
            client.files.list(limit=0)
    fake.close()


# -- batches ---------------------------------------------------------------------------------


def test_lifecycle_output_and_empty_string_error_file(client: openai.OpenAI,
                                                      fake: FakeOpenAI) -> None:
    lines = [line(1), line(2), line(3)]
    f = upload(client, lines)
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"team": "a"})
    assert b.id.startswith("batch_") and b.object == "batch"
    assert (b.status, b.input_file_id, b.endpoint, b.completion_window) == (
        "validating", f.id, "/v1/chat/completions", "24h")
    assert b.expires_at == b.created_at + 86400
    assert b.request_counts is not None and b.request_counts.total == 0
    assert b.metadata == {"team": "a"}
    raw = client.batches.with_raw_response.retrieve(b.id).http_response.json()
    assert raw["status"] == "in_progress" and raw["in_progress_at"] is not None
    assert raw["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    for key in ("output_file_id", "error_file_id", "failed_at", "completed_at", "errors"):
        assert key in raw and raw[key] is None  # every key present, null when unset
    assert client.batches.retrieve(b.id).status == "finalizing"
    done = client.batches.retrieve(b.id)
    assert done.status == "completed" and done.completed_at and done.finalizing_at
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
    assert done.error_file_id == ""  # the observed quirk
    assert done.model == MODEL
    assert done.usage is not None and done.usage.total_tokens > 0
    assert client.batches.retrieve(b.id).status == "completed"  # terminal stays put
    out = client.files.retrieve(done.output_file_id or "")
    assert out.purpose == "batch_output"
    results = [json.loads(x) for x in client.files.content(out.id).text.splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["req-1", "req-2", "req-3"]
    for r in results:
        assert r["id"].startswith("batch_req_") and r["error"] is None
        assert r["response"]["status_code"] == 200
        body = r["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == MODEL
        assert body["choices"][0]["message"]["content"] == "echo:" + r["custom_id"]
        assert body["usage"]["total_tokens"] == (body["usage"]["prompt_tokens"]
                                                 + body["usage"]["completion_tokens"])
    assert fake.file_lines(out.id) == results


def test_null_file_ids_when_quirk_off_and_all_failed() -> None:
    fake = FakeOpenAI(api_key=KEY, empty_string_file_ids=False)
    with ServerThread(fake.app) as own:
        client = openai.OpenAI(base_url=own.url + "/v1", api_key=KEY, max_retries=0)
        b = batch_for(client, [line(1)])
        fake.complete(b.id)
        assert client.batches.retrieve(b.id).error_file_id is None
        bad = batch_for(client, [line(1, metadata={"fake_fail": "true"}),
                                 line(2, metadata={"fake_fail": "true"})])
        fake.complete(bad.id)
        got = client.batches.retrieve(bad.id)
        assert got.status == "completed" and got.output_file_id is None
        assert got.request_counts is not None
        assert (got.request_counts.completed, got.request_counts.failed) == (0, 2)
        errors = fake.file_lines(got.error_file_id or "")
        assert {e["custom_id"] for e in errors} == {"req-1", "req-2"}
        for e in errors:
            assert e["error"] is None and e["response"]["status_code"] == 400
            assert set(e["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    fake.close()


def test_cancel_and_conflict(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    b = batch_for(client, [line(1)])
    c = client.batches.cancel(b.id)
    assert c.status == "cancelling" and c.cancelling_at
    got = client.batches.retrieve(b.id)
    assert got.status == "cancelled" and got.cancelled_at
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(b.id)
    assert info.value.body == {"message": "Cannot cancel a batch with status 'cancelled'.",
                               "type": "invalid_request_error", "param": None, "code": None}
    done = batch_for(client, [line(1)])
    fake.complete(done.id)
    with pytest.raises(openai.ConflictError) as info:
        client.batches.cancel(done.id)
    assert info.value.message.endswith("Cannot cancel a batch with status 'completed'.")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_missing")


def test_cancel_in_progress_writes_cancelled_lines(client: openai.OpenAI,
                                                   fake: FakeOpenAI) -> None:
    b = batch_for(client, [line(1), line(2)])
    fake.advance(b.id)
    client.batches.cancel(b.id)
    got = client.batches.retrieve(b.id)
    assert got.status == "cancelled"
    errors = fake.file_lines(got.error_file_id or "")
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}


def test_expired_batch(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    b = batch_for(client, [line(1), line(2)])
    fake.advance(b.id)
    fake.advance(b.id, "expired")
    got = client.batches.retrieve(b.id)
    assert got.status == "expired" and got.expired_at
    errors = fake.file_lines(got.error_file_id or "")
    assert sorted(e["custom_id"] for e in errors) == ["req-1", "req-2"]
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)


@pytest.mark.parametrize(
    ("content", "code", "line_no"),
    [
        (jsonl([line(1), b"{not json"]), "invalid_json_line", 2),
        (jsonl([line(1), line(1)]), "duplicate_custom_id", 2),
        (jsonl([line(1), line(2, url="/v1/embeddings")]), "url_mismatch", 2),
        (jsonl([line(1), line(2, model="gpt-4.1-mini")]), "model_mismatch", 2),
        (jsonl([line(1, model="gpt-unknown")]), "model_not_found", 1),
        (jsonl([{"custom_id": "a", "method": "GET", "url": "/v1/chat/completions",
                 "body": {"model": MODEL}}]), "invalid_request", 1),
        (b"", "empty_file", None),
        (b"\n\n", "empty_file", None),
    ],
)
def test_validation_failures(client: openai.OpenAI, content: bytes, code: str,
                             line_no: int | None) -> None:
    f = client.files.create(file=("in.jsonl", content), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert b.status == "validating"
    got = client.batches.retrieve(b.id)
    assert got.status == "failed" and got.failed_at and got.in_progress_at is None
    assert got.errors is not None and got.errors.object == "list"
    assert got.errors.data is not None
    first = got.errors.data[0]
    assert (first.code, first.line) == (code, line_no)
    assert first.message
    assert client.batches.retrieve(b.id).status == "failed"
    if code == "invalid_json_line":
        assert first.message == "This line is not parseable as valid JSON."


def test_create_batch_rejections(client: openai.OpenAI) -> None:
    f = upload(client, [line(1)])
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="1h")  # type: ignore[arg-type]
    assert info.value.body["param"] == "completion_window"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=f.id, endpoint="/v1/nope",  # type: ignore[arg-type]
                              completion_window="24h")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert info.value.body["param"] == "input_file_id"  # type: ignore[index]
    other = client.files.create(file=("x.txt", b"hi"), purpose="user_data")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=other.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h",
                              metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.retrieve("batch_missing")
    assert missing.value.body["param"] == "id"  # type: ignore[index]


def test_list_batches_pagination() -> None:
    fake = FakeOpenAI(api_key=KEY)
    with ServerThread(fake.app) as own:
        client = openai.OpenAI(base_url=own.url + "/v1", api_key=KEY, max_retries=0)
        ids = [batch_for(client, [line(i)]).id for i in range(5)]
        page = client.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
        assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]  # auto-pagination
        body = client.batches.with_raw_response.list(limit=3, after=ids[3]).http_response.json()
        assert [b["id"] for b in body["data"]] == ids[2::-1]
        assert (body["first_id"], body["last_id"], body["has_more"]) == (ids[2], ids[0], False)
        assert len(client.batches.list().data) == 5  # default limit 20
        with pytest.raises(openai.BadRequestError):
            client.batches.list(limit=101)
    fake.close()


def test_auto_advance_off() -> None:
    fake = FakeOpenAI(api_key=KEY, auto_advance=False)
    with ServerThread(fake.app) as own:
        client = openai.OpenAI(base_url=own.url + "/v1", api_key=KEY, max_retries=0)
        b = batch_for(client, [line(1)])
        assert client.batches.retrieve(b.id).status == "validating"
        assert fake.advance(b.id)["status"] == "in_progress"
        assert client.batches.retrieve(b.id).status == "in_progress"
        assert fake.complete(b.id)["status"] == "completed"
        assert client.batches.retrieve(b.id).status == "completed"
    fake.close()


# -- recording and fault injection --------------------------------------------------------------


def test_records_requests(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    client.files.list(purpose="batch", limit=3)
    method, path, query, headers = fake.requests[-1]
    assert (method, path) == ("GET", "/v1/files")
    assert query == {"purpose": "batch", "limit": "3"}
    assert headers["authorization"] == f"Bearer {KEY}"


def test_fail_injects_responses(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.fail("GET", r"^/v1/batches$", 429, headers={"Retry-After": "3"}, times=2)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as info:
            client.batches.list()
        assert info.value.response.headers["retry-after"] == "3"
        assert info.value.response.headers["x-request-id"]
    client.batches.list()  # used up
    fake.fail("*", r"^/v1/files", 503, body={"error": {"message": "down", "type": "x",
                                                       "param": None, "code": None}})
    with pytest.raises(openai.InternalServerError) as err:
        client.files.list()
    assert err.value.status_code == 503 and err.value.message.endswith("down")
    fake.fail("POST", r"^/v1/files$", 500, body="plain text", times=-1)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            upload(client, [line(1)])
    fake.clear_faults()
    upload(client, [line(1)])


def test_stall_delays_answer(server: ServerThread, fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=0.3)
    fake.stall("GET", r"^/v1/files$", 1.5)
    with pytest.raises(openai.APITimeoutError):
        client.files.list()
    client.files.list()  # stall used up
