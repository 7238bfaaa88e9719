"""FakeAnthropic rejects what Anthropic rejects: a missing or wrong key or version header,
a create body that is not exactly `{"requests": [{"custom_id", "params"}]}`, a bad or
duplicate custom_id, too many requests or bytes; and, when a request runs, params the Messages
API refuses (unknown fields, no max_tokens, ...), as `errored` results."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from gateway_anthropic.testing import FakeAnthropic, check_params

from adapters.anthropic.tests.anthropic_support import KEY, MODEL, Upstream

HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01",
           "content-type": "application/json"}


def item(custom_id: str = "r1", **params: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": MODEL, "max_tokens": 10,
                            "messages": [{"role": "user", "content": "hi"}]}
    base.update(params)
    return {"custom_id": custom_id, "params": {k: v for k, v in base.items() if v is not None}}


async def call(http: aiohttp.ClientSession, method: str, url: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.request(method, url, json=body,
                            headers=HEADERS if headers is None else headers) as resp:
        data = await resp.json(content_type=None) if resp.content_type != "application/binary" \
            else (await resp.read()).decode()
        return resp.status, data, resp


async def test_key_and_version_headers(upstream: Upstream, http: aiohttp.ClientSession) -> None:
    url = upstream.url + "/v1/messages/batches"
    cases = [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error",
         "x-api-key header is required"),
        ({**HEADERS, "x-api-key": "wrong"}, 401, "authentication_error", "invalid x-api-key"),
        ({"x-api-key": KEY}, 400, "invalid_request_error", "anthropic-version: header is required"),
        ({**HEADERS, "anthropic-version": "2024-10-22"}, 400, "invalid_request_error",
         'anthropic-version: "2024-10-22" is not a valid version'),
    ]
    for headers, status, kind, message in cases:
        code, body, resp = await call(http, "GET", url, headers=headers)
        assert code == status
        assert body["type"] == "error" and body["error"] == {"type": kind, "message": message}
        assert body["request_id"].startswith("req_") and resp.headers["request-id"]
    bearer = {"authorization": f"Bearer {KEY}", "anthropic-version": "2026-10-21"}
    code, body, resp = await call(http, "GET", url, headers=bearer)
    assert code == 200 and body["data"] is not None and resp.headers["request-id"]


@pytest.mark.parametrize(("body", "message"), [
    ({"requests": [item()], "extra": 1}, "extra: Extra inputs are not permitted"),
    ({}, "requests: Field required"),
    ({"requests": []}, "requests: List should have at least 1 item"),
    ({"requests": [{**item(), "metadata": {}}]}, "requests.0.metadata: Extra inputs"),
    ({"requests": [{"custom_id": "r1"}]}, "requests.0.params: Field required"),
    ({"requests": [item("has space")]}, "requests.0.custom_id: String should match pattern"),
    ({"requests": [item("x" * 65)]}, "requests.0.custom_id: String should match pattern"),
    ({"requests": [item("a"), item("a")]}, "custom_id 'a' is used more than once"),
    ({"requests": [{"custom_id": "r", "params": []}]}, "requests.0.params: Input should be"),
    ([1], "body: Input should be a valid dictionary"),
])
async def test_create_is_checked_synchronously(upstream: Upstream, http: aiohttp.ClientSession,
                                               body: Any, message: str) -> None:
    code, answer, _ = await call(http, "POST", upstream.url + "/v1/messages/batches", body)
    assert code == 400 and answer["error"]["type"] == "invalid_request_error"
    assert message in answer["error"]["message"]


async def test_request_and_size_limits(http: aiohttp.ClientSession) -> None:
    small = Upstream(max_requests=2, max_bytes=2000)
    try:
        url = small.url + "/v1/messages/batches"
        code, answer, _ = await call(http, "POST", url, {"requests": [item(f"r{i}")
                                                                      for i in range(3)]})
        assert code == 400 and "at most 2 items" in answer["error"]["message"]
        big = {"requests": [item("r", messages=[{"role": "user", "content": "x" * 3000}])]}
        code, answer, _ = await call(http, "POST", url, big)
        assert code == 413 and answer["error"]["type"] == "request_too_large"
    finally:
        small.stop()


async def test_params_are_checked_when_the_batch_runs(upstream: Upstream,
                                                      http: aiohttp.ClientSession) -> None:
    requests = [
        item("ok"),
        item("extra", frequency_penalty=0.5),
        item("no-max", max_tokens=None),
        item("system-turn", messages=[{"role": "system", "content": "x"}]),
        item("hot", temperature=1.5),
    ]
    url = upstream.url + "/v1/messages/batches"
    code, batch, _ = await call(http, "POST", url, {"requests": requests})
    assert code == 200 and batch["processing_status"] == "in_progress"
    assert batch["request_counts"]["processing"] == 5 and batch["results_url"] is None
    code, ended, _ = await call(http, "GET", f"{url}/{batch['id']}")
    assert ended["processing_status"] == "ended"
    assert ended["request_counts"] == {"processing": 0, "succeeded": 1, "errored": 4,
                                       "canceled": 0, "expired": 0}
    assert ended["results_url"] == f"{url}/{batch['id']}/results"
    code, text, _ = await call(http, "GET", ended["results_url"])
    results = {x["custom_id"]: x["result"] for x in map(json.loads, text.splitlines())}
    assert results["ok"]["type"] == "succeeded"
    messages = {k: v["error"]["error"]["message"] for k, v in results.items() if k != "ok"}
    assert messages == {
        "extra": "frequency_penalty: Extra inputs are not permitted",
        "no-max": "max_tokens: Field required",
        "system-turn": "messages.0.role: Input should be 'user' or 'assistant'",
        "hot": "temperature: Input should be less than or equal to 1",
    }


@pytest.mark.parametrize(("params", "version", "problem"), [
    ({"temperature": 1.0}, "2026-10-21", "temperature: Extra inputs are not permitted"),
    ({"top_k": 5}, "2026-10-21", "top_k: Extra inputs are not permitted"),
    ({"max_tokens": 0}, "2023-06-01", "max_tokens: Input should be greater than or equal to 1"),
    ({"messages": []}, "2023-06-01", "messages: List should have at least 1 item"),
    ({"messages": [{"role": "user", "content": "  "}]}, "2023-06-01",
     "text content blocks must contain non-whitespace text"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b "}]},
     "2023-06-01", "final assistant content cannot end with trailing whitespace"),
    ({"metadata": {"user_id": "u", "team": "a"}}, "2023-06-01",
     "metadata.team: Extra inputs are not permitted"),
    ({"stop_sequences": [" "]}, "2023-06-01", "stop sequence must contain non-whitespace"),
    ({"tool_choice": {"type": "any"}}, "2023-06-01", "tool_choice may only be specified"),
    ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "2023-06-01",
     "input_schema.type: Input should be 'object'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
        {"role": "user", "content": "no result"}]}, "2023-06-01",
     "`tool_use` ids were found without `tool_result` blocks immediately after: t1"),
    ({"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t9"}]}]}, "2023-06-01",
     "unexpected `tool_use_id` found in `tool_result` blocks: t9"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/tiff", "data": "AAAA"}}]}]}, "2023-06-01",
     "media_type: Input should be one of"),
    ({"output_config": {"format": {"type": "json_object"}}}, "2023-06-01",
     "output_config.format.type: Input should be 'json_schema'"),
    ({"stream": True}, "2023-06-01", "stream: streaming is not supported"),
])
def test_check_params(params: dict[str, Any], version: str, problem: str) -> None:
    found = check_params(item(**params)["params"], version)
    assert found is not None and problem in found


async def test_lifecycle_cancel_delete_list(upstream: Upstream, fake: FakeAnthropic,
                                            http: aiohttp.ClientSession) -> None:
    url = upstream.url + "/v1/messages/batches"
    ids = []
    for n in range(3):
        code, batch, _ = await call(http, "POST", url, {"requests": [item(f"r{n}")]})
        ids.append(batch["id"])
    code, page, _ = await call(http, "GET", f"{url}?limit=2")
    assert [b["id"] for b in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    code, page, _ = await call(http, "GET", f"{url}?limit=2&after_id={page['last_id']}")
    assert page["data"][0]["id"] == ids[0]
    code, answer, _ = await call(http, "DELETE", f"{url}/{ids[0]}")
    assert code == 409  # only once ended
    code, cancelled, _ = await call(http, "POST", f"{url}/{ids[0]}/cancel")
    assert cancelled["processing_status"] == "canceling" and cancelled["cancel_initiated_at"]
    code, answer, _ = await call(http, "GET", f"{url}/{ids[0]}/results")
    assert code == 409
    code, ended, _ = await call(http, "GET", f"{url}/{ids[0]}")
    assert ended["processing_status"] == "ended" and ended["request_counts"]["canceled"] == 1
    code, answer, _ = await call(http, "DELETE", f"{url}/{ids[0]}")
    assert (code, answer) == (200, {"id": ids[0], "type": "message_batch_deleted"})
    for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/results"),
                         ("DELETE", "")):
        code, answer, _ = await call(http, method, f"{url}/{ids[0]}{path}")
        assert code == 404 and answer["error"]["type"] == "not_found_error"
    assert fake.received("DELETE", ids[0])
