"""One model group of OpenAI, Anthropic and Bedrock deployments (issue 11's "done when"): one
uploaded OpenAI batch file runs on each of them, every custom_id comes back exactly once,
usage is recorded, and a file below Bedrock's minimum skips Bedrock.

Uses the fakes the Anthropic and Bedrock adapters ship; both adapters are enabled in
plugins.toml."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from adapters.anthropic.tests.anthropic_support import Upstream as AnthropicUpstream
from adapters.anthropic.tests.anthropic_support import raw_params as anthropic_params
from adapters.bedrock.tests.bedrock_support import MIN_RECORDS, Aws, aws, bedrock_servers
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import RunningGateway, ServerThread, gateway_config
from tests.helpers import request_line

__all__ = ["aws", "bedrock_servers"]  # fixtures this module uses

GROUP = "claude-or-gpt"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


@pytest.fixture
def openai_fake() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI(api_key="sk-upstream", models={"gpt-4o-mini"})
    with ServerThread(fake.app) as server:
        yield fake, server.url
    fake.close()


@pytest.fixture
def anthropic() -> Iterator[AnthropicUpstream]:
    up = AnthropicUpstream()
    yield up
    up.stop()


def _lines(n: int) -> bytes:
    return b"".join(
        json.dumps(request_line(f"req-{i}", GROUP, max_tokens=64)).encode() + b"\n"
        for i in range(n)
    )


def _poll(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    for _ in range(30):
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"batch {batch_id} never finished")


def test_one_file_runs_on_openai_anthropic_and_bedrock(
    openai_fake: tuple[FakeOpenAI, str], anthropic: AnthropicUpstream, aws: Aws,
    database_url: str,
) -> None:
    fake_openai, openai_url = openai_fake
    entries: list[tuple[str, dict[str, Any]]] = [
        (GROUP, {"model": "openai/gpt-4o-mini", "api_base": openai_url + "/v1",
                 "api_key": "sk-upstream"}),
        (GROUP, anthropic_params(anthropic.url)),
        (GROUP, aws.params()),
    ]
    with RunningGateway(gateway_config(entries, database_url), [GROUP]) as gw:
        client = gw.client
        n = MIN_RECORDS + 3
        f = client.files.create(file=("in.jsonl", _lines(n)), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        batches = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                         completion_window="24h") for _ in range(3)]
        # Round robin over the three deployments: each provider ran one batch.
        assert len(fake_openai.batches) == 1
        assert len(anthropic.fake.batches) == 1
        assert len(aws.objects("batch-gateway/in/")) == 1 and len(aws.fake.jobs) == 1
        expected = [f"req-{i}" for i in range(n)]
        for batch in batches:
            done = _poll(client, batch.id)
            assert done.status == "completed", done
            assert done.request_counts is not None and done.request_counts.total == n
            assert done.output_file_id is not None
            out = [json.loads(x) for x in client.files.content(done.output_file_id).text
                   .splitlines() if x.strip()]
            assert sorted(x["custom_id"] for x in out) == sorted(expected)
            assert all(x["response"]["status_code"] == 200 for x in out)
            assert all(x["response"]["body"]["object"] == "chat.completion" for x in out)
        usage = httpx.get(gw.server.url + "/usage",
                          headers={"Authorization": f"Bearer {gw.key}"}).json()["data"]
        assert sorted(r["batch_id"] for r in usage) == sorted(b.id for b in batches)
        assert all(r["requests_completed"] == n and r["output_tokens"] for r in usage)


def test_a_small_file_skips_bedrock(
    openai_fake: tuple[FakeOpenAI, str], anthropic: AnthropicUpstream, aws: Aws,
    database_url: str,
) -> None:
    fake_openai, openai_url = openai_fake
    entries: list[tuple[str, dict[str, Any]]] = [
        (GROUP, aws.params()),
        (GROUP, {"model": "openai/gpt-4o-mini", "api_base": openai_url + "/v1",
                 "api_key": "sk-upstream"}),
        (GROUP, anthropic_params(anthropic.url)),
    ]
    with RunningGateway(gateway_config(entries, database_url), [GROUP]) as gw:
        small = MIN_RECORDS - 1
        f = gw.client.files.create(file=("in.jsonl", _lines(small)), purpose="batch",
                                   extra_body={"target_model_names": GROUP})
        for _ in range(4):
            gw.client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
        assert not aws.fake.jobs
        assert len(fake_openai.batches) + len(anthropic.fake.batches) == 4
