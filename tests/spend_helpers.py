"""A gateway with priced deployments, and running real batches to their end on the fakes."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import httpx
import openai

from gateway.testing.servers import ServerThread
from tests.conftest import MASTER_KEY, Upstream
from tests.helpers import batch_file

BATCH_PRICED = "g-batch"  # model_info *_cost_per_token_batches
HALF_PRICED = "g-half"  # model_info *_cost_per_token, x 0.5 as LiteLLM does
TABLE_PRICED = "g-table"  # model_info.base_model found in the bundled table
UNPRICED = "g-none"

PRICES = {  # USD per (input, output) token
    BATCH_PRICED: (1e-6, 2e-6),
    HALF_PRICED: (2e-6, 4e-6),
    TABLE_PRICED: (7.5e-8, 3e-7),  # gpt-4o-mini in gateway/data/batch_prices.json
}


def priced_config(upstreams: list[Upstream], database_url: str, **settings: Any) -> dict[str, Any]:
    up0, up1, up2 = upstreams
    entries = [
        (BATCH_PRICED, up0, {"input_cost_per_token_batches": 1e-6,
                             "output_cost_per_token_batches": 2e-6}),
        (HALF_PRICED, up1, {"input_cost_per_token": 4e-6, "output_cost_per_token": 8e-6}),
        (TABLE_PRICED, up2, {"base_model": "gpt-4o-mini"}),
        (UNPRICED, up2, {}),
    ]
    return {
        "model_list": [
            {"model_name": group,
             "litellm_params": {"model": f"openai/{up.model}", "api_base": up.api_base,
                                "api_key": up.api_key, "timeout": 5},
             "model_info": {"mode": "batch", **info}}
            for group, up, info in entries
        ],
        "general_settings": {"master_key": MASTER_KEY, "database_url": database_url,
                             "batch_poll_interval": 0,
                             "data_dir": tempfile.mkdtemp(prefix="gateway-test-"), **settings},
    }


def upstream_of(upstreams: list[Upstream], group: str) -> Upstream:
    return upstreams[{BATCH_PRICED: 0, HALF_PRICED: 1, TABLE_PRICED: 2, UNPRICED: 2}[group]]


def admin(server: ServerThread) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30,
                        headers={"Authorization": f"Bearer {MASTER_KEY}"})


def client(server: ServerThread, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def upload(server: ServerThread, key: str, group: str, n: int = 3) -> str:
    f = client(server, key).files.create(file=batch_file(n, model=group), purpose="batch",
                                         extra_body={"target_model_names": group})
    return f.id


def create(server: ServerThread, key: str, file_id: str) -> httpx.Response:
    return httpx.post(server.url + "/v1/batches", headers={"Authorization": f"Bearer {key}"},
                      json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                            "completion_window": "24h"}, timeout=30)


def finish(server: ServerThread, upstreams: list[Upstream], key: str, group: str,
           batch_id: str) -> dict[str, int]:
    """Complete the batch upstream, retrieve it until the gateway records its end; the
    tokens the upstream reported."""
    up = upstream_of(upstreams, group)
    natives = [b for b, v in up.fake.batches.items() if v["status"] not in
               ("completed", "failed", "expired", "cancelled")]
    assert len(natives) == 1, natives
    up.fake.complete(natives[0])
    usage: dict[str, int] = up.fake.batches[natives[0]]["usage"]
    deadline = time.monotonic() + 10
    while client(server, key).batches.retrieve(batch_id).status != "completed":
        assert time.monotonic() < deadline
    return usage


def run_batch(server: ServerThread, upstreams: list[Upstream], key: str, group: str,
              n: int = 3) -> tuple[str, dict[str, int]]:
    """A real batch from upload to its recorded end: its id and the tokens it used."""
    resp = create(server, key, upload(server, key, group, n))
    assert resp.status_code == 200, resp.text
    batch_id: str = resp.json()["id"]
    return batch_id, finish(server, upstreams, key, group, batch_id)


def cost(group: str, usage: dict[str, int]) -> float:
    input_price, output_price = PRICES[group]
    return usage["input_tokens"] * input_price + usage["output_tokens"] * output_price
