"""End to end: the installed `anthropic` adapter inside a real gateway, driven with the OpenAI
SDK, in front of FakeAnthropic (and a fake OpenAI for a mixed model group): what the client
gets, and what Anthropic received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from gateway_anthropic import native_custom_id

from adapters.anthropic.tests.anthropic_support import (
    GROUP,
    MODEL,
    Upstream,
    jsonl,
    raw_params,
    request_line,
)
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import RunningGateway, ServerThread, gateway_config

STRICT = "claude-no-default"  # an Anthropic group without a max_tokens default
MIXED = "mixed-batch"  # an OpenAI and an Anthropic deployment
TERMINAL = {"completed", "failed", "expired", "cancelled"}
CHAT = "/v1/chat/completions"


class OpenAIUpstream:
    def __init__(self) -> None:
        self.fake = FakeOpenAI(api_key="sk-upstream", models={"gpt-4o-mini"})
        self.server = ServerThread(self.fake.app).start()

    def params(self) -> dict[str, Any]:
        return {"model": "openai/gpt-4o-mini", "api_base": self.server.url + "/v1",
                "api_key": "sk-upstream", "timeout": 10}

    def stop(self) -> None:
        self.server.stop()
        self.fake.close()


@pytest.fixture
def anthropic_up() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.stop()


@pytest.fixture
def openai_up() -> Iterator[OpenAIUpstream]:
    up = OpenAIUpstream()
    yield up
    up.stop()


@pytest.fixture
def gw(anthropic_up: Upstream, openai_up: OpenAIUpstream,
       database_url: str) -> Iterator[RunningGateway]:
    config = gateway_config([
        (GROUP, raw_params(anthropic_up.url, max_tokens=64)),
        (STRICT, raw_params(anthropic_up.url)),
        (MIXED, openai_up.params()),
        (MIXED, raw_params(anthropic_up.url, max_tokens=64)),
    ], database_url)
    config["general_settings"]["batch_poll_interval"] = 0
    with RunningGateway(config, [GROUP, STRICT, MIXED]) as running:
        yield running


def upload(client: openai.OpenAI, lines: list[dict[str, Any]], group: str = GROUP) -> str:
    return client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch",
                               extra_body={"target_model_names": group}).id


def create(client: openai.OpenAI, file_id: str, **extra: Any) -> openai.types.Batch:
    return client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h",
                                 **extra)


def poll(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    for _ in range(20):
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"batch {batch_id} never finished")


def content(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    raw = client.files.content(file_id).text
    return [json.loads(x) for x in raw.splitlines() if x.strip()]


def test_round_trip(gw: RunningGateway, anthropic_up: Upstream) -> None:
    fake, client = anthropic_up.fake, gw.client
    no_max = request_line("no-max")
    del no_max["body"]["max_tokens"]  # the group's default (64) applies
    sent = [
        request_line("req-0"),
        request_line("order #7: ä"),  # re-keyed upstream, given back exactly
        request_line("x" * 80),  # too long for Anthropic: re-keyed too
        no_max,
        request_line("tool", "Weather in Oslo?", tool_choice="required", tools=[
            {"type": "function", "function": {"name": "weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}}}}]),
        request_line("img", None, messages=[{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}]),
        request_line("req-fail", user="fail"),  # the fake's failure marker
    ]
    file_id = upload(client, sent)
    assert fake.requests == [], "nothing reaches an inline upstream at upload"
    assert content(client, file_id) == sent  # the input as uploaded

    batch = create(client, file_id, metadata={"run": "e2e"})
    assert batch.status == "in_progress" and batch.model == GROUP
    assert batch.metadata == {"run": "e2e"}

    # Upstream: one create, streamed, every line one request item.
    assert len(fake.received("POST", r"^/v1/messages/batches$")) == 1
    ((native_id, body),) = fake.created.items()
    assert fake.chunked[native_id]
    items = {item["custom_id"]: item["params"] for item in body["requests"]}
    assert set(items) == {native_custom_id(line["custom_id"]) for line in sent}
    assert native_custom_id("order #7: ä") != "order #7: ä"
    assert items["req-0"] == {"model": MODEL, "max_tokens": 100, "system": "Be brief.",
                              "messages": [{"role": "user", "content": "Say hello to req-0"}]}
    assert items["no-max"]["max_tokens"] == 64
    assert "e2e" not in json.dumps(body)  # the client's metadata stays in the gateway

    done = poll(client, batch.id)
    assert done.status == "completed" and done.completed_at
    assert done.metadata == {"run": "e2e"}
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (7, 6, 1)
    assert done.output_file_id and done.error_file_id
    output = content(client, done.output_file_id)
    errors = content(client, done.error_file_id)
    assert sorted(x["custom_id"] for x in output + errors) == sorted(x["custom_id"] for x in sent)
    assert [x["custom_id"] for x in errors] == ["req-fail"]
    assert errors[0]["response"]["status_code"] == 400
    by_id = {x["custom_id"]: x["response"]["body"] for x in output}
    for custom_id in ("req-0", "order #7: ä", "x" * 80, "no-max"):
        completion = openai.types.chat.ChatCompletion.model_validate(by_id[custom_id])
        assert completion.choices[0].message.content == f"echo: Say hello to {custom_id}"
        assert completion.model == MODEL and completion.usage is not None
    tool = by_id["tool"]["choices"][0]
    assert tool["finish_reason"] == "tool_calls"
    assert tool["message"]["tool_calls"][0]["function"]["name"] == "weather"
    assert by_id["img"]["choices"][0]["message"]["content"] == "echo: what is this"

    # Usage: the tokens of the successful requests, recorded once.
    prompt = sum(b["usage"]["prompt_tokens"] for b in by_id.values())
    completion_tokens = sum(b["usage"]["completion_tokens"] for b in by_id.values())
    assert done.usage is not None
    assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (
        prompt, completion_tokens, prompt + completion_tokens)
    resp = httpx.get(gw.server.url + "/usage", headers={"Authorization": f"Bearer {gw.key}"})
    (row,) = resp.json()["data"]
    assert (row["batch_id"], row["model_group"], row["status"]) == (batch.id, GROUP,
                                                                     "completed")
    assert (row["requests_completed"], row["requests_failed"]) == (6, 1)
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (
        prompt, completion_tokens, prompt + completion_tokens)

    # Nothing the client saw names the Anthropic batch.
    seen = json.dumps([done.model_dump(), client.batches.list().model_dump(), output, errors])
    assert native_id not in seen and "msgbatch_" not in seen


def test_cancel(gw: RunningGateway, anthropic_up: Upstream) -> None:
    client = gw.client
    file_id = upload(client, [request_line("a"), request_line("b/c")])
    batch = create(client, file_id)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert anthropic_up.fake.received("POST", r"/cancel$")
    done = poll(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert done.output_file_id is None and done.error_file_id
    lines = content(client, done.error_file_id)
    assert sorted(x["custom_id"] for x in lines) == ["a", "b/c"]
    assert {x["error"]["code"] for x in lines} == {"batch_cancelled"}
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_lines_that_cannot_be_mapped_are_refused_at_upload(
    gw: RunningGateway, anthropic_up: Upstream
) -> None:
    client = gw.client
    with pytest.raises(openai.BadRequestError) as info:
        upload(client, [request_line("fine"), request_line("two", n=2)])
    assert "Line 2" in info.value.message and "body.n" in info.value.message
    no_max = request_line("no-max")
    del no_max["body"]["max_tokens"]
    no_max["body"]["model"] = STRICT
    with pytest.raises(openai.BadRequestError) as info:
        upload(client, [no_max], group=STRICT)
    assert "Line 1" in info.value.message and "body.max_tokens" in info.value.message
    assert anthropic_up.fake.requests == []
    assert client.files.list().data == []


def test_one_file_on_openai_and_anthropic(gw: RunningGateway, anthropic_up: Upstream,
                                          openai_up: OpenAIUpstream) -> None:
    client = gw.client
    sent = [{**line, "body": {**line["body"], "model": MIXED}}
            for line in (request_line("m0"), request_line("m 1"), request_line("m2"))]
    file_id = upload(client, sent, group=MIXED)
    assert len(openai_up.fake.uploads) == 1 and anthropic_up.fake.requests == []
    first, second = create(client, file_id), create(client, file_id)
    assert len(openai_up.fake.batches) == 1 and len(anthropic_up.fake.batches) == 1
    answers = set()
    for batch in (first, second):
        done = poll(client, batch.id)
        assert done.status == "completed" and done.model == MIXED and done.output_file_id
        output = content(client, done.output_file_id)
        assert sorted(x["custom_id"] for x in output) == ["m 1", "m0", "m2"]
        for line in output:
            said = line["response"]["body"]["choices"][0]["message"]["content"]
            answers.add("anthropic" if said == f"echo: Say hello to {line['custom_id']}"
                        else "openai" if said == f"echo:{line['custom_id']}" else said)
    assert answers == {"anthropic", "openai"}  # each fake answered one batch, every line

    # Anthropic overloaded: the batch goes to the OpenAI deployment holding the file.
    anthropic_up.fake.fail("POST", r"^/v1/messages/batches$", 529, times=2)
    third = create(client, file_id)
    assert poll(client, third.id).status == "completed"
    assert len(openai_up.fake.batches) == 2 and len(anthropic_up.fake.batches) == 1

