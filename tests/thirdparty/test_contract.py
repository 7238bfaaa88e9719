"""The TinyBatch adapter against its fake: the inline conformance suite, plus what is
particular to it (a streamed create body, line mapping, error mapping)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from gateway import (
    InvalidRequestLine,
    ProviderContext,
    RequestCounts,
    Unsuitable,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.testing.conformance import (
    ContractEnv,
    InlineProviderContract,
    deployment_for,
    native_lines,
    read_results,
    run_batch,
    submission,
)
from gateway.testing.memory import MemoryState
from gateway.testing.servers import ServerThread

from .adapter import TinyBatchProvider, TinyParams
from .fake_tinybatch import FakeTinyBatch

KEY = "tb-key"


def request_lines(n: int = 4, fail_last: bool = True) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = [
        {
            "custom_id": f"req-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny",
                "messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": f"hi {i}"}],
            },
        }
        for i in range(n)
    ]
    if fail_last:
        lines[-1]["body"]["user"] = "fail"  # the fake's failure marker
    return lines


def provider_for(url: str, http: aiohttp.ClientSession, **params: Any) -> TinyBatchProvider:
    raw = {"model": "tinybatch/tiny-1", "api_base": url, "api_key": KEY, **params}
    deployment = deployment_for(TinyBatchProvider, raw, model_name="tiny")
    return TinyBatchProvider(deployment, ProviderContext(http=http, state=MemoryState()))


@pytest.fixture(scope="module")
def fake() -> FakeTinyBatch:
    return FakeTinyBatch(api_key=KEY)


@pytest.fixture(scope="module")
def server(fake: FakeTinyBatch) -> Iterator[ServerThread]:
    with ServerThread(fake.app) as server:
        yield server


@pytest.fixture
def provider(server: ServerThread, http: aiohttp.ClientSession) -> TinyBatchProvider:
    return provider_for(server.url, http)


class TestTinyBatchContract(InlineProviderContract):
    @pytest.fixture
    async def contract_env(
        self, server: ServerThread, http: aiohttp.ClientSession
    ) -> AsyncIterator[ContractEnv]:
        yield ContractEnv(
            provider=provider_for(server.url, http),
            lines=request_lines(),
            bad_provider=provider_for(server.url, http, api_key="tb-wrong"),
            missing_batch_id="tbatch_missing",
        )


# -- the adapter itself --------------------------------------------------------------------------


def test_params_are_checked_at_config_load() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="api_key is required"):
        deployment_for(TinyBatchProvider, {"model": "tinybatch/tiny-1"})
    with pytest.raises(msgspec.ValidationError, match=r"\$\.max_tokens"):
        deployment_for(TinyBatchProvider, {"model": "tinybatch/x", "api_key": "k",
                                           "max_tokens": 0})
    d = deployment_for(TinyBatchProvider, {"model": "tinybatch/x", "api_key": "k",
                                           "unknown": 1})
    assert isinstance(d.params, TinyParams) and d.params.max_tokens == 1024


async def test_lines_are_mapped(provider: TinyBatchProvider) -> None:
    line = request_lines(1, fail_last=False)[0]
    line["body"].update(max_tokens=50, stop="END", temperature=1.5)
    native = json.loads(native_lines(provider, [line]))
    assert native == {"custom_id": "req-0", "params": {
        "model": "tiny-1", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi 0"}],
        "stop_sequences": ["END"], "temperature": 1.0,
    }}


@pytest.mark.parametrize(("change", "field"), [
    ({"custom_id": "has spaces"}, "custom_id"),
    ({"body": {"model": "tiny", "n": 2, "messages": []}}, "body.n"),
    ({"body": {"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}},
     "body.messages[0].role"),
])
async def test_lines_it_cannot_take(
    provider: TinyBatchProvider, change: dict[str, Any], field: str
) -> None:
    line = {**request_lines(1)[0], **change}
    with pytest.raises(InvalidRequestLine) as info:
        native_lines(provider, [line])
    assert info.value.field == field


async def test_create_body_is_streamed(provider: TinyBatchProvider, fake: FakeTinyBatch) -> None:
    env = ContractEnv(provider=provider, lines=request_lines(3, fail_last=False))
    batch = await provider.submit(submission(env))
    assert fake.chunked[batch.id], "the create body was not streamed (no chunked encoding)"
    created = fake.created[batch.id]
    assert [r["custom_id"] for r in created["requests"]] == ["req-0", "req-1", "req-2"]
    assert {r["params"]["model"] for r in created["requests"]} == {"tiny-1"}
    method, path, headers = fake.requests[-1]
    assert (method, path, headers["x-api-key"]) == ("POST", "/v1/batches", KEY)


async def test_results_are_split_and_converted(provider: TinyBatchProvider) -> None:
    env = ContractEnv(provider=provider, lines=request_lines(3))
    batch = await run_batch(env)
    assert batch.status == "completed"
    assert batch.request_counts == RequestCounts(total=3, completed=2, failed=1)
    assert batch.completed_at is not None and batch.usage is None
    ok = await read_results(provider, batch.id, "output")
    bad = await read_results(provider, batch.id, "errors")
    assert sorted(x["custom_id"] for x in ok) == ["req-0", "req-1"]
    body = ok[0]["response"]["body"]
    assert body["choices"][0]["message"]["content"] == "echo:" + ok[0]["custom_id"]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] >= 1
    assert [x["custom_id"] for x in bad] == ["req-2"]
    assert bad[0]["response"]["status_code"] == 400
    assert bad[0]["response"]["body"]["error"]["type"] == "invalid_request_error"


async def test_cancelled_results_are_batch_cancelled(provider: TinyBatchProvider) -> None:
    env = ContractEnv(provider=provider, lines=request_lines(2, fail_last=False))
    created = await provider.submit(submission(env))
    assert (await provider.cancel(created.id)).status == "cancelling"
    done = await provider.poll(created.id)
    assert done.status == "cancelled" and done.output is None and done.error is not None
    lines = await read_results(provider, created.id, "errors")
    assert {x["error"]["code"] for x in lines} == {"batch_cancelled"}
    with pytest.raises(UpstreamConflict):
        await provider.cancel(created.id)


async def test_results_before_the_end_and_unsuitable(provider: TinyBatchProvider) -> None:
    env = ContractEnv(provider=provider, lines=request_lines(1))
    created = await provider.submit(submission(env))
    with pytest.raises(UpstreamConflict):
        await provider.results(created.id, "output")
    embeddings = [{**request_lines(1)[0], "url": "/v1/embeddings"}]
    with pytest.raises(Unsuitable):
        await provider.submit(submission(env, request_lines=embeddings))


async def test_error_mapping(provider: TinyBatchProvider, fake: FakeTinyBatch) -> None:
    fake.fail("GET", r"^/v1/batches/", 429, headers={"retry-after": "3"})
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.poll("tbatch_x")
    assert info.value.retry_after == 3.0
    for status in (500, 529):
        fake.fail("*", r"^/v1/", status)
        with pytest.raises(UpstreamUnavailable):
            await provider.poll("tbatch_x")
    with pytest.raises(UpstreamNotFound):
        await provider.cancel("tbatch_missing")
    fake.fail("POST", r"^/v1/batches$", 413)
    env = ContractEnv(provider=provider, lines=request_lines(1))
    with pytest.raises(UpstreamBadRequest):
        await provider.submit(submission(env))
