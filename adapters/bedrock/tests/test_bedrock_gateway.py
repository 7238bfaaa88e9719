"""The whole developer flow through the real OpenAI SDK: the gateway under uvicorn in front of
the fake Bedrock (control plane and S3 front, over the moto S3 emulator), next to a fake OpenAI
in mixed groups."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from adapters.bedrock.tests.bedrock_support import GROUP, MODEL, Aws, jsonl, request_line
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import RunningGateway as Gateway
from gateway.testing.servers import ServerThread, gateway_config

TERMINAL = {"completed", "failed", "expired", "cancelled"}
MIXED = "claude-or-gpt"


class OpenAIUpstream:
    def __init__(self) -> None:
        self.fake = FakeOpenAI(api_key="sk-upstream", models={"gpt-4o-mini"})
        self.server = ServerThread(self.fake.app).start()

    def params(self) -> dict[str, Any]:
        return {"model": "openai/gpt-4o-mini", "api_base": self.server.url + "/v1",
                "api_key": "sk-upstream", "timeout": 5}


@pytest.fixture
def openai_upstream() -> Iterator[OpenAIUpstream]:
    up = OpenAIUpstream()
    yield up
    up.server.stop()
    up.fake.close()


def poll(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    for _ in range(20):
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"batch {batch_id} never finished")


def lines_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def usage(gw: Gateway) -> list[dict[str, Any]]:
    resp = httpx.get(gw.server.url + "/usage", headers={"Authorization": f"Bearer {gw.key}"})
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()["data"]
    return rows


def test_openai_sdk_flow_on_bedrock(aws: Aws, database_url: str) -> None:
    sent = [request_line(f"req-{i}", temperature=0.2) for i in range(4)]
    sent.append(request_line("req fail", "please FAIL"))
    sent.append(request_line("req-tool", "weather in Oslo?", tool_choice="required", tools=[
        {"type": "function", "function": {"name": "weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]))
    sent.append(request_line("req-img", None, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]))
    sent.append(request_line("ünïcode/id", None, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]))
    with Gateway(gateway_config([(GROUP, aws.params())], database_url), [GROUP]) as gw:
        client = gw.client
        f = client.files.create(file=("in.jsonl", jsonl(sent)), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        (key,) = aws.objects("batch-gateway/in/")  # the copy, as Claude records
        records = [json.loads(x) for x in aws.read(key).splitlines()]
        assert len(records) == len(sent) and all(set(r) == {"recordId", "modelInput"}
                                                 for r in records)

        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"project": "demo"})
        assert batch.status == "validating" and batch.metadata == {"project": "demo"}
        (body,) = aws.fake.created()
        assert "demo" not in json.dumps(body)  # metadata is the gateway's
        assert body["modelId"] == MODEL

        done = poll(client, batch.id)
        assert done.status == "completed" and done.completed_at
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed,
                done.request_counts.failed) == (len(sent), len(sent) - 1, 1)
        assert done.output_file_id and done.error_file_id
        assert done.usage is not None and done.usage.total_tokens

        output = lines_of(client.files.content(done.output_file_id).text)
        errors = lines_of(client.files.content(done.error_file_id).text)
        ids = sorted(x["custom_id"] for x in output + errors)
        assert ids == sorted(x["custom_id"] for x in sent)  # each exactly once, as sent
        assert [x["custom_id"] for x in errors] == ["req fail"]
        by_id = {x["custom_id"]: x["response"]["body"] for x in output}
        for body in by_id.values():
            completion = openai.types.chat.ChatCompletion.model_validate(body)
            assert completion.usage and completion.model == "claude-sonnet-4-5-20250929"
        assert by_id["req-0"]["choices"][0]["message"]["content"] == "echo: hello req-0"
        assert by_id["ünïcode/id"]["choices"][0]["message"]["content"] == "echo: hi there"
        tool = by_id["req-tool"]["choices"][0]
        assert tool["finish_reason"] == "tool_calls"
        assert tool["message"]["tool_calls"][0]["function"]["name"] == "weather"

        (row,) = usage(gw)
        assert row["batch_id"] == batch.id and row["model_group"] == GROUP
        assert (row["requests_completed"], row["requests_failed"]) == (len(sent) - 1, 1)
        assert row["input_tokens"] == done.usage.input_tokens
        assert row["total_tokens"] == done.usage.total_tokens > 0

        # Nothing the client saw names a bucket, an object, an account or a job.
        seen = json.dumps([f.model_dump(), done.model_dump(), output, errors,
                           client.batches.list().model_dump()])
        assert aws.bucket not in seen and "s3://" not in seen and "arn:aws" not in seen

        assert client.files.delete(f.id).deleted
        assert aws.objects("batch-gateway/in/") == []


def test_mixed_group_runs_on_both_and_small_files_skip_bedrock(
    aws: Aws, openai_upstream: OpenAIUpstream, database_url: str
) -> None:
    bedrock = aws.params(min_requests_per_job=5, max_tokens=128)
    config = gateway_config([(MIXED, bedrock), (MIXED, openai_upstream.params()),
                             (GROUP, bedrock)], database_url)
    with Gateway(config, [MIXED, GROUP]) as gw:
        client = gw.client

        def plain(custom_id: str, model: str) -> dict[str, Any]:
            line = request_line(custom_id, model=model)
            del line["body"]["max_tokens"]  # Bedrock's copy takes the deployment's default
            return line

        small = [plain(f"s{i}", MIXED) for i in range(3)]
        f = client.files.create(file=("small.jsonl", jsonl(small)), purpose="batch",
                                extra_body={"target_model_names": MIXED})
        assert len(aws.objects("batch-gateway/in/")) == 1  # both deployments got a copy
        assert len(openai_upstream.fake.uploads) == 1
        for _ in range(2):  # round-robin would reach Bedrock; 3 < 5 records skip it
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            done = poll(client, batch.id)
            assert done.status == "completed"
            assert done.output_file_id is not None
            output = lines_of(client.files.content(done.output_file_id).text)
            assert sorted(x["custom_id"] for x in output) == ["s0", "s1", "s2"]
        assert aws.fake.jobs == {}

        # A Bedrock-only group: a 400 that says why.
        only = client.files.create(file=("only.jsonl",
                                         jsonl([plain(f"o{i}", GROUP) for i in range(3)])),
                                   purpose="batch", extra_body={"target_model_names": GROUP})
        with pytest.raises(openai.BadRequestError) as caught:
            client.batches.create(input_file_id=only.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
        assert "it has 3 requests; one needs at least 5" in caught.value.message
        assert aws.fake.jobs == {}

        # Enough requests: one file, one batch on each deployment of the group.
        big = [plain(f"b-{i}", MIXED) for i in range(6)]
        f = client.files.create(file=("big.jsonl", jsonl(big)), purpose="batch",
                                extra_body={"target_model_names": MIXED})
        models = set()
        for _ in range(2):
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            done = poll(client, batch.id)
            assert done.status == "completed" and done.output_file_id
            output = lines_of(client.files.content(done.output_file_id).text)
            assert sorted(x["custom_id"] for x in output) == sorted(x["custom_id"] for x in big)
            models |= {x["response"]["body"]["model"] for x in output}
        assert len(aws.fake.jobs) == 1
        assert any(m.startswith("claude") for m in models)
        assert any(m.startswith("gpt") for m in models)


def test_cancel_through_the_sdk(aws: Aws, database_url: str) -> None:
    with Gateway(gateway_config([(GROUP, aws.params())], database_url), [GROUP]) as gw:
        client = gw.client
        f = client.files.create(file=("in.jsonl", jsonl([request_line(f"x{i}")
                                                         for i in range(3)])),
                                purpose="batch", extra_body={"target_model_names": GROUP})
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        final = poll(client, batch.id)
        assert final.status == "cancelled" and final.output_file_id is None
        assert final.error_file_id is not None
        errors = lines_of(client.files.content(final.error_file_id).text)
        assert sorted(x["custom_id"] for x in errors) == ["x0", "x1", "x2"]
        assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
        assert [r.path.endswith("/stop") for r in aws.fake.requests].count(True) == 1
        with pytest.raises(openai.ConflictError):
            client.batches.cancel(batch.id)
