"""The TinyBatch adapter registered as a plugin of a real gateway, driven with the OpenAI SDK:
what the client gets, and what the upstream received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.testing.servers import MASTER_KEY, ServerThread, gateway_config, gateway_server

from . import adapter
from .fake_tinybatch import FakeTinyBatch

KEY = "tb-key"
GROUP = "tiny"
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def request_line(custom_id: str, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": GROUP,
            "messages": [{"role": "developer", "content": "Be brief."},
                         {"role": "user", "content": f"Say hello to {custom_id}"}],
            **body,
        },
    }


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


@pytest.fixture
def fake() -> FakeTinyBatch:
    return FakeTinyBatch(api_key=KEY)


@pytest.fixture
def upstream(fake: FakeTinyBatch) -> Iterator[ServerThread]:
    with ServerThread(fake.app) as server:
        yield server


@pytest.fixture
def gateway(upstream: ServerThread, database_url: str, tmp_path: Path) -> Iterator[ServerThread]:
    params = {"model": "tinybatch/tiny-1", "api_base": upstream.url, "api_key": KEY,
              "max_tokens": 64}
    cfg = gateway_config([(GROUP, params)], database_url)
    cfg["general_settings"].update(batch_poll_interval=0, data_dir=str(tmp_path / "gateway"))
    with gateway_server(cfg, extra_plugins=(adapter,)) as server:
        yield server


@pytest.fixture
def client(gateway: ServerThread) -> Iterator[openai.OpenAI]:
    resp = httpx.post(gateway.url + "/key/generate", json={"models": [GROUP]},
                      headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=resp.json()["key"],
                       max_retries=0) as client:
        yield client


def upload(client: openai.OpenAI, lines: list[dict[str, Any]]) -> str:
    f = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch",
                            extra_body={"target_model_names": GROUP})
    return f.id


def poll(client: openai.OpenAI, batch_id: str, limit: int = 20) -> openai.types.Batch:
    for _ in range(limit):
        batch = client.batches.retrieve(batch_id)
        if batch.status in TERMINAL:
            return batch
    raise AssertionError(f"batch {batch_id} never finished")


def content_lines(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    raw = client.files.content(file_id).content
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def test_batch_round_trip(client: openai.OpenAI, fake: FakeTinyBatch) -> None:
    sent = [request_line("req-0"), request_line("req-1", max_tokens=20),
            request_line("req-2", user="fail")]
    file_id = upload(client, sent)
    assert fake.requests == [], "an inline upstream hears nothing at upload"

    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h", metadata={"run": "e2e"})
    assert batch.id.startswith("batch_") and batch.input_file_id == file_id
    assert batch.metadata == {"run": "e2e"}

    done = poll(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (3, 2, 1)
    assert done.metadata == {"run": "e2e"}
    assert done.output_file_id and done.output_file_id.startswith("file-")
    assert done.error_file_id and done.error_file_id.startswith("file-")

    ok = content_lines(client, done.output_file_id)
    assert sorted(x["custom_id"] for x in ok) == ["req-0", "req-1"]
    for line in ok:
        assert line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == "echo:" + line["custom_id"]
    bad = content_lines(client, done.error_file_id)
    assert [x["custom_id"] for x in bad] == ["req-2"]
    assert bad[0]["response"]["status_code"] == 400

    # Upstream: one create, its body streamed, every line mapped to a request item.
    creates = [r for r in fake.requests if r[:2] == ("POST", "/v1/batches")]
    assert len(creates) == 1
    ((native_id, body),) = fake.created.items()
    assert fake.chunked[native_id], "the create body was not streamed"
    assert native_id not in batch.id and native_id not in (done.output_file_id or "")
    items = {r["custom_id"]: r["params"] for r in body["requests"]}
    assert set(items) == {"req-0", "req-1", "req-2"}
    assert items["req-0"] == {
        "model": "tiny-1", "max_tokens": 64, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hello to req-0"}],
    }
    assert items["req-1"]["max_tokens"] == 20
    assert items["req-2"]["metadata"] == {"user_id": "fail"}
    assert all(h["x-api-key"] == KEY for _, _, h in fake.requests)


def test_cancel(client: openai.OpenAI, fake: FakeTinyBatch) -> None:
    file_id = upload(client, [request_line("a"), request_line("b")])
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = poll(client, batch.id)
    assert done.status == "cancelled"
    assert done.output_file_id is None and done.error_file_id
    lines = content_lines(client, done.error_file_id)
    assert sorted(x["custom_id"] for x in lines) == ["a", "b"]
    assert {x["error"]["code"] for x in lines} == {"batch_cancelled"}
    assert any(r[:2] == ("POST", f"/v1/batches/{next(iter(fake.created))}/cancel")
               for r in fake.requests)


def test_a_line_the_deployment_cannot_take_is_refused(
    client: openai.OpenAI, fake: FakeTinyBatch
) -> None:
    """`to_native` raises InvalidRequestLine for line 2: the client gets a 400 naming the line
    (at upload, or when the batch is created: the core rewrites inline input as it streams),
    and no batch is created upstream."""
    with pytest.raises(openai.BadRequestError) as info:
        file_id = upload(client, [request_line("fine"), request_line("not fine")])
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    assert "Line 2" in str(info.value) and "custom_id" in str(info.value)
    assert fake.created == {}


def test_every_upstream_call_is_counted_and_carries_the_request_id(
    gateway: ServerThread, client: openai.OpenAI, fake: FakeTinyBatch
) -> None:
    """The adapter does nothing for it: its deployment's session counts each call under its
    provider and sends the gateway's request id (issue 13, for any adapter)."""
    batch = client.batches.create(input_file_id=upload(client, [request_line("m-0")]),
                                  endpoint="/v1/chat/completions", completion_window="24h",
                                  extra_headers={"x-request-id": "trace-me-42"})
    poll(client, batch.id)
    create = [h for m, p, h in fake.requests if (m, p) == ("POST", "/v1/batches")]
    assert create and create[0].get("x-client-request-id") == "trace-me-42"
    scrape = httpx.get(gateway.url + "/metrics",
                       headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30).text
    counted = [line for line in scrape.splitlines()
               if line.startswith("gateway_upstream_requests_total{")
               and 'provider="tinybatch"' in line and 'outcome="ok"' in line]
    assert counted and sum(float(line.rsplit(" ", 1)[1]) for line in counted) >= \
        len([r for r in fake.requests if r[0] != "OPTIONS"])


def test_an_upstream_failure_is_logged_with_the_deployment_never_the_key(
    client: openai.OpenAI, fake: FakeTinyBatch, caplog: pytest.LogCaptureFixture
) -> None:
    file_id = upload(client, [request_line("f-0")])
    fake.fail("POST", r"^/v1/batches$", 503, times=1)
    with caplog.at_level("INFO", logger="gateway.upstream"), \
            pytest.raises(openai.InternalServerError):
        client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.upstream"]
    assert any("upstream POST /v1/batches on deployment" in m and "HTTP 503" in m
               for m in lines), lines
    assert not any(KEY in m for m in lines)
