"""The adapter against the fake Azure resource: URLs, auth, uploads, the pending wait, quirks
and the error envelope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import pytest
from gateway_azure import AzureProvider

from adapters.azure.tests.azure_support import (
    AzureResource,
    entra_params,
    provider_for,
    request_line,
)
from gateway import (
    ConfigError,
    Deployment,
    DeploymentFull,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.testing.conformance import byte_stream, prepared_jsonl, read_content
from gateway.testing.fake_azure import FakeEntra, token_limit_error

DEP = "gpt-4o-mini-general-deployment"
GROUP_NAME = "gpt-4o-batch"
Make = Callable[..., AzureResource]


async def upload(provider: AzureProvider, n: int = 2, **body: Any) -> str:
    data = prepared_jsonl(provider, [request_line(f"r{i}", **body) for i in range(n)])
    return (await provider.upload_file(byte_stream(data), "in.jsonl")).id


async def finish(provider: AzureProvider, batch_id: str) -> dict[str, Any]:
    for _ in range(10):
        batch = await provider.retrieve_batch(batch_id)
        if batch["status"] in ("completed", "failed", "cancelled", "expired"):
            return batch
    raise AssertionError("batch never finished")


# -- wire: URLs, versions, lines -------------------------------------------------------------


async def test_versioned_surface_urls_and_api_key(resources: Make,
                                                  http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    # The SDK-style base URL (ending /openai) is accepted too.
    provider = provider_for(http, res.params(api_base=res.url + "/openai/"))
    file_id = await upload(provider)
    method, path, query, headers, credential = res.fake.requests[-1]
    assert (method, path) == ("POST", "/openai/files")
    assert query == {"api-version": "2024-10-21"}  # the GA default
    assert credential == "api-key" and "authorization" not in headers
    lines = res.fake.file_lines(file_id)
    assert {x["body"]["model"] for x in lines} == {DEP}
    assert {x["url"] for x in lines} == {"/chat/completions"}

    batch = await provider.create_batch(file_id, "/v1/chat/completions", "24h", None)
    create = next(r for r in res.fake.requests if r[0] == "POST" and r[1] == "/openai/batches")
    assert create[2] == {"api-version": "2024-10-21"}
    assert res.fake.batches[batch["id"]]["endpoint"] == "/chat/completions"
    assert batch["endpoint"] == "/v1/chat/completions"  # Azure answered null


async def test_v1_surface(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    provider = provider_for(http, res.params(api_version="v1"))
    file_id = await upload(provider)
    _, path, query, _, _ = res.fake.requests[-1]
    assert path == "/openai/v1/files" and "api-version" not in query
    assert {x["url"] for x in res.fake.file_lines(file_id)} == {"/v1/chat/completions"}
    batch = await provider.create_batch(file_id, "/v1/chat/completions", "24h", {"a": "b"})
    assert res.fake.batches[batch["id"]]["endpoint"] == "/v1/chat/completions"
    assert (await finish(provider, batch["id"]))["status"] == "completed"


def test_prepare_line_keeps_responses_url() -> None:
    dep = Deployment(id="d", model_name=GROUP_NAME, provider="azure", model=DEP,
                     params={"api_base": "https://x.openai.azure.com", "api_key": "k"})
    provider = AzureProvider(dep, None)
    line = provider.prepare_line({**request_line("a"), "url": "/v1/responses"})
    assert line["url"] == "/v1/responses" and line["body"]["model"] == DEP



@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"api_key": "k"}, "api_base"),
        ({"api_base": "https://x.openai.azure.com"}, "api_key"),
        ({"api_base": "https://x.openai.azure.com", "tenant_id": "t", "client_id": "c"},
         "tenant_id, client_id and client_secret"),
    ],
)
def test_config_errors_name_the_deployment(params: dict[str, Any], problem: str) -> None:
    dep = Deployment(id="d", model_name=GROUP_NAME, provider="azure", model=DEP, params=params)
    with pytest.raises(ConfigError, match=problem) as info:
        AzureProvider(dep, None)
    assert GROUP_NAME in str(info.value)


def test_fake_enforces_api_version_and_key(resources: Make) -> None:
    res = resources(DEP)
    url = res.url + "/openai/batches"
    key = {"api-key": str(res.api_key)}
    assert httpx.get(url, headers=key).status_code == 404
    bad = httpx.get(url, params={"api-version": "2023-01-01"}, headers=key)
    assert bad.status_code == 400
    denied = httpx.get(url, params={"api-version": "2024-10-21"}, headers={"api-key": "nope"})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "401"
    ok = httpx.get(res.url + "/openai/v1/batches",
                   headers={"Authorization": f"Bearer {res.api_key}"})
    assert ok.status_code == 200 and "has_more" in ok.json()


# -- uploads and the pending wait ------------------------------------------------------------


async def test_upload_201_pending_then_create_waits(resources: Make,
                                                    http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=3)
    provider = provider_for(http, res.params())
    data = prepared_jsonl(provider, [request_line("a")])
    uploaded = await provider.upload_file(byte_stream(b"\xef\xbb\xbf" + data), "in.jsonl")
    assert uploaded.status == "pending" and uploaded.bytes == len(data)  # BOM stripped
    assert not res.fake.uploads[uploaded.id].startswith(b"\xef\xbb\xbf")
    batch = await provider.create_batch(uploaded.id, "/v1/chat/completions", "24h", None)
    assert batch["status"] == "validating"
    polls = [r for r in res.fake.requests if r[1] == f"/openai/files/{uploaded.id}"]
    assert len(polls) == 3  # waited until processed, then created


async def test_upload_id_from_location(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    res.fake.fail("POST", r"/files$", 201, body={"object": "file", "status": "pending"},
                  headers={"Location": f"{res.url}/openai/files/file-abc123"})
    provider = provider_for(http, res.params())
    assert (await upload(provider)).endswith("file-abc123")


async def test_upload_sends_expiry(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    provider = provider_for(http, res.params(file_expires_after=1_209_600))
    file_id = await upload(provider)
    assert res.fake.files[file_id]["expires_at"] == res.fake.files[file_id]["created_at"] \
        + 1_209_600


async def test_file_error_status_names_the_group(resources: Make,
                                                 http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    res.fake.processing_error = f"Validation failed for deployment {DEP}: bad jsonl"
    provider = provider_for(http, res.params())
    file_id = await upload(provider)
    with pytest.raises(UpstreamBadRequest) as info:
        await provider.create_batch(file_id, "/v1/chat/completions", "24h", None)
    assert DEP not in info.value.detail and GROUP_NAME in info.value.detail
    assert res.fake.creates() == 0


async def test_file_stuck_pending_is_bounded(resources: Make,
                                             http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=10_000)
    provider = provider_for(http, res.params(file_ready_timeout=0.2))
    file_id = await upload(provider)
    with pytest.raises(UpstreamUnavailable, match="pending"):
        await provider.create_batch(file_id, "/v1/chat/completions", "24h", None)
    polls = sum(1 for r in res.fake.requests if r[1].endswith(file_id))
    assert 3 <= polls < 20  # backoff, not a busy loop


# -- batches and quirks ----------------------------------------------------------------------


async def test_round_trip_keeps_azure_fields_and_restores_input(
    resources: Make, http: aiohttp.ClientSession
) -> None:
    res = resources(DEP, create_status=201)
    provider = provider_for(http, res.params())
    file_id = await upload(provider, 3)
    batch = await provider.create_batch(file_id, "/v1/chat/completions", "24h", None)
    done = await finish(provider, batch["id"])
    assert done["status"] == "completed" and done["request_counts"]["completed"] == 3
    error_file = await provider.retrieve_file(done["error_file_id"])
    assert error_file.bytes == 0  # Azure's empty error file; the core drops it
    out = [json.loads(x) for x in (await read_content(provider, done["output_file_id"]))
           .splitlines()]
    assert "content_filter_results" in out[0]["response"]["body"]["choices"][0]
    assert "prompt_filter_results" in out[0]["response"]["body"]
    # The input copy comes back with the url the user wrote.
    back = [json.loads(x) for x in (await read_content(provider, file_id)).splitlines()]
    assert {x["url"] for x in back} == {"/v1/chat/completions"}


async def test_lines_naming_another_model_fail_with_model_not_found(
    resources: Make, http: aiohttp.ClientSession
) -> None:
    res = resources(DEP)
    provider = provider_for(http, res.params())
    data = b"".join(json.dumps({**request_line(f"r{i}", model="gpt-4o-mini"),
                                "url": "/chat/completions"}).encode() + b"\n" for i in range(2))
    uploaded = await provider.upload_file(byte_stream(data), "raw.jsonl")
    batch = await provider.create_batch(uploaded.id, "/v1/chat/completions", "24h", None)
    failed = await finish(provider, batch["id"])
    assert failed["status"] == "failed"
    errors = failed["errors"]["data"]
    assert {e["code"] for e in errors} == {"model_not_found"}
    assert [e["line"] for e in errors] == [1, 2]  # Azure's strings, as ints


async def test_legacy_shapes_are_normalised(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, legacy_shapes=True)
    provider = provider_for(http, res.params())
    file_id = await upload(provider)
    created = await provider.create_batch(file_id, "/v1/chat/completions", "24h", None)
    assert created["status"] == "validating"
    assert isinstance(created["created_at"], int)
    assert created["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    statuses = []
    for _ in range(3):
        b = await provider.retrieve_batch(created["id"])
        statuses.append(b["status"])
    assert statuses == ["in_progress", "finalizing", "completed"]
    assert b["output_file_id"] and isinstance((await provider.retrieve_file(file_id)).created_at,
                                              int)


def test_normalise_batch_tolerates_azure_quirks() -> None:
    dep = Deployment(id="d", model_name=GROUP_NAME, provider="azure", model=DEP,
                     params={"api_base": "https://x.openai.azure.com", "api_key": "k"})
    provider = AzureProvider(dep, None)
    got = provider.normalise_batch({
        "id": "batch_1", "status": "Failed", "endpoint": None, "created_at":
        "2024-08-01T00:00:00Z", "completed_at": 1722470500, "failed_at": None,
        "output_file_id": "", "error_file_id": "", "request_counts": None,
        "errors": {"data": [{"code": "model_not_found", "line": "3",
                             "message": f"deployment {DEP} not found"}]},
        "input_blob": "https://acct.blob.core.windows.net/in/x.jsonl",
    })
    assert got["status"] == "failed" and got["failed_at"] == 1722470500
    assert got["created_at"] == 1722470400 and got["endpoint"] is None
    assert got["output_file_id"] is None and got["error_file_id"] is None
    assert got["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert got["errors"]["data"] == [{"code": "model_not_found", "line": 3, "param": None,
                                      "message": f"deployment {GROUP_NAME} not found"}]
    assert "input_blob" not in got


async def test_list_without_has_more(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    file_id = await upload(provider)
    made = {(await provider.create_batch(file_id, "/v1/chat/completions", "24h", None))["id"]
            for _ in range(5)}
    listed = [b["id"] async for b in provider.list_batches(limit=2)]
    assert sorted(listed) == sorted(made)
    assert [f.id async for f in provider.list_files()] == [file_id]


async def test_cancel(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    batch = await provider.create_batch(await upload(provider), "/v1/chat/completions", "24h",
                                        None)
    assert (await provider.cancel_batch(batch["id"]))["status"] == "cancelling"
    assert (await finish(provider, batch["id"]))["status"] == "cancelled"
    with pytest.raises(UpstreamConflict):
        await provider.cancel_batch(batch["id"])


# -- the error envelope ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "expected"),
    [
        (400, token_limit_error(DEP), None, DeploymentFull),
        (400, {"error": {"code": "invalidPayload", "message": "x token_limit_exceeded y"}}, None,
         DeploymentFull),
        (400, {"error": {"code": "quotaExceeded", "message": "Quota exceeded."}}, None,
         DeploymentFull),
        (429, {"error": {"code": "tooManyRequests", "message": "Slow down."}},
         {"retry-after-ms": "1500"}, UpstreamRateLimited),
        (404, {"error": {"code": "notFound", "message": "No such batch."}}, None,
         UpstreamNotFound),
        (409, {"error": {"code": "conflict", "message": "Already done."}}, None,
         UpstreamConflict),
        (400, {"error": {"code": "unexpectedEntityState", "message": "Done.",
                         "innererror": {"code": "x"}}}, None, UpstreamConflict),
        (401, {"error": {"code": "401", "message": "Access denied."}}, None,
         UpstreamUnavailable),
        (503, {"error": {"code": "serviceUnavailable", "message": "Busy."}}, None,
         UpstreamUnavailable),
        (400, {"error": {"code": "BadRequest", "message": "API version not supported"}}, None,
         UpstreamUnavailable),
        (400, {"error": {"code": "invalidPayload", "message": f"Deployment {DEP} says no."}},
         None, UpstreamBadRequest),
        (500, "<html>gateway timeout</html>", None, UpstreamUnavailable),
    ],
)
async def test_error_envelope_mapping(
    resources: Make, http: aiohttp.ClientSession, status: int, body: Any,
    headers: dict[str, str] | None, expected: type[Exception],
) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    file_id = await upload(provider)
    res.fake.fail("POST", r"/batches$", status,
                  body=body.encode() if isinstance(body, str) else body, headers=headers)
    with pytest.raises(expected) as info:
        await provider.create_batch(file_id, "/v1/chat/completions", "24h", None)
    assert DEP not in str(info.value)
    if isinstance(info.value, UpstreamRateLimited):
        assert info.value.retry_after == 1.5


# -- Entra ID ----------------------------------------------------------------------------------


async def test_entra_token_cached_and_refreshed_before_expiry(
    resources: Make, entra: tuple[FakeEntra, str], http: aiohttp.ClientSession
) -> None:
    fake_entra, _ = entra
    fake_entra.expires_in = 1  # refreshed at half-life
    res = resources(DEP, api_key=None, entra=fake_entra, processing_polls=0)
    provider = provider_for(http, res.params(**entra_params(entra)))
    # Concurrent first callers share one token fetch.
    await asyncio.gather(*(upload(provider) for _ in range(4)))
    assert len(fake_entra.tokens) == 1
    await asyncio.sleep(0.6)
    file_id = await upload(provider)
    assert len(fake_entra.tokens) == 2
    # Refreshed ahead of expiry: no request was ever refused (and rescued by a retry).
    assert {r[4] for r in res.fake.requests} == {"entra"}
    assert all("api-key" not in r[3] for r in res.fake.requests)
    assert file_id in res.fake.files


async def test_entra_revoked_token_is_replaced_once(
    resources: Make, entra: tuple[FakeEntra, str], http: aiohttp.ClientSession
) -> None:
    fake_entra, _ = entra
    res = resources(DEP, api_key=None, entra=fake_entra, processing_polls=0)
    provider = provider_for(http, res.params(**entra_params(entra)))
    file_id = await upload(provider)
    fake_entra.revoke_all()
    assert (await provider.retrieve_file(file_id)).id == file_id
    assert len(fake_entra.tokens) == 1  # a new one, after the revocation


async def test_entra_refused_secret_is_unavailable_without_leaking(
    resources: Make, entra: tuple[FakeEntra, str], http: aiohttp.ClientSession
) -> None:
    fake_entra, _ = entra
    res = resources(DEP, api_key=None, entra=fake_entra)
    params = res.params(**{**entra_params(entra), "client_secret": "wrong-secret-value"})
    provider = provider_for(http, params)
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.retrieve_file("file-x")
    assert "AADSTS7000215" in info.value.detail and "wrong-secret" not in info.value.detail
    assert provider.entra is not None and provider.entra.fetches == 1  # no retry storm
    assert res.fake.requests == []


async def test_static_azure_ad_token(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, api_key=None, ad_tokens={"static-token"})
    provider = provider_for(http, res.params(azure_ad_token="static-token"))
    file_id = await upload(provider)
    assert res.fake.requests[-1][3]["authorization"] == "Bearer static-token"
    assert (await provider.retrieve_file(file_id)).id == file_id
