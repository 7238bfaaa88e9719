"""Several gateway instances share one PostgreSQL and one object store: any instance serves
any file and runs any batch."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.testing.servers import gateway_server
from tests.conftest import GROUP, MASTER_KEY, Upstream, config_for
from tests.helpers import batch_file


def test_two_instances_share_files_and_batches(
    upstreams: list[Upstream], postgres_url: str, s3_file_store_url: str
) -> None:
    cfg_a = config_for(upstreams, postgres_url, file_storage=s3_file_store_url)
    cfg_b = config_for(upstreams, postgres_url, file_storage=s3_file_store_url)
    with gateway_server(cfg_a) as a, gateway_server(cfg_b) as b:
        key = httpx.post(f"{a.url}/key/generate", json={"models": [GROUP]},
                         headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()["key"]
        via_a = openai.OpenAI(base_url=a.url + "/v1", api_key=key, max_retries=0)
        via_b = openai.OpenAI(base_url=b.url + "/v1", api_key=key, max_retries=0)

        sent = batch_file(4).getvalue()
        f = via_a.files.create(file=("in.jsonl", sent), purpose="batch",
                               extra_body={"target_model_names": GROUP})
        # The other instance reads the kept input from the shared object store.
        assert via_b.files.content(f.id).read() == sent

        batch = via_b.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
        for _ in range(10):
            batch = via_a.batches.retrieve(batch.id)
            if batch.status == "completed":
                break
        assert batch.status == "completed" and batch.request_counts is not None
        assert batch.request_counts.completed == 4
        assert batch.output_file_id is not None
        out_a = via_a.files.content(batch.output_file_id).read()
        assert out_a == via_b.files.content(batch.output_file_id).read()
        assert sorted(line.count(b'"custom_id":"req-') for line in out_a.splitlines()) == [1] * 4

        via_b.files.delete(f.id)
        for client in (via_a, via_b):
            with pytest.raises(openai.NotFoundError):
                client.files.content(f.id)
