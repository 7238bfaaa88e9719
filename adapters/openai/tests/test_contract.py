"""The OpenAI adapter against the fake OpenAI: the shared contract plus error mapping."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from gateway_openai import OpenAIParams, OpenAIProvider

from gateway import (
    Deployment,
    ProviderContext,
    RenameModel,
    RequestCounts,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.testing.conformance import (
    ContractEnv,
    FileProviderContract,
    byte_stream,
    deployment_for,
    native_lines,
    put_copy,
    read_results,
    submission,
)
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.memory import MemoryState
from gateway.testing.servers import ServerThread

KEY = "sk-upstream"
MODEL = "gpt-4o-mini"
GROUP = "gpt-4o-batch"


def request_lines(n: int = 3, **body: Any) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": GROUP, "messages": [{"role": "user", "content": f"hi {i}"}],
                     **body},
        }
        for i in range(n)
    ]


def with_failure(lines: list[dict[str, Any]], index: int = -1) -> list[dict[str, Any]]:
    """Mark one line so the fake OpenAI fails it (it lands in the error file)."""
    lines[index]["body"]["metadata"] = {"fake_fail": "true"}
    return lines


def deployment(url: str, **params: Any) -> Deployment:
    raw = {"model": f"openai/{MODEL}", "api_key": KEY, "api_base": url + "/v1", **params}
    return deployment_for(OpenAIProvider, raw, model_name=GROUP)


def make(deployment: Deployment, http: aiohttp.ClientSession) -> OpenAIProvider:
    return OpenAIProvider(deployment, ProviderContext(http=http, state=MemoryState()))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI(api_key=KEY, models=[MODEL])
    yield fake
    fake.close()


@pytest.fixture(scope="module")
def server(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app) as server:
        yield server


@pytest.fixture
def provider(server: ServerThread, http: aiohttp.ClientSession, fake: FakeOpenAI) -> OpenAIProvider:
    fake.clear_faults()
    return make(deployment(server.url), http)


def env_for(provider: OpenAIProvider, lines: list[dict[str, Any]]) -> ContractEnv:
    return ContractEnv(provider=provider, lines=lines)


class TestOpenAIContract(FileProviderContract):
    @pytest.fixture
    async def contract_env(
        self, server: ServerThread, http: aiohttp.ClientSession, fake: FakeOpenAI
    ) -> AsyncIterator[ContractEnv]:
        fake.clear_faults()
        yield ContractEnv(
            provider=make(deployment(server.url), http),
            lines=with_failure(request_lines(5)),
            bad_provider=make(deployment(server.url, api_key="sk-wrong"), http),
        )


class TestOpenAIContractNullFileIds(FileProviderContract):
    """The same contract when the upstream reports absent files as null instead of ""."""

    @pytest.fixture
    async def contract_env(self, http: aiohttp.ClientSession) -> AsyncIterator[ContractEnv]:
        fake = FakeOpenAI(api_key=KEY, empty_string_file_ids=False)
        with ServerThread(fake.app) as server:
            yield ContractEnv(
                provider=make(deployment(server.url), http),
                lines=request_lines(2),
                bad_provider=make(deployment(server.url, api_key="sk-wrong"), http),
            )
        fake.close()


# -- the adapter itself ------------------------------------------------------------------------


def test_params_and_rewrite(server: ServerThread) -> None:
    d = deployment(server.url, organization="org-1", max_requests_per_file=10)
    assert isinstance(d.params, OpenAIParams)
    assert (d.provider, d.model, d.params.organization) == ("openai", MODEL, "org-1")


async def test_rewrite_renames_model(provider: OpenAIProvider) -> None:
    assert provider.rewrite() == RenameModel(MODEL)
    assert provider.capabilities().input == "file"
    line = native_lines(provider, request_lines(1)).decode()
    assert f'"model":"{MODEL}"' in line


async def test_capabilities_follow_params(
    server: ServerThread, http: aiohttp.ClientSession
) -> None:
    p = make(deployment(server.url, max_requests_per_file=10), http)
    assert p.capabilities().max_requests == 10


async def test_sends_key_organization_and_project(
    server: ServerThread, http: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    p = make(deployment(server.url, organization="org-1", project="proj-1"), http)
    with pytest.raises(UpstreamNotFound):
        await p.poll("batch_nope")
    method, path, _, headers = fake.requests[-1]
    assert (method, path) == ("GET", "/v1/batches/batch_nope")
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["openai-organization"] == "org-1"
    assert headers["openai-project"] == "proj-1"


async def test_put_input_is_streamed_with_batch_purpose(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    data = native_lines(provider, request_lines(4))
    input_id = await provider.put_input(byte_stream(data, chunk=7), "file-abc.jsonl")
    assert fake.files[input_id]["purpose"] == "batch"
    assert fake.files[input_id]["filename"] == "file-abc.jsonl"
    assert fake.uploads[input_id].read_bytes() == data
    assert [line["body"]["model"] for line in fake.file_lines(input_id)] == [MODEL] * 4


async def test_submit_sends_endpoint_window_and_metadata(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    env = env_for(provider, request_lines(2))
    input_id = await put_copy(provider, env.lines, "file-meta")
    batch = await provider.submit(submission(env, input_id))
    upstream = fake.batches[batch.id]
    assert upstream["input_file_id"] == input_id
    assert upstream["endpoint"] == "/v1/chat/completions"
    assert upstream["metadata"] == {"suite": "conformance"}
    assert batch.status == "validating" and batch.output is None


async def test_partial_failures_land_in_error_file(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    lines = with_failure(request_lines(3), index=1)
    env = env_for(provider, lines)
    input_id = await put_copy(provider, lines, "file-partial")
    batch = await provider.submit(submission(env, input_id))
    assert fake.complete(batch.id)["status"] == "completed"
    got = await provider.poll(batch.id)
    assert got.request_counts == RequestCounts(total=3, completed=2, failed=1)
    assert got.output is not None and got.error is not None
    assert got.output.bytes == fake.files[fake.batches[batch.id]["output_file_id"]]["bytes"]
    assert got.usage is not None and got.usage.input_tokens
    ok = await read_results(provider, batch.id, "output")
    bad = await read_results(provider, batch.id, "errors")
    assert sorted(line["custom_id"] for line in ok) == ["req-0", "req-2"]
    assert [line["custom_id"] for line in bad] == ["req-1"]
    assert bad[0]["response"]["status_code"] == 400
    assert ok[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo:req-0"


async def test_absent_error_file_is_none_and_not_found(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    env = env_for(provider, request_lines(2))
    batch = await provider.submit(submission(env, await put_copy(provider, env.lines, "f")))
    fake.complete(batch.id)
    assert fake.batches[batch.id]["error_file_id"] == ""  # the quirk of real batches
    got = await provider.poll(batch.id)
    assert got.error is None and got.output is not None
    with pytest.raises(UpstreamNotFound):
        await provider.results(batch.id, "errors")


async def test_429_maps_to_rate_limited_with_retry_after(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    fake.fail("GET", r"^/v1/batches/", 429, headers={"Retry-After": "7"})
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.poll("batch_x")
    assert info.value.retry_after == 7.0
    fake.fail("POST", r"^/v1/batches$", 429)
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.submit(submission(env_for(provider, request_lines(1)), "file-x"))
    assert info.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_maps_to_unavailable(
    provider: OpenAIProvider, fake: FakeOpenAI, status: int
) -> None:
    fake.fail("*", r"^/v1/", status, times=-1)
    before = len(fake.requests)
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.poll("batch_x")
    assert info.value.upstream_status == status
    assert len(fake.requests) - before == 3  # a read is tried 1 + max_retries (2) times
    with pytest.raises(UpstreamUnavailable):
        await provider.results("batch_x", "output")
    with pytest.raises(UpstreamUnavailable):
        await provider.cancel("batch_x")
    with pytest.raises(UpstreamUnavailable):
        await provider.put_input(byte_stream(b'{"a":1}\n'), "x.jsonl")
    with pytest.raises(UpstreamUnavailable):
        await provider.delete_input("file-x")


async def test_non_json_error_body_still_maps(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    fake.fail("GET", r"^/v1/batches/", 502, body="<html>bad gateway</html>", times=-1)
    with pytest.raises(UpstreamUnavailable):
        await provider.poll("batch_x")


async def test_non_object_answer_is_unavailable(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    fake.fail("GET", r"^/v1/batches/", 200, body="<html>captive portal</html>")
    with pytest.raises(UpstreamUnavailable):
        await provider.poll("batch_x")


async def test_404_409_400_mapping(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    with pytest.raises(UpstreamNotFound):
        await provider.delete_input("file-missing")
    with pytest.raises(UpstreamNotFound):
        await provider.cancel("batch_missing")
    env = env_for(provider, request_lines(1))
    with pytest.raises(UpstreamBadRequest):
        await provider.submit(submission(env, "file-missing"))
    batch = await provider.submit(submission(env, await put_copy(provider, env.lines, "f")))
    fake.complete(batch.id)
    with pytest.raises(UpstreamConflict) as info:
        await provider.cancel(batch.id)
    assert "Cannot cancel a batch with status 'completed'." in info.value.detail


async def test_validation_failure_is_a_failed_batch(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    lines = request_lines(2)
    lines[1]["custom_id"] = "req-0"
    env = env_for(provider, lines)
    batch = await provider.submit(submission(env, await put_copy(provider, lines, "f")))
    got = await provider.poll(batch.id)
    assert got.status == "failed"
    assert got.errors is not None
    assert (got.errors[0].code, got.errors[0].line) == ("duplicate_custom_id", 2)
    assert got.output is None and got.error is None


async def test_cancelled_batch_reports_its_error_file(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    env = env_for(provider, request_lines(2))
    batch = await provider.submit(submission(env, await put_copy(provider, env.lines, "f")))
    await provider.poll(batch.id)  # validated: in_progress
    cancelling = await provider.cancel(batch.id)
    assert cancelling.status == "cancelling"
    done = await provider.poll(batch.id)
    assert done.status == "cancelled" and done.error is not None
    lines = await read_results(provider, batch.id, "errors")
    assert {line["error"]["code"] for line in lines} == {"batch_cancelled"}


async def test_timeout_maps_to_unavailable(
    server: ServerThread, http: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.clear_faults()
    p = make(deployment(server.url, timeout=0.3), http)
    env = env_for(p, request_lines(1))
    batch = await p.submit(submission(env, await put_copy(p, env.lines, "f")))
    fake.complete(batch.id)
    fake.stall("GET", r"^/v1/batches/", 2.0, times=3)
    with pytest.raises(UpstreamUnavailable):
        await p.poll(batch.id)
    fake.clear_faults()
    fake.stall("GET", r"/content$", 2.0, times=3)
    with pytest.raises(UpstreamUnavailable):
        await p.results(batch.id, "output")


async def test_connection_refused_maps_to_unavailable(http: aiohttp.ClientSession) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    p = make(deployment(f"http://127.0.0.1:{port}"), http)
    with pytest.raises(UpstreamUnavailable):
        await p.poll("batch_x")
    with pytest.raises(UpstreamUnavailable):
        await p.results("batch_x", "output")
    with pytest.raises(UpstreamUnavailable):
        await p.put_input(byte_stream(b'{"a":1}\n'), "x.jsonl")
    with pytest.raises(UpstreamUnavailable):
        await p.submit(submission(env_for(p, request_lines(1)), "file-x"))


async def test_a_failed_read_is_tried_again_a_write_is_not(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    env = env_for(provider, request_lines(1))
    batch = await provider.submit(submission(env, await put_copy(provider, env.lines, "f")))
    fake.fail("GET", r"^/v1/batches/", 503, times=1)
    assert (await provider.poll(batch.id)).id == batch.id  # the second try answered
    fake.fail("GET", r"^/v1/batches/", 429, headers={"Retry-After": "0.05"}, times=2)
    assert (await provider.poll(batch.id)).id == batch.id  # waited as told, then answered
    creates = sum(1 for r in fake.requests if r[:2] == ("POST", "/v1/batches"))
    fake.fail("POST", r"^/v1/batches$", 503, times=1)
    with pytest.raises(UpstreamUnavailable):
        await provider.submit(submission(env, "file-x"))
    assert sum(1 for r in fake.requests if r[:2] == ("POST", "/v1/batches")) == creates + 1
