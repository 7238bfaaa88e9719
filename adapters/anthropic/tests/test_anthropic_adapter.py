"""The adapter against FakeAnthropic: the streamed create body, re-keyed custom_ids, status
and counts, results and usage, cancel and delete, and the typed errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import msgspec
import pytest
from gateway_anthropic import AnthropicProvider
from gateway_anthropic.provider import ids_key, usage_key
from gateway_anthropic.testing import FakeAnthropic
from gateway_anthropic.wire import MessageBatch, status_of, to_batch

from adapters.anthropic.tests.anthropic_support import (
    KEY,
    MODEL,
    Upstream,
    provider_for,
    request_line,
)
from gateway import (
    CHAT_COMPLETIONS,
    Capabilities,
    RequestCounts,
    Unsuitable,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
    Usage,
)
from gateway.testing.conformance import (
    ContractEnv,
    read_results,
    run_batch,
    submission,
    wait_for_batch,
)
from gateway.testing.memory import MemoryState

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"city": {"type": "string"}}}}}


def env_for(provider: AnthropicProvider, lines: list[dict[str, Any]]) -> ContractEnv:
    return ContractEnv(provider=provider, lines=lines)


async def test_create_body_is_streamed_with_the_right_headers(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    lines = [request_line("req-0"), request_line("needs re-key #1"), request_line("req-2")]
    batch = await provider.submit(submission(env_for(provider, lines)))
    assert batch.status == "in_progress" and batch.id.startswith("msgbatch_")
    assert batch.request_counts == RequestCounts(total=3, completed=0, failed=0)
    assert batch.in_progress_at and batch.expires_at and batch.output is None
    assert fake.chunked[batch.id], "the create body was not streamed (no chunked encoding)"
    items = fake.created[batch.id]["requests"]
    assert [set(item) for item in items] == [{"custom_id", "params"}] * 3  # no private key
    assert items[0]["custom_id"] == "req-0" and items[2]["custom_id"] == "req-2"
    assert items[1]["custom_id"].startswith("gw-")
    assert items[0]["params"] == {"model": MODEL, "max_tokens": 100, "system": "Be brief.",
                                  "messages": [{"role": "user", "content": "Say hello to req-0"}]}
    (create,) = fake.received("POST", r"^/v1/messages/batches$")[-1:]
    headers = create.headers
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == "2023-06-01"
    assert headers["content-type"] == "application/json" and "anthropic-beta" not in headers
    # The re-keyed id is kept for the results, in the deployment's state.
    state = provider.ctx.state
    assert isinstance(state, MemoryState)
    assert set(state.values) == {ids_key(batch.id)}


async def test_version_and_beta_headers(upstream: Upstream, http: aiohttp.ClientSession,
                                        fake: FakeAnthropic) -> None:
    provider = provider_for(upstream.url, http, anthropic_version="2026-10-21",
                            anthropic_beta="files-api-2025-04-14")
    batch = await provider.submit(submission(env_for(provider, [request_line("v")])))
    create = fake.received("POST", r"^/v1/messages/batches$")[-1]
    assert create.headers["anthropic-version"] == "2026-10-21"
    assert create.headers["anthropic-beta"] == "files-api-2025-04-14"
    assert (await wait_for_batch(env_for(provider, []), batch.id)).status == "completed"


async def test_results_come_back_under_the_clients_ids(provider: AnthropicProvider) -> None:
    lines = [request_line("plain"), request_line("with space"), request_line("ü" * 70),
             request_line("gw-" + "a" * 40), request_line("bad one", user="fail")]
    batch = await run_batch(env_for(provider, lines))
    assert batch.status == "completed"
    assert batch.request_counts == RequestCounts(total=5, completed=4, failed=1)
    ok = await read_results(provider, batch.id, "output")
    bad = await read_results(provider, batch.id, "errors")
    assert sorted(x["custom_id"] for x in ok) == sorted(
        ["plain", "with space", "ü" * 70, "gw-" + "a" * 40])
    for line in ok:  # each answer is its own request's
        message = line["response"]["body"]["choices"][0]["message"]
        assert message["content"] == f"echo: Say hello to {line['custom_id']}"
    assert [x["custom_id"] for x in bad] == ["bad one"]
    assert bad[0]["response"]["status_code"] == 400
    assert bad[0]["response"]["body"]["error"]["type"] == "invalid_request_error"
    again = await read_results(provider, batch.id, "output")
    assert [x["id"] for x in again] == [x["id"] for x in ok]  # stable line ids


async def test_no_state_without_rekeyed_ids(upstream: Upstream,
                                            http: aiohttp.ClientSession) -> None:
    state = MemoryState()
    provider = provider_for(upstream.url, http, state=state)
    batch = await run_batch(env_for(provider, [request_line("a"), request_line("b")]))
    assert ids_key(batch.id) not in state.values
    assert usage_key(batch.id) in state.values  # the tokens, summed once


async def test_chat_completion_bodies(provider: AnthropicProvider) -> None:
    schema = {"type": "object", "properties": {"echo": {"type": "string"}},
              "additionalProperties": False}
    lines = [
        request_line("text"),
        request_line("tool", "Weather in Oslo?", tools=[WEATHER], tool_choice="required"),
        request_line("stop", "one STOP two", stop="STOP"),
        request_line("long", "x" * 200, max_tokens=5),
        request_line("json", "hi", response_format={
            "type": "json_schema", "json_schema": {"name": "e", "schema": schema}}),
    ]
    batch = await run_batch(env_for(provider, lines))
    ok = {x["custom_id"]: x["response"]["body"]
          for x in await read_results(provider, batch.id, "output")}
    text = ok["text"]
    assert text["object"] == "chat.completion" and text["model"] == MODEL
    assert text["id"].startswith("msg_") and text["created"] == batch.completed_at
    choice = text["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    usage = text["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    tool = ok["tool"]["choices"][0]
    assert tool["finish_reason"] == "tool_calls" and tool["message"]["content"] is None
    (call,) = tool["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"echo": "Weather in Oslo?"}
    assert ok["stop"]["choices"][0]["message"]["content"] == "echo: one "
    assert ok["stop"]["choices"][0]["finish_reason"] == "stop"
    assert ok["long"]["choices"][0]["finish_reason"] == "length"
    assert json.loads(ok["json"]["choices"][0]["message"]["content"]) == {"echo": "hi"}


async def test_usage_is_summed_once_when_the_batch_ends(
    upstream: Upstream, http: aiohttp.ClientSession, fake: FakeAnthropic
) -> None:
    state = MemoryState()
    provider = provider_for(upstream.url, http, state=state)
    lines = [request_line(f"u{i}", "word " * i) for i in range(1, 5)]
    lines.append(request_line("unbilled", user="fail"))
    batch = await run_batch(env_for(provider, lines))
    ok = await read_results(provider, batch.id, "output")
    prompt = sum(x["response"]["body"]["usage"]["prompt_tokens"] for x in ok)
    completion = sum(x["response"]["body"]["usage"]["completion_tokens"] for x in ok)
    assert batch.usage == Usage(input_tokens=prompt, output_tokens=completion,
                                total_tokens=prompt + completion)
    reads = len(fake.received("GET", rf"/{batch.id}/results$"))
    assert (await provider.poll(batch.id)).usage == batch.usage
    assert len(fake.received("GET", rf"/{batch.id}/results$")) == reads, "summed again"
    off = provider_for(upstream.url, http, usage_from_results=False)
    assert (await off.poll(batch.id)).usage is None


async def test_expired_batch(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    lines = [request_line(f"e{i}") for i in range(3)]
    created = await provider.submit(submission(env_for(provider, lines)))
    fake.expire(created.id, processed=1)
    batch = await provider.poll(created.id)
    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.completed_at is None
    assert batch.request_counts == RequestCounts(total=3, completed=1, failed=2)
    assert batch.output is not None and batch.error is not None
    assert [x["custom_id"] for x in await read_results(provider, created.id, "output")] == ["e0"]
    errors = await read_results(provider, created.id, "errors")
    assert sorted(x["custom_id"] for x in errors) == ["e1", "e2"]
    assert {x["error"]["code"] for x in errors} == {"batch_expired"}
    assert all(x["response"] is None for x in errors)


async def test_cancel(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    lines = [request_line("c0"), request_line("c 1")]
    created = await provider.submit(submission(env_for(provider, lines)))
    cancelling = await provider.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = await provider.poll(created.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.output is None and done.error is not None
    assert done.usage == Usage(input_tokens=0, output_tokens=0, total_tokens=0)
    errors = await read_results(provider, created.id, "errors")
    assert sorted(x["custom_id"] for x in errors) == ["c 1", "c0"]
    assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
    with pytest.raises(UpstreamConflict):
        await provider.cancel(created.id)


async def test_cancel_that_came_too_late_completes(
    provider: AnthropicProvider, fake: FakeAnthropic
) -> None:
    lines = [request_line("l0"), request_line("l1")]
    created = await provider.submit(submission(env_for(provider, lines)))
    fake.in_flight_on_cancel = 2  # both were already running: nothing left to cancel
    try:
        await provider.cancel(created.id)
        done = await provider.poll(created.id)
    finally:
        fake.in_flight_on_cancel = 0
    assert done.status == "completed" and done.cancelling_at is not None
    assert done.request_counts == RequestCounts(total=2, completed=2, failed=0)


@pytest.mark.parametrize(("counts", "status"), [
    ({"succeeded": 2}, "completed"),
    ({"succeeded": 1, "errored": 1}, "completed"),
    ({"errored": 2}, "completed"),
    ({"succeeded": 1, "canceled": 1}, "cancelled"),
    ({"canceled": 1, "expired": 1}, "cancelled"),
    ({"succeeded": 1, "expired": 1}, "expired"),
    ({"expired": 2}, "expired"),
])
def test_ended_status_by_counts(counts: dict[str, int], status: str) -> None:
    raw = {"id": "msgbatch_x", "processing_status": "ended", "request_counts": counts,
           "created_at": "2026-11-30T05:51:45.616966Z", "ended_at": "2026-11-30T06:00:00Z",
           "expires_at": "2026-12-01T05:51:45.616966Z"}
    batch = msgspec.convert(raw, type=MessageBatch)
    assert status_of(batch) == status
    typed = to_batch(batch)
    created = datetime(2026, 11, 30, 5, 51, 45, tzinfo=UTC).timestamp()
    assert typed.status == status and typed.in_progress_at == created
    assert typed.request_counts is not None and typed.request_counts.total == 2


async def test_results_before_the_end_and_after_archival(http: aiohttp.ClientSession) -> None:
    slow = Upstream(processing_seconds=3600)  # retrieves do not move it on
    try:
        await results_before_the_end_and_after_archival(provider_for(slow.url, http), slow.fake)
    finally:
        slow.stop()


async def results_before_the_end_and_after_archival(provider: AnthropicProvider,
                                                    fake: FakeAnthropic) -> None:
    env = env_for(provider, [request_line("r0")])
    created = await provider.submit(submission(env))
    assert (await provider.poll(created.id)).status == "in_progress"
    with pytest.raises(UpstreamConflict):
        await provider.results(created.id, "output")
    fake.finish(created.id)
    fake.archive(created.id)  # archived before anyone saw it end: tokens can't be had
    done = await provider.poll(created.id)
    assert done.status == "completed" and done.usage is None
    with pytest.raises(UpstreamNotFound):
        await provider.results(created.id, "output")


async def test_delete_batch(provider: AnthropicProvider) -> None:
    env = env_for(provider, [request_line("d0"), request_line("d 1")])
    created = await provider.submit(submission(env))
    with pytest.raises(UpstreamConflict):
        await provider.delete_batch(created.id)  # only once ended
    await wait_for_batch(env, created.id)
    await provider.delete_batch(created.id)
    state = provider.ctx.state
    assert isinstance(state, MemoryState) and not state.values
    with pytest.raises(UpstreamNotFound):
        await provider.poll(created.id)
    with pytest.raises(UpstreamNotFound):
        await provider.delete_batch(created.id)


async def test_submit_only_chat_completions(provider: AnthropicProvider,
                                            fake: FakeAnthropic) -> None:
    before = len(fake.requests)
    lines = [{**request_line("e"), "url": "/v1/embeddings"}]
    with pytest.raises(Unsuitable):
        await provider.submit(submission(env_for(provider, lines)))
    assert len(fake.requests) == before


async def test_state_failure_cancels_the_new_batch(
    upstream: Upstream, http: aiohttp.ClientSession, fake: FakeAnthropic
) -> None:
    class BrokenState(MemoryState):
        async def put(self, key: str, value: bytes) -> None:
            raise OSError("database down")

    provider = provider_for(upstream.url, http, state=BrokenState())
    with pytest.raises(OSError, match="database down"):
        await provider.submit(submission(env_for(provider, [request_line("needs rekey")])))
    cancel = fake.received("POST", r"/cancel$")[-1]
    batch_id = cancel.path.split("/")[-2]
    assert fake.batches[batch_id].status in ("canceling", "ended")


def test_results_url_is_followed_only_on_api_base(upstream: Upstream) -> None:
    provider = provider_for("https://api.anthropic.com", None)  # type: ignore[arg-type]
    wire = MessageBatch(id="msgbatch_1", processing_status="ended",
                        results_url="https://api.anthropic.com/v1/messages/batches/msgbatch_1/"
                                    "results?token=x")
    assert provider.results_url(wire).endswith("results?token=x")
    wire.results_url = "https://elsewhere.example/v1/messages/batches/msgbatch_1/results"
    assert provider.results_url(wire) == (
        "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results")
    wire.results_url = "/v1/messages/batches/msgbatch_1/results"
    assert provider.results_url(wire) == (
        "https://api.anthropic.com/v1/messages/batches/msgbatch_1/results")


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error"), [
    (400, UpstreamBadRequest), (401, UpstreamUnavailable), (402, UpstreamUnavailable),
    (403, UpstreamUnavailable), (404, UpstreamNotFound), (409, UpstreamConflict),
    (413, UpstreamBadRequest), (429, UpstreamRateLimited), (500, UpstreamUnavailable),
    (504, UpstreamUnavailable), (529, UpstreamUnavailable),
])
async def test_error_mapping(provider: AnthropicProvider, fake: FakeAnthropic, status: int,
                             error: type[Exception]) -> None:
    fake.fail("GET", r"^/v1/messages/batches/", status, headers={"retry-after": "3"})
    with pytest.raises(error) as info:
        await provider.poll("msgbatch_any")
    if isinstance(info.value, UpstreamRateLimited):
        assert info.value.retry_after == 3.0


async def test_create_refusals(provider: AnthropicProvider, fake: FakeAnthropic) -> None:
    env = env_for(provider, [request_line("x")])
    fake.fail("POST", r"^/v1/messages/batches$", 413, raw=b"<html>413 Too Large</html>")
    with pytest.raises(UpstreamBadRequest):
        await provider.submit(submission(env))
    fake.fail("POST", r"^/v1/messages/batches$", 429, headers={"retry-after": "7"})
    with pytest.raises(UpstreamRateLimited) as info:
        await provider.submit(submission(env))
    assert info.value.retry_after == 7.0
    fake.fail("POST", r"^/v1/messages/batches$", 529)
    with pytest.raises(UpstreamUnavailable):
        await provider.submit(submission(env))


async def test_refused_credential_and_unreachable(upstream: Upstream,
                                                  http: aiohttp.ClientSession) -> None:
    bad = provider_for(upstream.url, http, api_key="sk-ant-nope")
    with pytest.raises(UpstreamUnavailable) as info:
        await bad.submit(submission(env_for(bad, [request_line("x")])))
    assert "authentication_error" in info.value.detail
    gone = provider_for("http://127.0.0.1:9", http, timeout=2)
    with pytest.raises(UpstreamUnavailable):
        await gone.poll("msgbatch_x")


async def test_answer_that_is_not_a_batch(provider: AnthropicProvider,
                                          fake: FakeAnthropic) -> None:
    fake.fail("GET", r"^/v1/messages/batches/", 200, raw=b'{"hello": "world"}')
    with pytest.raises(UpstreamUnavailable):
        await provider.poll("msgbatch_x")


def test_declarations(upstream: Upstream) -> None:
    provider = provider_for(upstream.url, None)  # type: ignore[arg-type]
    assert AnthropicProvider.name == "anthropic"
    assert AnthropicProvider.identity == ("model", "api_base")
    assert provider.capabilities() == Capabilities(
        input="inline", endpoints=frozenset({CHAT_COMPLETIONS}), max_requests=100_000,
        max_bytes=256 << 20, cancel=True, delete=True)
    small = provider_for(upstream.url, None, max_requests_per_batch=10,  # type: ignore[arg-type]
                         max_bytes=1 << 20)
    caps = small.capabilities()
    assert (caps.max_requests, caps.max_bytes, caps.min_requests) == (10, 1 << 20, 1)
