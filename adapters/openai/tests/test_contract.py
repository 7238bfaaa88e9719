"""The OpenAI adapter against the fake OpenAI: the shared contract plus error mapping."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from gateway_openai import OpenAIProvider

from gateway.errors import (
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.provider import Deployment
from gateway.testing.conformance import (
    ContractEnv,
    ProviderContract,
    byte_stream,
    output_lines,
    prepared_jsonl,
    upload_lines,
)
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import ServerThread

KEY = "sk-upstream"
MODEL = "gpt-4o-mini"


def request_lines(n: int = 3, **body: Any) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-batch", "messages": [{"role": "user", "content": f"hi {i}"}],
                     **body},
        }
        for i in range(n)
    ]


def deployment(url: str, **params: Any) -> Deployment:
    return Deployment(
        id="openai-1",
        model_name="gpt-4o-batch",
        provider="openai",
        model=MODEL,
        params={"api_key": KEY, "api_base": url + "/v1", **params},
    )


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
    return OpenAIProvider(deployment(server.url), http)


class TestOpenAIContract(ProviderContract):
    @pytest.fixture
    async def contract_env(
        self, server: ServerThread, http: aiohttp.ClientSession, fake: FakeOpenAI
    ) -> AsyncIterator[ContractEnv]:
        fake.clear_faults()
        yield ContractEnv(
            provider=OpenAIProvider(deployment(server.url), http),
            lines=request_lines(5),
            bad_provider=OpenAIProvider(deployment(server.url, api_key="sk-wrong"), http),
        )


class TestOpenAIContractNullFileIds(ProviderContract):
    """The same contract when the upstream reports absent files as null instead of ""."""

    @pytest.fixture
    async def contract_env(self, http: aiohttp.ClientSession) -> AsyncIterator[ContractEnv]:
        fake = FakeOpenAI(api_key=KEY, empty_string_file_ids=False)
        with ServerThread(fake.app) as server:
            yield ContractEnv(
                provider=OpenAIProvider(deployment(server.url), http),
                lines=request_lines(2),
                bad_provider=OpenAIProvider(deployment(server.url, api_key="sk-wrong"), http),
            )
        fake.close()


# -- the adapter itself ------------------------------------------------------------------------


async def test_prepare_line_rewrites_model(provider: OpenAIProvider) -> None:
    line = provider.prepare_line(request_lines(1)[0])
    assert line["body"]["model"] == MODEL


async def test_sends_key_organization_and_project(
    server: ServerThread, http: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    p = OpenAIProvider(deployment(server.url, organization="org-1", project="proj-1"), http)
    with pytest.raises(UpstreamNotFound):
        await p.retrieve_file("file-nope")
    method, path, _, headers = fake.requests[-1]
    assert (method, path) == ("GET", "/v1/files/file-nope")
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["openai-organization"] == "org-1"
    assert headers["openai-project"] == "proj-1"


async def test_upload_is_streamed_with_batch_purpose(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    lines = request_lines(4)
    data = prepared_jsonl(provider, lines)
    uploaded = await provider.upload_file(byte_stream(data, chunk=7), "in.jsonl")
    assert fake.files[uploaded.id]["purpose"] == "batch"
    assert fake.files[uploaded.id]["filename"] == "in.jsonl"
    assert fake.uploads[uploaded.id].read_bytes() == data
    assert [line["body"]["model"] for line in fake.file_lines(uploaded.id)] == [MODEL] * 4


async def test_partial_failures_land_in_error_file(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    lines = request_lines(3)
    lines[1]["body"]["metadata"] = {"fake_fail": "true"}
    env = ContractEnv(provider=provider, lines=lines)
    uploaded, _ = await upload_lines(env)
    batch = await provider.create_batch(uploaded.id, "/v1/chat/completions", "24h", None)
    done = fake.complete(batch["id"])
    assert done["status"] == "completed"
    got = await provider.retrieve_batch(batch["id"])
    assert got["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    ok = await output_lines(provider, got["output_file_id"])
    bad = await output_lines(provider, got["error_file_id"])
    assert sorted(line["custom_id"] for line in ok) == ["req-0", "req-2"]
    assert [line["custom_id"] for line in bad] == ["req-1"]
    assert bad[0]["response"]["status_code"] == 400
    assert ok[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo:req-0"


async def test_429_maps_to_rate_limited_with_retry_after(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    fake.fail("GET", r"^/v1/batches/", 429, headers={"Retry-After": "7"})
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.retrieve_batch("batch_x")
    assert info.value.retry_after == 7.0
    fake.fail("POST", r"^/v1/batches$", 429)
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.create_batch("file-x", "/v1/chat/completions", "24h", None)
    assert info.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_5xx_maps_to_unavailable(
    provider: OpenAIProvider, fake: FakeOpenAI, status: int
) -> None:
    fake.fail("*", r"^/v1/", status, times=4)
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.retrieve_file("file-x")
    assert info.value.upstream_status == status
    with pytest.raises(UpstreamUnavailable):
        await provider.file_content("file-x")
    with pytest.raises(UpstreamUnavailable):
        await provider.cancel_batch("batch_x")
    with pytest.raises(UpstreamUnavailable):
        await provider.upload_file(byte_stream(b'{"a":1}\n'), "x.jsonl")


async def test_non_json_error_body_still_maps(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    fake.fail("GET", r"^/v1/files/", 502, body="<html>bad gateway</html>")
    with pytest.raises(UpstreamUnavailable):
        await provider.retrieve_file("file-x")


async def test_404_409_400_mapping(provider: OpenAIProvider, fake: FakeOpenAI) -> None:
    with pytest.raises(UpstreamNotFound):
        await provider.delete_file("file-missing")
    with pytest.raises(UpstreamNotFound):
        await provider.cancel_batch("batch_missing")
    with pytest.raises(UpstreamBadRequest):
        await provider.create_batch("file-missing", "/v1/chat/completions", "24h", None)
    uploaded, _ = await upload_lines(ContractEnv(provider=provider, lines=request_lines(1)))
    batch = await provider.create_batch(uploaded.id, "/v1/chat/completions", "24h", None)
    fake.complete(batch["id"])
    with pytest.raises(UpstreamConflict) as info:
        await provider.cancel_batch(batch["id"])
    assert "Cannot cancel a batch with status 'completed'." in info.value.detail


async def test_validation_failure_is_a_failed_batch(
    provider: OpenAIProvider, fake: FakeOpenAI
) -> None:
    lines = request_lines(2)
    lines[1]["custom_id"] = "req-0"
    uploaded, _ = await upload_lines(ContractEnv(provider=provider, lines=lines))
    batch = await provider.create_batch(uploaded.id, "/v1/chat/completions", "24h", None)
    got = await provider.retrieve_batch(batch["id"])
    assert got["status"] == "failed"
    assert got["errors"]["data"][0]["code"] == "duplicate_custom_id"
    assert got["errors"]["data"][0]["line"] == 2


async def test_timeout_maps_to_unavailable(
    server: ServerThread, http: aiohttp.ClientSession, fake: FakeOpenAI
) -> None:
    fake.clear_faults()
    p = OpenAIProvider(deployment(server.url, timeout=0.3), http)
    fake.stall("GET", r"^/v1/batches/", 2.0)
    with pytest.raises(UpstreamUnavailable):
        await p.retrieve_batch("batch_slow")
    fake.stall("GET", r"/content$", 2.0)
    with pytest.raises(UpstreamUnavailable):
        await p.file_content("file-slow")


async def test_connection_refused_maps_to_unavailable(http: aiohttp.ClientSession) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    p = OpenAIProvider(deployment(f"http://127.0.0.1:{port}"), http)
    with pytest.raises(UpstreamUnavailable):
        await p.retrieve_file("file-x")
    with pytest.raises(UpstreamUnavailable):
        await p.file_content("file-x")
    with pytest.raises(UpstreamUnavailable):
        await p.upload_file(byte_stream(b'{"a":1}\n'), "x.jsonl")
    with pytest.raises(UpstreamUnavailable):
        await p.create_batch("file-x", "/v1/chat/completions", "24h", None)
