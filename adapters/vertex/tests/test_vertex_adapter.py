"""The adapter against a real GCS emulator, the fake token endpoint and the fake Vertex AI:
uploads (multipart and resumable), job mapping, results, token handling, failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from gateway_vertex import VertexProvider, gcs, labels
from gateway_vertex.gemini_request import to_gemini

from adapters.vertex.tests.vertex_support import (
    BUCKET,
    MODEL,
    Google,
    jsonl,
    provider_for,
    request_line,
)
from gateway import (
    ConfigError,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.testing.conformance import (
    byte_stream,
    output_lines,
    prepared_jsonl,
    read_content,
)
from gateway.testing.fake_vertex import FakeGoogleOAuth


async def run(provider: VertexProvider, lines: list[dict[str, Any]],
              metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Upload, create, poll to the end; the final ProviderBatch."""
    uploaded = await provider.upload_file(byte_stream(prepared_jsonl(provider, lines)), "in.jsonl")
    batch = await provider.create_batch(uploaded.id, "/v1/chat/completions", "24h", metadata)
    for _ in range(10):
        batch = await provider.retrieve_batch(batch["id"])
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
    raise AssertionError(f"job never ended: {batch}")


async def objects(provider: VertexProvider, prefix: str = "") -> list[str]:
    return [o["name"] for o in await provider.gcs.list(BUCKET, prefix)]


async def raw_object(provider: VertexProvider, uri: str) -> bytes:
    return b"".join([c async for c in gcs.read(await provider.gcs.open(gcs.GcsPath.parse(uri)))])


# -- files ----------------------------------------------------------------------------------------


async def test_small_upload_is_one_multipart_request_of_gemini_lines(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    lines = [request_line(f"r{i}") for i in range(3)]
    data = prepared_jsonl(provider, lines)
    f = await provider.upload_file(byte_stream(data), "mine.jsonl")
    assert f.id.startswith(f"gs://{BUCKET}/batch-gateway/in/") and f.id.endswith(".jsonl")
    assert f.bytes == len(data) and f.filename == "mine.jsonl"
    stored = [json.loads(x) for x in (await raw_object(provider, f.id)).splitlines()]
    assert stored == [to_gemini(line, MODEL) for line in lines]
    got = await provider.retrieve_file(f.id)
    assert (got.id, got.bytes, got.filename) == (f.id, len(data), "mine.jsonl")
    meta = await provider.gcs.get(gcs.GcsPath.parse(f.id))
    assert meta["metadata"]["lines"] == "3" and meta["contentType"] == "application/jsonl"


async def test_large_upload_is_resumable_in_bounded_chunks(
    google: Google, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = gcs.CHUNK_QUANTUM
    provider = provider_for(http, google.params(gcs_upload_chunk_size=chunk))
    lines = [request_line(f"r{i}", "x" * 900) for i in range(1500)]  # ~1.6 MB
    data = prepared_jsonl(provider, lines)
    sent = 0
    persisted = [0]
    lag: list[int] = []
    put = gcs.Gcs._put

    async def spy(self: gcs.Gcs, session: str, body: bytes, offset: int,
                  total: int | None) -> Any:
        result = await put(self, session, body, offset, total)
        persisted.append(result if isinstance(result, int) else offset + len(body))
        return result

    monkeypatch.setattr(gcs.Gcs, "_put", spy)

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(data), 16 << 10):
            lag.append(sent - persisted[-1])  # what the adapter may be holding right now
            sent += min(16 << 10, len(data) - start)
            yield data[start : start + (16 << 10)]

    f = await provider.upload_file(stream(), "big.jsonl")
    assert len(persisted) > 5  # many chunks, not one body
    assert max(lag) <= chunk + (16 << 10)  # memory bounded by one chunk
    assert f.bytes == len(data)
    assert await raw_object(provider, f.id) == data
    meta = await provider.gcs.get(gcs.GcsPath.parse(f.id))
    assert meta["metadata"] == {"filename": "big.jsonl", "lines": "1500"}


async def test_missing_bucket_is_a_deployment_problem(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params(gcs_bucket_name="no-such-bucket/some/path"))
    assert provider.prefix == "some/path/batch-gateway"
    with pytest.raises(UpstreamUnavailable, match="no-such-bucket"):  # a 502, not a 404
        await provider.upload_file(byte_stream(prepared_jsonl(provider, [request_line("a")])),
                                   "a.jsonl")


async def test_storage_emulator_host_is_honoured(
    google: Google, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert gcs.endpoint(None) == ("https://storage.googleapis.com", True)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", google.gcs_url.removeprefix("http://"))
    assert gcs.endpoint(None) == (google.gcs_url, False)  # emulators take no credentials
    assert gcs.endpoint("https://gcs.example") == ("https://gcs.example", True)
    params = google.params()
    del params["gcs_api_base"]
    provider = provider_for(http, params)
    f = await provider.upload_file(byte_stream(prepared_jsonl(provider, [request_line("a")])),
                                   "a.jsonl")
    assert (await provider.retrieve_file(f.id)).filename == "a.jsonl"


async def test_input_content_reads_back_as_openai_lines(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    lines = [request_line(f"id {i} ✓", temperature=0.5, max_tokens=9) for i in range(4)]
    f = await provider.upload_file(byte_stream(prepared_jsonl(provider, lines)), "x.jsonl")
    got = [json.loads(x) for x in (await read_content(provider, f.id)).splitlines()]
    assert got == [{**x, "body": {**x["body"], "model": MODEL}} for x in lines]


async def test_delete_input_and_results(google: Google, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, google.params())
    batch = await run(provider, [request_line("ok"), request_line("no", "FAIL")])
    assert await objects(provider, "batch-gateway/out/")
    await provider.delete_file(batch["output_file_id"])  # removes the prediction directory
    assert await objects(provider, "batch-gateway/out/") == []
    with pytest.raises(UpstreamNotFound):
        await provider.file_content(batch["error_file_id"])
    await provider.delete_file(batch["input_file_id"])
    assert await objects(provider) == []
    with pytest.raises(UpstreamNotFound):
        await provider.delete_file(batch["input_file_id"])


@pytest.fixture(scope="module")
def offline_key() -> dict[str, Any]:
    return FakeGoogleOAuth().add_account("http://127.0.0.1:9/token")


@pytest.fixture
def offline(offline_key: dict[str, Any], http: aiohttp.ClientSession) -> VertexProvider:
    """A provider that never gets to talk to anything: for pure mapping checks."""
    return provider_for(http, {"model": f"vertex_ai/{MODEL}", "vertex_credentials": offline_key,
                               "gcs_bucket_name": BUCKET})


# -- batches --------------------------------------------------------------------------------------


async def test_job_round_trip_maps_state_counts_times_and_files(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    lines = [request_line(f"r{i}") for i in range(5)] + [request_line("bad", "please FAIL")]
    f = await provider.upload_file(byte_stream(prepared_jsonl(provider, lines)), "in.jsonl")
    created = await provider.create_batch(f.id, "/v1/chat/completions", "24h", {"team": "ml"})
    job = google.vertex.jobs[created["id"].rsplit("/", 1)[1]]
    assert created["id"].startswith("projects/510528649030/locations/us-central1/")
    assert job["model"] == f"publishers/google/models/{MODEL}"
    assert job["inputConfig"]["gcsSource"]["uris"] == [f.id]
    assert job["outputConfig"]["gcsDestination"]["outputUriPrefix"].startswith(
        f"gs://{BUCKET}/batch-gateway/out/")
    assert created["status"] == "validating" and created["metadata"] == {"team": "ml"}
    assert created["request_counts"] == {"total": 6, "completed": 0, "failed": 0}
    assert isinstance(created["created_at"], int) and created["input_file_id"] == f.id

    running = await provider.retrieve_batch(created["id"])
    assert running["status"] == "in_progress" and isinstance(running["in_progress_at"], int)
    assert running["output_file_id"] is None
    done = await provider.retrieve_batch(created["id"])
    assert done["status"] == "completed" and isinstance(done["completed_at"], int)
    assert done["request_counts"] == {"total": 6, "completed": 5, "failed": 1}
    directory = job["outputInfo"]["gcsOutputDirectory"]
    assert done["output_file_id"] == directory + "#output"
    assert done["error_file_id"] == directory + "#errors"
    assert done["metadata"] == {"team": "ml"} and done["errors"] is None
    info = await provider.retrieve_file(done["error_file_id"])
    assert info.id == done["error_file_id"] and info.bytes is None


async def test_results_every_custom_id_once_across_prediction_files(
    http: aiohttp.ClientSession,
) -> None:
    from gateway.testing.fake_vertex import gcs_emulator

    with gcs_emulator(BUCKET) as url:
        google = Google(url, prediction_files=3)
        try:
            provider = provider_for(http, google.params())
            lines = [request_line(f"r-{i}") for i in range(10)]
            lines[3] = request_line("r-3", "FAIL here")
            lines[4] = request_line("r-4", "BLOCK me")
            lines[5] = request_line("r-5", "what's the weather", tool_choice="required", tools=[
                {"type": "function", "function": {"name": "weather", "parameters": {}}}])
            lines[6] = request_line("r-6", "json please", response_format={"type": "json_object"})
            lines[7] = request_line("r-7", "one two three four", max_tokens=2)
            lines[8] = request_line("r-8", "think", reasoning_effort="low", n=2)
            batch = await run(provider, lines)
            dirs = {o.rsplit("/", 1)[0] for o in await objects(provider, "batch-gateway/out/")}
            assert len(await objects(provider, dirs.pop() + "/")) == 3
        finally:
            google.stop()
        outputs = {x["custom_id"]: x for x in await output_lines(provider,
                                                                batch["output_file_id"])}
        errors = {x["custom_id"]: x for x in await output_lines(provider, batch["error_file_id"])}
    assert sorted([*outputs, *errors]) == sorted(x["custom_id"] for x in lines)
    assert set(errors) == {"r-3"}
    assert "model failed" in errors["r-3"]["error"]["message"]
    body = {k: v["response"]["body"] for k, v in outputs.items()}
    assert body["r-0"]["choices"][0]["message"]["content"] == "echo: hello r-0"
    assert body["r-0"]["model"] == MODEL and body["r-0"]["usage"]["total_tokens"] > 0
    assert body["r-4"]["choices"][0]["finish_reason"] == "content_filter"
    call = body["r-5"]["choices"][0]
    assert call["finish_reason"] == "tool_calls"
    assert call["message"]["tool_calls"][0]["function"]["name"] == "weather"
    assert json.loads(body["r-6"]["choices"][0]["message"]["content"]) == {"echo": "json please"}
    assert body["r-7"]["choices"][0]["finish_reason"] == "length"
    assert [c["message"]["content"] for c in body["r-8"]["choices"]] == ["echo: think"] * 2
    assert body["r-8"]["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0


async def test_fake_vertex_rejects_lines_that_are_not_gemini_requests(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    good = to_gemini(request_line("good"), MODEL)
    openai_style = {"request": {"messages": [{"role": "user", "content": "hi"}],
                                "labels": labels.encode("gw_cid", "raw-1")}}
    bad_role = json.loads(json.dumps(to_gemini(request_line("bad-role"), MODEL)))
    bad_role["request"]["contents"][0]["role"] = "assistant"
    data = jsonl([good, openai_style, bad_role])
    f = await provider.upload_file(byte_stream(data), "raw.jsonl")
    batch = await provider.create_batch(f.id, "/v1/chat/completions", "24h", None)
    for _ in range(3):
        batch = await provider.retrieve_batch(batch["id"])
    assert batch["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
    errors = {x["custom_id"]: x["error"]["message"]
              for x in await output_lines(provider, batch["error_file_id"])}
    assert set(errors) == {"bad-role", "raw-1"}
    assert "Unknown name \"messages\"" in errors["raw-1"] and "role" in errors["bad-role"]


async def test_cancel_and_cancel_after_the_end(google: Google, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, google.params())
    batch = await run(provider, [request_line("a")])
    with pytest.raises(UpstreamConflict):
        await provider.cancel_batch(batch["id"])
    f = await provider.upload_file(byte_stream(prepared_jsonl(provider, [request_line("b")])),
                                   "b.jsonl")
    created = await provider.create_batch(f.id, "/v1/chat/completions", "24h", None)
    # Cancel answers `{}`; the adapter then reads the job (which the fake moves one step on).
    assert (await provider.cancel_batch(created["id"]))["status"] in ("cancelling", "cancelled")
    final = await provider.retrieve_batch(created["id"])
    assert final["status"] == "cancelled" and isinstance(final["cancelled_at"], int)
    assert final["output_file_id"] is None and final["error_file_id"] is None


async def test_create_failures(google: Google, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, google.params())
    with pytest.raises(UpstreamNotFound):  # the core then tries another deployment
        await provider.create_batch(f"gs://{BUCKET}/batch-gateway/in/gone.jsonl",
                                    "/v1/chat/completions", "24h", None)
    f = await provider.upload_file(byte_stream(prepared_jsonl(provider, [request_line("a")])),
                                   "a.jsonl")
    with pytest.raises(UpstreamBadRequest):
        await provider.create_batch(f.id, "/v1/embeddings", "24h", None)
    with pytest.raises(UpstreamBadRequest, match="metadata"):
        await provider.create_batch(f.id, "/v1/chat/completions", "24h",
                                    {f"k{i}": "v" * 500 for i in range(16)})
    google.vertex.fail_next("POST", 429)
    with pytest.raises(UpstreamRateLimited):
        await provider.create_batch(f.id, "/v1/chat/completions", "24h", None)
    google.vertex.fail_next("GET", 503)
    with pytest.raises(UpstreamUnavailable):
        await provider.retrieve_batch("123")


async def test_job_that_fails_reports_errors_without_internal_names(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    f = await provider.upload_file(byte_stream(prepared_jsonl(provider, [request_line("a")])),
                                   "a.jsonl")
    created = await provider.create_batch(f.id, "/v1/chat/completions", "24h", None)
    await provider.delete_file(f.id)  # the input vanishes before the job reads it
    for _ in range(2):
        batch = await provider.retrieve_batch(created["id"])
    assert batch["status"] == "failed" and isinstance(batch["failed_at"], int)
    (error,) = batch["errors"]["data"]
    assert error["code"] == "vertex_job_failed" and "Failed to read input" in error["message"]
    assert BUCKET not in error["message"]
    assert batch["output_file_id"] is None and batch["error_file_id"] is None


@pytest.mark.parametrize(("state", "status"), [
    ("JOB_STATE_QUEUED", "validating"), ("JOB_STATE_PENDING", "validating"),
    ("JOB_STATE_RUNNING", "in_progress"), ("JOB_STATE_PAUSED", "in_progress"),
    ("JOB_STATE_UPDATING", "in_progress"), ("JOB_STATE_SUCCEEDED", "completed"),
    ("JOB_STATE_PARTIALLY_SUCCEEDED", "completed"), ("JOB_STATE_FAILED", "failed"),
    ("JOB_STATE_UNSPECIFIED", "failed"), ("JOB_STATE_CANCELLING", "cancelling"),
    ("JOB_STATE_CANCELLED", "cancelled"), ("JOB_STATE_EXPIRED", "expired"),
])
async def test_job_states(state: str, status: str, offline: VertexProvider) -> None:
    provider = offline
    job = {"name": "projects/1/locations/l/batchPredictionJobs/2", "state": state,
           "createTime": "2024-10-16T19:33:59.153782Z", "endTime": "2024-10-16T19:40:02Z",
           "outputInfo": {"gcsOutputDirectory": "gs://b/out/d"},
           "completionStats": {"successfulCount": "2", "incompleteCount": "-1"}}
    batch = provider._batch(job)
    assert batch["status"] == status
    assert batch["created_at"] == 1729107239
    assert batch["request_counts"] == {"total": 2, "completed": 2, "failed": 0}
    ended = status in ("completed", "failed", "cancelled", "expired")
    assert batch["output_file_id"] == ("gs://b/out/d#output" if ended else None)
    assert batch["error_file_id"] is None  # no failures: no error file


# -- credentials ----------------------------------------------------------------------------------


async def test_token_is_cached_then_refreshed_before_expiry(
    google: Google, http: aiohttp.ClientSession
) -> None:
    now = [1_000_000.0]
    google.oauth.clock = lambda: now[0]
    provider = provider_for(http, google.params())
    provider.tokens.clock = lambda: now[0]
    for _ in range(3):
        with pytest.raises(UpstreamNotFound):
            await provider.retrieve_batch("1")
    assert google.oauth.grants == 1
    first = await provider.tokens.token()
    now[0] += 3599 - 200  # inside the refresh margin, still valid upstream
    with pytest.raises(UpstreamNotFound):
        await provider.retrieve_batch("1")
    assert google.oauth.grants == 2 and await provider.tokens.token() != first
    now[0] += 10_000  # long idle: the cached token is dead; a fresh one is fetched
    with pytest.raises(UpstreamNotFound):
        await provider.retrieve_batch("1")
    assert google.oauth.grants == 3


async def test_revoked_token_is_replaced_once(google: Google, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, google.params())
    with pytest.raises(UpstreamNotFound):
        await provider.retrieve_batch("1")
    google.oauth.revoke_all()
    with pytest.raises(UpstreamNotFound):  # 401, fresh token, then the real answer
        await provider.retrieve_batch("1")
    assert google.oauth.grants == 2
    assert [p for m, p in google.vertex.requests].count(
        "/v1/projects/my-project/locations/us-central1/batchPredictionJobs/1") == 3


async def test_credentials_as_a_key_file_and_bad_config(
    google: Google, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(google.key))
    params = google.params(vertex_credentials=str(path))
    del params["vertex_project"]  # taken from the key
    provider = provider_for(http, params)
    assert provider.project == "my-project"
    with pytest.raises(UpstreamNotFound):
        await provider.retrieve_batch("1")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"vertex_credentials": str(tmp_path / "nope.json")}, "cannot read"),
        ({"vertex_credentials": "{not json"}, "not valid JSON"),
        ({"vertex_credentials": json.dumps({"type": "authorized_user"})}, "service-account"),
        ({"vertex_credentials": json.dumps({**google.key, "private_key": "junk"})},
         "private_key"),
        ({"gcs_bucket_name": None}, "gcs_bucket_name"),
    ]
    for bad, message in cases:
        with pytest.raises(ConfigError, match=message):
            provider_for(http, google.params(**bad))
