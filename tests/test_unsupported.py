"""A provider that cannot delete or cancel answers 400, never 500; plugins registered in-process
go through the same hook as entry-point adapters."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import openai
import pytest
from gateway_openai import OpenAIProvider

from gateway import Capabilities, hookimpl
from gateway.testing.servers import gateway_server
from tests.conftest import MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file


class ReadOnlyProvider(OpenAIProvider):
    name = "readonly"

    def capabilities(self) -> Capabilities:
        return msgspec.structs.replace(super().capabilities(), delete=False, cancel=False)


class ReadOnlyPlugin:
    @hookimpl
    def register_providers(self) -> list[type[OpenAIProvider]]:
        return [ReadOnlyProvider]


@pytest.fixture
def readonly_client(upstreams: list[Upstream], database_url: str) -> Iterator[openai.OpenAI]:
    cfg = config_for(upstreams[:1], database_url)
    cfg["model_list"][0]["litellm_params"]["model"] = "readonly/gpt-4o-mini"
    with gateway_server(cfg, extra_plugins=(ReadOnlyPlugin(),)) as server:
        admin = openai.OpenAI(base_url=server.url, api_key=MASTER_KEY)
        key = admin.post("/key/generate", body={"models": []}, cast_to=dict)["key"]
        yield openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_unsupported_delete_and_cancel_are_400(
    readonly_client: openai.OpenAI, upstreams: list[Upstream]
) -> None:
    f = readonly_client.files.create(file=batch_file(1), purpose="batch")
    batch = readonly_client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with pytest.raises(openai.BadRequestError) as info:
        readonly_client.files.delete(f.id)
    assert "cannot be deleted" in str(info.value.body)
    with pytest.raises(openai.BadRequestError) as info:
        readonly_client.batches.cancel(batch.id)
    assert "cannot be cancelled" in str(info.value.body)
    # Nothing was touched upstream, and the file is still there.
    assert not [r for r in upstreams[0].fake.requests if r[0] == "DELETE"]
    assert readonly_client.files.retrieve(f.id).id == f.id
