"""The whole flow through the real OpenAI SDK against the gateway, over fake Azure resources
(two deployments with their own endpoints and keys), mixed Azure + OpenAI groups and Entra."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from adapters.azure.tests.azure_support import (
    GROUP,
    AzureResource,
    entra_params,
    request_line,
)
from gateway.testing.fake_azure import FakeEntra, token_limit_error
from gateway.testing.fake_openai import FakeOpenAI
from gateway.testing.servers import RunningGateway as Gateway
from gateway.testing.servers import ServerThread

GENERAL = "gpt-4o-mini-general-deployment"
SPECIAL = "gpt-4o-mini-special-deployment"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
Make = Callable[..., AzureResource]
Start = Callable[..., Gateway]


def jsonl(n: int, **body: Any) -> bytes:
    return b"".join(json.dumps(request_line(f"req-{i}", **body)).encode() + b"\n"
                    for i in range(n))


def upload(client: openai.OpenAI, n: int = 3, **body: Any) -> str:
    return client.files.create(file=("in.jsonl", jsonl(n, **body)), purpose="batch",
                               extra_body={"target_model_names": GROUP}).id


def create(client: openai.OpenAI, file_id: str) -> openai.types.Batch:
    return client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                 completion_window="24h")


def poll(client: openai.OpenAI, batch_id: str) -> openai.types.Batch:
    for _ in range(20):
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"batch {batch_id} never finished")


@pytest.fixture
def pair(resources: Make) -> list[AzureResource]:
    """The issue's config: two deployments of one group, each its own resource and key."""
    return [
        resources(GENERAL, api_key="key-general", processing_polls=2),
        resources(SPECIAL, api_key="key-special", processing_polls=2),
    ]


def test_full_flow_over_two_azure_deployments(pair: list[AzureResource],
                                              start_gateway: Start) -> None:
    gw = start_gateway([(GROUP, pair[0].params(api_version="2025-04-01-preview")),
                        (GROUP, pair[1].params())])
    client = gw.client
    sent = jsonl(4, temperature=0.2)
    f = client.files.create(file=("in.jsonl", sent), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    assert f.status == "processed" and f.bytes == len(sent)
    for res in pair:
        (native,) = res.fake.uploads
        lines = res.fake.file_lines(native)
        assert {x["body"]["model"] for x in lines} == {res.deployment}
        assert {x["url"] for x in lines} == {"/chat/completions"}
        # Each deployment only ever saw its own key.
        assert {r[3].get("api-key") for r in res.fake.requests} == {res.api_key}
    assert {r[2]["api-version"] for r in pair[0].fake.requests} == {"2025-04-01-preview"}
    assert {r[2]["api-version"] for r in pair[1].fake.requests} == {"2024-10-21"}

    batch = create(client, f.id)
    assert batch.status == "validating" and batch.endpoint == "/v1/chat/completions"
    assert sum(res.fake.creates() for res in pair) == 1
    done = poll(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 4
    assert done.output_file_id and done.error_file_id is None  # the zero-byte file is dropped
    out = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(x["custom_id"] for x in out) == [f"req-{i}" for i in range(4)]
    assert all("content_filter_results" in x["response"]["body"]["choices"][0] for x in out)

    # The input file comes back exactly as uploaded (the gateway serves its own copy).
    assert client.files.content(f.id).content == sent

    page = client.batches.list()
    assert [b.id for b in page.data] == [batch.id]
    cancelled_target = create(client, f.id)
    assert client.batches.cancel(cancelled_target.id).status == "cancelling"
    assert poll(client, cancelled_target.id).status == "cancelled"

    seen = json.dumps([x.model_dump() for x in (f, batch, done, *page.data)]) \
        + client.files.content(done.output_file_id).text
    for res in pair:
        assert res.deployment not in seen and res.url not in seen
        assert not any(native in seen for native in [*res.fake.files, *res.fake.batches])

    client.files.delete(f.id)
    assert all(not res.fake.uploads for res in pair)


@pytest.mark.parametrize("failure", ["token_limit", "503"])
def test_create_fails_over_to_the_other_deployment(
    pair: list[AzureResource], start_gateway: Start, failure: str
) -> None:
    gw = start_gateway([(GROUP, pair[0].params()), (GROUP, pair[1].params())])
    file_id = upload(gw.client)
    full, spare = pair
    if failure == "token_limit":
        full.fake.fail("POST", r"/batches$", 400, body=token_limit_error(full.deployment),
                       times=-1)
    else:
        full.fake.fail("POST", r"/batches$", 503, times=-1)
    # Round-robin tries the failing deployment first at least once; every batch lands on the
    # other one.
    batches = [create(gw.client, file_id) for _ in range(2)]
    assert all(b.status == "validating" for b in batches)
    assert full.fake.creates() >= 1 and spare.fake.creates() == 2
    assert full.fake.batches == {}
    assert poll(gw.client, batches[0].id).status == "completed"


def test_every_deployment_full_is_429_naming_the_group(
    pair: list[AzureResource], start_gateway: Start
) -> None:
    gw = start_gateway([(GROUP, pair[0].params()), (GROUP, pair[1].params())])
    file_id = upload(gw.client)
    for res in pair:
        res.fake.fail("POST", r"/batches$", 400, body=token_limit_error(res.deployment), times=-1)
    with pytest.raises(openai.RateLimitError) as info:
        create(gw.client, file_id)
    assert GROUP in info.value.message
    assert all(res.deployment not in info.value.message for res in pair)


def test_file_processing_error_never_reaches_a_batch(resources: Make,
                                                    start_gateway: Start) -> None:
    # Azure refuses the copy while processing it: `put_input` fails (and deletes the copy),
    # so no batch is ever created upstream, and the client never learns the deployment name.
    res = resources(GENERAL, processing_polls=1)
    res.fake.processing_error = f"jsonlValidationFailed in deployment {GENERAL}"
    gw = start_gateway([(GROUP, res.params())])
    with pytest.raises(openai.APIStatusError) as info:
        create(gw.client, upload(gw.client))
    assert GROUP in info.value.message
    assert GENERAL not in info.value.message and res.url not in info.value.message
    assert res.fake.creates() == 0
    assert res.fake.files == {}


def test_mixed_azure_and_openai_group(resources: Make, start_gateway: Start) -> None:
    res = resources(GENERAL, processing_polls=1)
    fake_openai = FakeOpenAI(api_key="sk-openai-upstream", models={"gpt-4o-mini"})
    with ServerThread(fake_openai.app) as oa:
        gw = start_gateway([
            (GROUP, res.params()),
            (GROUP, {"model": "openai/gpt-4o-mini", "api_base": oa.url + "/v1",
                     "api_key": "sk-openai-upstream", "timeout": 5}),
        ])
        file_id = upload(gw.client, 2)
        (azure_copy,) = res.fake.uploads
        (openai_copy,) = fake_openai.uploads
        assert {(x["body"]["model"], x["url"]) for x in res.fake.file_lines(azure_copy)} == {
            (GENERAL, "/chat/completions")}
        assert {(x["body"]["model"], x["url"]) for x in fake_openai.file_lines(openai_copy)} == {
            ("gpt-4o-mini", "/v1/chat/completions")}
        # Round-robin puts one batch on each provider; both finish.
        batches = [create(gw.client, file_id) for _ in range(2)]
        assert res.fake.creates() == 1
        assert sum(1 for r in fake_openai.requests if r[:2] == ("POST", "/v1/batches")) == 1
        for b in batches:
            done = poll(gw.client, b.id)
            assert done.status == "completed" and done.output_file_id
            text = gw.client.files.content(done.output_file_id).text
            assert len(text.splitlines()) == 2


def test_entra_client_credentials_with_refresh(
    resources: Make, entra: tuple[FakeEntra, str], start_gateway: Start
) -> None:
    fake_entra, _ = entra
    fake_entra.expires_in = 1  # so short that the flow outlives the first token
    res = resources(GENERAL, api_key=None, entra=fake_entra, processing_polls=1)
    gw = start_gateway([(GROUP, res.params(**entra_params(entra)))])
    file_id = upload(gw.client)
    batch = create(gw.client, file_id)
    time.sleep(0.7)
    done = poll(gw.client, batch.id)
    assert done.status == "completed"
    assert len(fake_entra.tokens) >= 2
    assert {r[4] for r in res.fake.requests} == {"entra"}  # never refused, never an api-key
