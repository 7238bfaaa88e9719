"""The adapter against a real GCS emulator, the fake token endpoint and the fake Vertex AI:
params, uploads (multipart and resumable), job mapping, results, token handling, failures."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from gateway_vertex import VertexParams, VertexProvider, gcs, labels
from gateway_vertex.gemini_request import to_gemini

from adapters.vertex.tests.vertex_support import (
    BUCKET,
    MODEL,
    PROJECT,
    Google,
    chunks,
    jsonl,
    native_jsonl,
    provider_for,
    put,
    read_lines,
    request_line,
    run,
    submission,
)
from gateway import (
    CHAT_COMPLETIONS,
    MapLines,
    ResultFile,
    Unsuitable,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.testing.conformance import deployment_for
from gateway.testing.fake_vertex import FakeGoogleOAuth


async def objects(provider: VertexProvider, prefix: str = "") -> list[str]:
    return [o["name"] for o in await provider.gcs.list(BUCKET, prefix)]


async def raw_object(provider: VertexProvider, uri: str) -> bytes:
    return b"".join([c async for c in gcs.read(await provider.gcs.open(gcs.GcsPath.parse(uri)))])


@pytest.fixture(scope="module")
def offline_key() -> dict[str, Any]:
    return FakeGoogleOAuth().add_account("http://127.0.0.1:9/token")


def offline_params(key: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": f"vertex_ai/{MODEL}", "vertex_credentials": json.dumps(key),
            "gcs_bucket_name": BUCKET, **extra}


@pytest.fixture
def offline(offline_key: dict[str, Any], http: aiohttp.ClientSession) -> VertexProvider:
    """A provider that never gets to talk to anything: for pure mapping checks."""
    return provider_for(http, offline_params(offline_key))


def convert(raw: dict[str, Any]) -> VertexParams:
    """As the config loader converts an entry's `litellm_params`."""
    return msgspec.convert(raw, type=VertexParams, strict=False)


# -- params ---------------------------------------------------------------------------------------


def test_params_defaults_and_what_construction_derives(
    offline_key: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    params = convert(offline_params(offline_key))
    assert params.vertex_credentials == offline_key  # loaded when the config loads
    assert params.vertex_project == "my-project"  # from the key
    assert (params.vertex_location, params.gcs_prefix, params.timeout) == (
        "us-central1", "batch-gateway", 60.0)
    assert params.max_requests_per_file == 200_000
    assert VertexProvider.identity == (
        "model", "api_base", "api_version", "vertex_project", "vertex_location")
    loose = convert(offline_params(offline_key, max_requests_per_file="1000", timeout="5"))
    assert (loose.max_requests_per_file, loose.timeout) == (1000, 5.0)  # as the loader converts
    provider = provider_for(http, offline_params(
        offline_key, vertex_location="global", gcs_bucket_name="gs://b-1/some/path/",
        max_requests_per_file=1000))
    assert provider.api_base == "https://aiplatform.googleapis.com"
    assert (provider.bucket, provider.prefix) == ("b-1", "some/path/batch-gateway")
    caps = provider.capabilities()
    assert caps.input == "file" and caps.endpoints == frozenset({CHAT_COMPLETIONS})
    assert caps.max_requests == 1000
    rewrite = provider.rewrite()
    assert isinstance(rewrite, MapLines)
    line = request_line("c-1")
    assert rewrite.to_native(json.loads(json.dumps(line))) == to_gemini(line, MODEL)


@pytest.mark.parametrize(("bad", "field", "message"), [
    ({"gcs_bucket_name": None}, "gcs_bucket_name", "Expected `str`, got `null`"),
    ({"gcs_bucket_name": "gs://"}, "gcs_bucket_name", "not a GCS bucket name"),
    ({"gcs_bucket_name": "Bad Bucket"}, "gcs_bucket_name", "not a GCS bucket name"),
    ({"vertex_credentials": "/nonexistent/key.json"}, "vertex_credentials", "cannot read"),
    ({"vertex_credentials": "{not json"}, "vertex_credentials", "not valid JSON"),
    ({"vertex_credentials": json.dumps({"type": "authorized_user"})}, "vertex_credentials",
     "service-account"),
    ({"vertex_credentials": 5}, "vertex_credentials", "Expected `str | object | null`"),
    ({"timeout": "x"}, "timeout", "Expected `float`, got `str`"),
    ({"timeout": 0}, "timeout", "Expected `float` >"),
    ({"vertex_location": "us central"}, "vertex_location", "Expected `str` matching"),
    ({"max_requests_per_file": 0}, "max_requests_per_file", "Expected `int` >= 1"),
])
def test_a_bad_entry_fails_conversion_naming_the_field(
    offline_key: dict[str, Any], bad: dict[str, Any], field: str, message: str
) -> None:
    raw = offline_params(offline_key, **bad)
    with pytest.raises(msgspec.ValidationError) as caught:
        convert(raw)
    text = str(caught.value)
    assert message in text
    # Types name the field in the path; cross-field checks in the message.
    assert f"`$.{field}`" in text or text.startswith(f"{field}: ")


def test_a_missing_field_or_credential_fails_conversion(
    offline_key: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    raw = offline_params(offline_key)
    del raw["gcs_bucket_name"]
    with pytest.raises(msgspec.ValidationError, match="missing required field `gcs_bucket_name`"):
        convert(raw)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    raw = offline_params(offline_key)
    del raw["vertex_credentials"]
    with pytest.raises(msgspec.ValidationError, match=r"^vertex_credentials: required"):
        convert(raw)
    unusable = offline_params({**offline_key, "private_key": "junk"})
    with pytest.raises(msgspec.ValidationError, match=r"^vertex_credentials: .*private_key"):
        convert(unusable)
    nameless = offline_params({k: v for k, v in offline_key.items() if k != "project_id"})
    with pytest.raises(msgspec.ValidationError, match=r"^vertex_project: required"):
        convert(nameless)
    assert convert({**nameless, "vertex_project": "elsewhere"}).vertex_project == "elsewhere"
    # The environment's key is the fallback, as for Google's own clients.
    path = tmp_path / "key.json"
    path.write_text(json.dumps(offline_key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    assert convert(raw).vertex_credentials == offline_key


def test_bad_entry_through_deployment_for(offline_key: dict[str, Any]) -> None:
    for bad, field in (({"timeout": "x"}, "timeout"), ({"gcs_bucket_name": ""}, "gcs_bucket_name"),
                       ({"vertex_credentials": "/nonexistent/key.json"}, "vertex_credentials")):
        with pytest.raises(msgspec.ValidationError, match=field):
            deployment_for(VertexProvider, offline_params(offline_key, **bad))


async def test_construction_does_no_io(offline_key: dict[str, Any]) -> None:
    # Nothing listens on these; a provider must still construct and answer the pure parts.
    async with aiohttp.ClientSession() as http:
        provider = provider_for(http, offline_params(
            offline_key, api_base="http://127.0.0.1:9", gcs_api_base="http://127.0.0.1:9"))
        assert provider.capabilities().max_requests == 200_000
        with pytest.raises(UpstreamUnavailable):  # the token endpoint is down: a 502
            await provider.poll("1")


# -- inputs ---------------------------------------------------------------------------------------


async def test_small_upload_is_one_multipart_request_of_gemini_lines(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    lines = [request_line(f"r{i}") for i in range(3)]
    data = native_jsonl(provider, lines)
    uri = await put(provider, data, "file-mine.jsonl")
    assert uri.startswith(f"gs://{BUCKET}/batch-gateway/in/file-mine-") and uri.endswith(".jsonl")
    stored = [json.loads(x) for x in (await raw_object(provider, uri)).splitlines()]
    assert stored == [to_gemini(line, MODEL) for line in lines]
    meta = await provider.gcs.get(gcs.GcsPath.parse(uri))
    assert meta["contentType"] == "application/jsonl" and int(meta["size"]) == len(data)
    assert not meta.get("metadata")  # no line count or other side data any more
    # Two copies of one gateway file (two deployments on one bucket) never collide.
    assert await put(provider, data, "file-mine.jsonl") != uri


async def test_large_upload_is_resumable_in_bounded_chunks(
    google: Google, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunk = gcs.CHUNK_QUANTUM
    provider = provider_for(http, google.params(gcs_upload_chunk_size=chunk))
    lines = [request_line(f"r{i}", "x" * 900) for i in range(1500)]  # ~1.6 MB
    data = native_jsonl(provider, lines)
    sent = 0
    persisted = [0]
    lag: list[int] = []
    put_chunk = gcs.Gcs._put

    async def spy(self: gcs.Gcs, session: str, body: bytes, offset: int,
                  total: int | None) -> Any:
        result = await put_chunk(self, session, body, offset, total)
        persisted.append(result if isinstance(result, int) else offset + len(body))
        return result

    monkeypatch.setattr(gcs.Gcs, "_put", spy)

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for start in range(0, len(data), 16 << 10):
            lag.append(sent - persisted[-1])  # what the adapter may be holding right now
            sent += min(16 << 10, len(data) - start)
            yield data[start : start + (16 << 10)]

    uri = await provider.put_input(stream(), "file-big.jsonl")
    assert len(persisted) > 5  # many chunks, not one body
    assert max(lag) <= chunk + (16 << 10)  # memory bounded by one chunk
    assert await raw_object(provider, uri) == data
    meta = await provider.gcs.get(gcs.GcsPath.parse(uri))
    assert int(meta["size"]) == len(data) and not meta.get("metadata")


async def test_missing_bucket_is_a_deployment_problem(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params(gcs_bucket_name="no-such-bucket/some/path"))
    assert provider.prefix == "some/path/batch-gateway"
    with pytest.raises(UpstreamUnavailable, match="no-such-bucket"):  # a 502, not a 404
        await put(provider, native_jsonl(provider, [request_line("a")]))


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
    uri = await put(provider, native_jsonl(provider, [request_line("a")]))
    assert (await provider.gcs.get(gcs.GcsPath.parse(uri)))["name"] in uri


async def test_delete_input(google: Google, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, google.params())
    uri = await put(provider, native_jsonl(provider, [request_line("a")]))
    assert await objects(provider, "batch-gateway/in/")
    await provider.delete_input(uri)
    assert await objects(provider) == []
    with pytest.raises(UpstreamNotFound):
        await provider.delete_input(uri)
    with pytest.raises(UpstreamNotFound):  # not a copy this adapter could have made
        await provider.delete_input("file-abc")


# -- batches --------------------------------------------------------------------------------------


async def test_job_round_trip_maps_state_counts_times_and_results(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    lines = [request_line(f"r{i}") for i in range(5)] + [request_line("bad", "please FAIL")]
    data = native_jsonl(provider, lines)
    uri = await put(provider, data)
    created = await provider.submit(submission(uri, data, batch_id="batch_round1",
                                               metadata={"team": "ml"}))
    job = google.vertex.jobs[created.id.rsplit("/", 1)[1]]
    assert created.id.startswith("projects/510528649030/locations/us-central1/")
    assert job["model"] == f"publishers/google/models/{MODEL}"
    assert job["displayName"] == "gateway-batch_round1"
    assert job["inputConfig"]["gcsSource"]["uris"] == [uri]
    assert job["outputConfig"]["gcsDestination"]["outputUriPrefix"] == \
        f"gs://{BUCKET}/batch-gateway/out/batch_round1"
    assert "labels" not in job  # metadata and totals stay with the gateway
    assert created.status == "validating"
    assert created.request_counts is not None and created.request_counts.total == 0
    assert created.output is None and created.error is None

    running = await provider.poll(created.id)
    assert running.status == "in_progress" and isinstance(running.in_progress_at, int)
    assert running.output is None
    done = await provider.poll(created.id)
    assert done.status == "completed" and isinstance(done.completed_at, int)
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 1)
    assert done.request_counts.total == 0  # unknown to the job; the core fills it
    assert done.output == ResultFile(bytes=None, created_at=done.completed_at)
    assert done.error == ResultFile(bytes=None, created_at=done.completed_at)
    assert done.errors is None
    output = await read_lines(provider, done.id, "output")
    errors = await read_lines(provider, done.id, "errors")
    assert sorted(x["custom_id"] for x in output) == [f"r{i}" for i in range(5)]
    assert [x["custom_id"] for x in errors] == ["bad"]
    # Line ids are stable between reads.
    assert await read_lines(provider, done.id, "output") == output


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
            outputs = {x["custom_id"]: x for x in await read_lines(provider, batch.id, "output")}
            errors = {x["custom_id"]: x for x in await read_lines(provider, batch.id, "errors")}
        finally:
            google.stop()
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
    batch = await provider.submit(submission(await put(provider, data), data))
    for _ in range(3):
        batch = await provider.poll(batch.id)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 2)
    errors = {x["custom_id"]: x["error"]["message"]
              for x in await read_lines(provider, batch.id, "errors")}
    assert set(errors) == {"bad-role", "raw-1"}
    assert "Unknown name \"messages\"" in errors["raw-1"] and "role" in errors["bad-role"]


async def test_results_raise_before_the_first_chunk(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    with pytest.raises(UpstreamNotFound):
        await provider.results("1", "output")  # no such job
    data = native_jsonl(provider, [request_line("a")])
    created = await provider.submit(submission(await put(provider, data), data))
    with pytest.raises(UpstreamNotFound):  # not finished: no output directory yet
        await provider.results(created.id, "output")
    await provider.poll(created.id)
    done = await provider.poll(created.id)
    assert done.status == "completed"
    directory = google.vertex.jobs[created.id.rsplit("/", 1)[1]]["outputInfo"][
        "gcsOutputDirectory"]
    for name in await objects(provider, directory.split("/", 3)[3] + "/"):
        await provider.gcs.delete(gcs.GcsPath(BUCKET, name))
    with pytest.raises(UpstreamNotFound):  # the predictions are gone (a lifecycle rule)
        await provider.results(created.id, "output")


async def test_cancel_and_cancel_after_the_end(google: Google, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, google.params())
    batch = await run(provider, [request_line("a")])
    with pytest.raises(UpstreamConflict):
        await provider.cancel(batch.id)
    data = native_jsonl(provider, [request_line("b")])
    created = await provider.submit(submission(await put(provider, data), data))
    # Cancel answers `{}`; the adapter then reads the job (which the fake moves one step on).
    assert (await provider.cancel(created.id)).status in ("cancelling", "cancelled")
    final = await provider.poll(created.id)
    assert final.status == "cancelled" and isinstance(final.cancelled_at, int)
    assert final.output is None and final.error is None


async def test_submit_failures(google: Google, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, google.params())
    with pytest.raises(UpstreamNotFound):  # the core then makes the copy again or moves on
        await provider.submit(submission(f"gs://{BUCKET}/batch-gateway/in/gone.jsonl"))
    data = native_jsonl(provider, [request_line("a")])
    uri = await put(provider, data)
    with pytest.raises(Unsuitable):
        await provider.submit(submission(uri, data, endpoint="/v1/embeddings"))
    # Metadata never goes upstream, so no size of it can be refused.
    big = {f"k{i}": "v" * 500 for i in range(16)}
    assert (await provider.submit(submission(uri, data, metadata=big))).status == "validating"
    google.vertex.fail_next("POST", 429)
    with pytest.raises(UpstreamRateLimited):
        await provider.submit(submission(uri, data))
    google.vertex.fail_next("GET", 503)
    with pytest.raises(UpstreamUnavailable):
        await provider.poll("123")


async def test_job_that_fails_reports_errors_without_internal_names(
    google: Google, http: aiohttp.ClientSession
) -> None:
    provider = provider_for(http, google.params())
    data = native_jsonl(provider, [request_line("a")])
    uri = await put(provider, data)
    created = await provider.submit(submission(uri, data))
    await provider.delete_input(uri)  # the input vanishes before the job reads it
    for _ in range(2):
        batch = await provider.poll(created.id)
    assert batch.status == "failed" and isinstance(batch.failed_at, int)
    assert batch.errors is not None
    (error,) = batch.errors
    assert error.code == "vertex_job_failed" and "Failed to read input" in str(error.message)
    assert BUCKET not in str(error.message)
    assert batch.output is None and batch.error is None


@pytest.mark.parametrize(("state", "status"), [
    ("JOB_STATE_QUEUED", "validating"), ("JOB_STATE_PENDING", "validating"),
    ("JOB_STATE_RUNNING", "in_progress"), ("JOB_STATE_PAUSED", "in_progress"),
    ("JOB_STATE_UPDATING", "in_progress"), ("JOB_STATE_SUCCEEDED", "completed"),
    ("JOB_STATE_PARTIALLY_SUCCEEDED", "completed"), ("JOB_STATE_FAILED", "failed"),
    ("JOB_STATE_UNSPECIFIED", "failed"), ("JOB_STATE_CANCELLING", "cancelling"),
    ("JOB_STATE_CANCELLED", "cancelled"), ("JOB_STATE_EXPIRED", "expired"),
])
async def test_job_states(state: str, status: str, offline: VertexProvider) -> None:
    job = {"name": "projects/1/locations/l/batchPredictionJobs/2", "state": state,
           "createTime": "2024-10-16T19:33:59.153782Z", "endTime": "2024-10-16T19:40:02Z",
           "outputInfo": {"gcsOutputDirectory": "gs://b/out/d"},
           "completionStats": {"successfulCount": "2", "incompleteCount": "-1"}}
    batch = offline._batch(job)
    assert batch.id == job["name"] and batch.status == status
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed,
            batch.request_counts.failed) == (0, 2, 0)
    ended = status in ("completed", "failed", "cancelled", "expired")
    assert batch.output == (ResultFile(bytes=None, created_at=1729107602) if ended else None)
    assert batch.error is None  # no failures: no error file
    if ended:
        assert getattr(batch, f"{status}_at") == 1729107602


async def test_a_job_without_stats_or_directory(offline: VertexProvider) -> None:
    job: dict[str, Any] = {"name": "projects/1/locations/l/batchPredictionJobs/3",
                           "state": "JOB_STATE_SUCCEEDED", "endTime": "2024-10-16T19:40:02Z"}
    assert offline._batch(job).output is None  # nothing to read without a directory
    job["outputInfo"] = {"gcsOutputDirectory": "gs://b/out/d"}
    assert offline._batch(job).output is not None  # no stats: the output may hold anything
    job["completionStats"] = {"failedCount": "3"}
    batch = offline._batch(job)
    assert batch.output is None and batch.error is not None


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
            await provider.poll("1")
    assert google.oauth.grants == 1
    first = await provider.tokens.token()
    now[0] += 3599 - 200  # inside the refresh margin, still valid upstream
    with pytest.raises(UpstreamNotFound):
        await provider.poll("1")
    assert google.oauth.grants == 2 and await provider.tokens.token() != first
    now[0] += 10_000  # long idle: the cached token is dead; a fresh one is fetched
    with pytest.raises(UpstreamNotFound):
        await provider.poll("1")
    assert google.oauth.grants == 3


async def test_revoked_token_is_replaced_once(google: Google, http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, google.params())
    with pytest.raises(UpstreamNotFound):
        await provider.poll("1")
    google.oauth.revoke_all()
    with pytest.raises(UpstreamNotFound):  # 401, fresh token, then the real answer
        await provider.poll("1")
    assert google.oauth.grants == 2
    assert [p for m, p in google.vertex.requests].count(
        "/v1/projects/my-project/locations/us-central1/batchPredictionJobs/1") == 3


async def test_credentials_as_a_key_file(
    google: Google, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(google.key))
    params = google.params(vertex_credentials=str(path))
    del params["vertex_project"]  # taken from the key
    provider = provider_for(http, params)
    assert provider.project == PROJECT
    with pytest.raises(UpstreamNotFound):
        await provider.poll("1")
    # A mapping (YAML can give one) works as well as a path or JSON text.
    provider = provider_for(http, google.params(vertex_credentials=google.key))
    data = native_jsonl(provider, [request_line("a")])
    assert (await provider.submit(submission(await put(provider, data), data))).id


async def test_refused_key_is_a_deployment_problem(
    google: Google, http: aiohttp.ClientSession
) -> None:
    stranger = google.oauth.add_account(google.token_uri, name="stranger")
    google.oauth.keys.pop(stranger["client_email"])  # a key the token endpoint never saw
    provider = provider_for(http, google.params(vertex_credentials=stranger))
    with pytest.raises(UpstreamUnavailable):
        await provider.put_input(chunks(b"{}\n"), "file-x.jsonl")
    with pytest.raises(UpstreamUnavailable):
        await provider.poll("1")
