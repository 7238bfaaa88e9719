"""The whole developer flow through the real OpenAI SDK: the gateway under uvicorn in front of
the GCS emulator, the fake token endpoint and the fake Vertex AI (next to a fake OpenAI)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from adapters.vertex.tests.vertex_support import (
    BUCKET,
    GROUP,
    Google,
    jsonl,
    request_line,
)
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import RunningGateway as Gateway
from gateway.testing.servers import ServerThread, gateway_config

OPENAI_GROUP = "gpt-4o-batch"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


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


def test_openai_sdk_flow_on_gemini(google: Google, database_url: str) -> None:
    sent = [request_line(f"req-{i}", temperature=0.2, max_tokens=50) for i in range(5)]
    sent.append(request_line("req-fail", "please FAIL"))
    sent.append(request_line("req-tool", "weather in Oslo?", tool_choice="required", tools=[
        {"type": "function", "function": {"name": "weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]))
    sent.append(request_line("req-img", None, messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]))
    with Gateway(gateway_config([(GROUP, google.params())], database_url), [GROUP]) as gw:
        client = gw.client
        f = client.files.create(file=("in.jsonl", jsonl(sent)), purpose="batch",
                                extra_body={"target_model_names": GROUP})
        assert f.id.startswith("file-") and f.filename == "in.jsonl"
        content = lines_of(client.files.content(f.id).text)
        assert [x["custom_id"] for x in content] == [x["custom_id"] for x in sent]
        assert content[0] == sent[0]  # shown as the user wrote it, model name included

        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"project": "demo"})
        assert batch.id.startswith("batch_") and batch.status == "validating"
        assert batch.metadata == {"project": "demo"} and batch.model == GROUP
        assert batch.request_counts is not None and batch.request_counts.total == len(sent)

        # Metadata and the request count are the gateway's: nothing of them goes upstream.
        (job,) = google.vertex.jobs.values()
        assert "labels" not in job and "demo" not in json.dumps(job)

        done = poll(client, batch.id)
        assert done.status == "completed" and done.completed_at
        assert done.metadata == {"project": "demo"}
        assert done.request_counts is not None
        assert (done.request_counts.total, done.request_counts.completed,
                done.request_counts.failed) == (len(sent), len(sent) - 1, 1)
        assert done.output_file_id and done.error_file_id
        assert done.output_file_id.startswith("file-") and done.error_file_id.startswith("file-")

        output = lines_of(client.files.content(done.output_file_id).text)
        errors = lines_of(client.files.content(done.error_file_id).text)
        ids = sorted(x["custom_id"] for x in output + errors)
        assert ids == sorted(x["custom_id"] for x in sent)  # each exactly once
        assert [x["custom_id"] for x in errors] == ["req-fail"]
        assert errors[0]["response"] is None and errors[0]["error"]["message"]
        by_id = {x["custom_id"]: x for x in output}
        for line in output:
            assert line["error"] is None and line["response"]["status_code"] == 200
            completion = openai.types.chat.ChatCompletion.model_validate(
                line["response"]["body"])
            assert completion.model == "gemini-2.5-flash" and completion.usage
        body = by_id["req-0"]["response"]["body"]
        assert body["choices"][0]["message"]["content"] == "echo: hello req-0"
        tool = by_id["req-tool"]["response"]["body"]["choices"][0]
        assert tool["finish_reason"] == "tool_calls"
        assert tool["message"]["tool_calls"][0]["function"]["name"] == "weather"

        out_file = client.files.retrieve(done.output_file_id)
        assert out_file.purpose == "batch_output"
        # Nothing the client saw names a bucket, an object or a job.
        seen = json.dumps([f.model_dump(), done.model_dump(), out_file.model_dump(),
                           client.batches.list().model_dump()])
        assert BUCKET not in seen and "gs://" not in seen and "projects/" not in seen

        # Deleting the input removes its object from the bucket.
        assert any("/in/" in name for name in google_objects(google))
        assert client.files.delete(f.id).deleted
        assert not any("/in/" in name for name in google_objects(google))


def google_objects(google: Google) -> list[str]:
    import httpx

    resp = httpx.get(f"{google.gcs_url}/storage/v1/b/{BUCKET}/o")
    return [o["name"] for o in resp.json().get("items") or []]


def test_gemini_beside_openai_in_one_gateway(
    google: Google, openai_upstream: OpenAIUpstream, database_url: str
) -> None:
    config = gateway_config([(GROUP, google.params()),
                             (OPENAI_GROUP, openai_upstream.params())], database_url)
    with Gateway(config, [GROUP, OPENAI_GROUP]) as gw:
        client = gw.client
        # A line neither can be given to: a 400 naming line and field, nothing uploaded.
        bad = [request_line("a"), request_line("b", logit_bias={"1": 5})]
        with pytest.raises(openai.BadRequestError) as caught:
            client.files.create(file=("bad.jsonl", jsonl(bad)), purpose="batch",
                                extra_body={"target_model_names": [GROUP, OPENAI_GROUP]})
        assert "Line 2" in caught.value.message and "body.logit_bias" in caught.value.message
        assert google_objects(google) == [] and openai_upstream.fake.uploads == {}

        sent = [request_line(f"r{i}") for i in range(3)]
        f = client.files.create(file=("in.jsonl", jsonl(sent)), purpose="batch",
                                extra_body={"target_model_names": [GROUP, OPENAI_GROUP]})
        assert len(openai_upstream.fake.uploads) == 1 and len(google_objects(google)) == 1
        for group in (GROUP, OPENAI_GROUP):
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h",
                                          extra_body={"target_model_names": [group]})
            assert batch.model == group
            done = poll(client, batch.id)
            assert done.status == "completed" and done.output_file_id
            output = lines_of(client.files.content(done.output_file_id).text)
            assert sorted(x["custom_id"] for x in output) == ["r0", "r1", "r2"]
            assert all(x["response"]["body"]["object"] == "chat.completion" for x in output)
        listed = client.batches.list(extra_query={"target_model_names": GROUP})
        assert [b.model for b in listed.data] == [GROUP]


def test_cancel_through_the_sdk(google: Google, database_url: str) -> None:
    with Gateway(gateway_config([(GROUP, google.params())], database_url), [GROUP]) as gw:
        f = gw.client.files.create(file=("in.jsonl", jsonl([request_line("x")])),
                                   purpose="batch")
        batch = gw.client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                         completion_window="24h")
        assert gw.client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        final = poll(gw.client, batch.id)
        assert final.status == "cancelled" and final.output_file_id is None
        with pytest.raises(openai.ConflictError):
            gw.client.batches.cancel(batch.id)
