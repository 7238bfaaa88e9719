"""The adapter against the fake Azure resource: params, URLs, auth, line rewrites, uploads and
the pending wait, quirks and the error envelope."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import msgspec
import pytest
from gateway_azure import AzureParams, AzureProvider

from adapters.azure.tests.azure_support import (
    ENDPOINT,
    AzureResource,
    chunks,
    entra_params,
    finish,
    job,
    provider_for,
    put_lines,
    request_line,
)
from gateway import (
    ALL_ENDPOINTS,
    BatchError,
    DeploymentFull,
    MapLines,
    RenameModel,
    RequestCounts,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.testing.conformance import deployment_for, native_lines, read_results
from gateway.testing.fake_azure import FakeEntra, token_limit_error

DEP = "gpt-4o-mini-general-deployment"
GROUP_NAME = "gpt-4o-batch"
BASE = "https://x.openai.azure.com"
Make = Callable[..., AzureResource]


def raw(**params: Any) -> dict[str, Any]:
    return {"model": f"azure/{DEP}", "api_base": BASE, "api_key": "k", **params}


# -- params: checked when the config loads ---------------------------------------------------


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"api_base": None}, r"api_base"),
        ({"api_base": ""}, r"api_base: the resource endpoint is required"),
        ({"api_base": "x.openai.azure.com"}, r"api_base: .* is not an http\(s\) URL"),
        ({"api_key": None}, r"credential is required: set api_key, azure_ad_token, or tenant_id"),
        ({"azure_ad_token": "t"}, r"exactly one credential, not api_key and azure_ad_token"),
        ({"api_key": None, "tenant_id": "t", "client_id": "c"},
         r"tenant_id, client_id and client_secret; missing client_secret"),
        ({"timeout": "abc"}, r"`\$\.timeout`"),
        ({"timeout": 0}, r"`\$\.timeout`"),
        ({"file_expires_after": 3600}, r"`\$\.file_expires_after`"),
        ({"max_requests_per_file": 200_000}, r"`\$\.max_requests_per_file`"),
        ({"file_poll_interval": 5, "file_poll_max_interval": 1}, r"file_poll_max_interval"),
        ({"model": "azure/"}, r"model: 'azure/' names no deployment"),
    ],
)
def test_bad_params_fail_conversion_naming_the_field(params: dict[str, Any],
                                                     problem: str) -> None:
    entry = {k: v for k, v in raw(**params).items() if v is not None}
    # As the config loader converts an entry (strict=False: "5" is a number, "abc" is not).
    with pytest.raises(msgspec.ValidationError, match=problem):
        msgspec.convert(entry, AzureParams, strict=False)


def test_missing_api_base_names_the_field() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"missing required field `api_base`"):
        msgspec.convert({"model": f"azure/{DEP}", "api_key": "k"}, AzureParams)


def test_deployment_for_refuses_a_bad_entry() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"`\$\.timeout`"):
        deployment_for(AzureProvider, raw(timeout="abc"))
    with pytest.raises(msgspec.ValidationError, match=r"credential is required"):
        deployment_for(AzureProvider, raw(api_key=None))


def test_params_defaults_and_credential_forms() -> None:
    p = msgspec.convert(raw(), AzureParams)
    assert (p.api_version, p.timeout, p.file_ready_timeout, p.max_requests_per_file) == (
        "2024-10-21", 60.0, 120.0, 100_000)
    assert not p.v1 and not p.entra and p.file_expires_after is None
    assert msgspec.convert(raw(api_version="preview"), AzureParams).v1
    entra = msgspec.convert(raw(api_key=None, tenant_id="t", client_id="c", client_secret="s"),
                            AzureParams)
    assert entra.entra
    static = msgspec.convert(raw(api_key=None, azure_ad_token="tok"), AzureParams)
    assert static.azure_ad_token == "tok"
    # The SDK's base URL is accepted; the resource endpoint is what requests are built on.
    for pasted in (BASE + "/openai/", BASE + "/openai/v1", BASE + "/"):
        assert msgspec.convert(raw(api_base=pasted), AzureParams).resource == BASE


async def test_capabilities_and_identity(http: aiohttp.ClientSession) -> None:
    caps = provider_for(http, raw()).capabilities()
    assert caps.input == "file" and caps.max_requests == 100_000
    assert caps.endpoints == ALL_ENDPOINTS and caps.cancel and caps.delete
    assert provider_for(http, raw(max_requests_per_file=500)).capabilities().max_requests == 500
    assert AzureProvider.identity == ("model", "api_base", "api_version")


# -- line rewrites ---------------------------------------------------------------------------


async def test_rewrite_per_surface(http: aiohttp.ClientSession) -> None:
    # v1: OpenAI's urls as they are, only body.model changes -> the byte-level fast path.
    for version in ("v1", "preview"):
        assert provider_for(http, raw(api_version=version)).rewrite() == RenameModel(DEP)
    # Versioned: the url loses `/v1` (except /v1/responses).
    rewrite = provider_for(http, raw()).rewrite()
    assert isinstance(rewrite, MapLines)
    for url, native in (("/v1/chat/completions", "/chat/completions"),
                        ("/v1/embeddings", "/embeddings"), ("/v1/completions", "/completions"),
                        ("/v1/responses", "/v1/responses")):
        line = rewrite.to_native({**request_line("a"), "url": url})
        assert (line["url"], line["body"]["model"]) == (native, DEP)


# -- wire: URLs, versions, credentials -------------------------------------------------------


async def test_versioned_surface_urls_and_api_key(resources: Make,
                                                  http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    # The SDK-style base URL (ending /openai) is accepted too.
    provider = provider_for(http, res.params(api_base=res.url + "/openai/"))
    file_id = await put_lines(provider)
    upload = next(r for r in res.fake.requests if r[0] == "POST")
    method, path, query, headers, credential = upload
    assert (method, path) == ("POST", "/openai/files")
    assert query == {"api-version": "2024-10-21"}  # the GA default
    assert credential == "api-key" and "authorization" not in headers
    lines = res.fake.file_lines(file_id)
    assert {x["body"]["model"] for x in lines} == {DEP}
    assert {x["url"] for x in lines} == {"/chat/completions"}

    batch = await provider.submit(job(file_id))
    create = next(r for r in res.fake.requests if r[0] == "POST" and r[1] == "/openai/batches")
    assert create[2] == {"api-version": "2024-10-21"}
    assert res.fake.batches[batch.id]["endpoint"] == "/chat/completions"  # like the lines
    assert batch.status == "validating"


async def test_v1_surface(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    provider = provider_for(http, res.params(api_version="v1"))
    file_id = await put_lines(provider)
    _, path, query, _, _ = next(r for r in res.fake.requests if r[0] == "POST")
    assert path == "/openai/v1/files" and "api-version" not in query
    assert {x["url"] for x in res.fake.file_lines(file_id)} == {ENDPOINT}
    batch = await provider.submit(job(file_id, metadata={"a": "b"}))
    assert res.fake.batches[batch.id]["endpoint"] == ENDPOINT
    assert res.fake.batches[batch.id]["metadata"] == {"a": "b"}
    done = await finish(provider, batch.id)
    assert done.status == "completed" and done.request_counts == RequestCounts(2, 2, 0)


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


# -- put_input and the pending wait ----------------------------------------------------------


async def test_put_input_returns_once_processed(resources: Make,
                                                http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=3)
    provider = provider_for(http, res.params())
    file_id = await put_lines(provider, 1)
    assert res.fake.files[file_id]["status"] == "processed"
    def polls() -> int:
        return sum(1 for r in res.fake.requests if r[1] == f"/openai/files/{file_id}")

    assert polls() == 3  # the upload answered `pending`; waited until processed
    batch = await provider.submit(job(file_id, 1))
    assert batch.status == "validating" and polls() == 3  # submit has nothing to wait for


async def test_upload_id_from_location(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    existing = await put_lines(provider)
    # An answer without an id: the Location header names the file.
    res.fake.fail("POST", r"/files$", 201, body={"object": "file", "status": "pending"},
                  headers={"Location": f"{res.url}/openai/files/{existing}"})
    assert await put_lines(provider) == existing


async def test_upload_sends_expiry(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    provider = provider_for(http, res.params(file_expires_after=1_209_600))
    file_id = await put_lines(provider)
    assert res.fake.files[file_id]["expires_at"] == res.fake.files[file_id]["created_at"] \
        + 1_209_600


async def test_file_error_status_names_the_group(resources: Make,
                                                 http: aiohttp.ClientSession) -> None:
    res = resources(DEP)
    res.fake.processing_error = f"Validation failed for deployment {DEP}: bad jsonl"
    provider = provider_for(http, res.params())
    with pytest.raises(UpstreamBadRequest) as info:
        await put_lines(provider)
    assert DEP not in info.value.detail and GROUP_NAME in info.value.detail
    assert res.fake.files == {}  # the useless copy was deleted
    assert res.fake.creates() == 0


async def test_file_stuck_pending_is_bounded(resources: Make,
                                             http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=10_000)
    provider = provider_for(http, res.params(file_ready_timeout=0.2))
    with pytest.raises(UpstreamUnavailable, match="pending"):
        await put_lines(provider)
    polls = sum(1 for r in res.fake.requests if r[0] == "GET" and "/files/" in r[1])
    assert 3 <= polls < 20  # backoff, not a busy loop
    assert res.fake.files == {}  # and no copy left behind that the core cannot name


async def test_delete_input(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    file_id = await put_lines(provider)
    await provider.delete_input(file_id)
    assert file_id not in res.fake.files
    with pytest.raises(UpstreamNotFound):
        await provider.delete_input(file_id)


# -- batches and quirks ----------------------------------------------------------------------


async def test_round_trip_keeps_azure_fields(resources: Make,
                                             http: aiohttp.ClientSession) -> None:
    res = resources(DEP, create_status=201)
    provider = provider_for(http, res.params())
    file_id = await put_lines(provider, 3)
    batch = await provider.submit(job(file_id, 3))
    done = await finish(provider, batch.id)
    assert done.status == "completed" and done.request_counts == RequestCounts(3, 3, 0)
    assert done.output is not None and done.output.bytes and done.output.created_at
    assert done.error is None  # Azure's zero-byte error file is no error file
    assert done.completed_at and done.in_progress_at and done.finalizing_at
    out = await read_results(provider, batch.id, "output")
    assert sorted(x["custom_id"] for x in out) == ["r0", "r1", "r2"]
    assert "content_filter_results" in out[0]["response"]["body"]["choices"][0]
    assert "prompt_filter_results" in out[0]["response"]["body"]


async def test_failed_lines_land_in_the_error_file(resources: Make,
                                                   http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    lines = [request_line("ok"), request_line("bad", metadata={"fake_fail": "true"})]
    file_id = await provider.put_input(chunks(native_lines(provider, lines)), "f.jsonl")
    done = await finish(provider, (await provider.submit(job(file_id))).id)
    assert done.request_counts == RequestCounts(2, 1, 1) and done.error is not None
    errors = await read_results(provider, done.id, "errors")
    assert [(x["custom_id"], x["response"]["status_code"]) for x in errors] == [("bad", 400)]


async def test_results_raise_before_the_first_chunk(resources: Make,
                                                    http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    with pytest.raises(UpstreamNotFound):
        await provider.results("batch_missing", "output")
    batch = await provider.submit(job(await put_lines(provider)))
    with pytest.raises(UpstreamNotFound):  # not finished: no output file yet
        await provider.results(batch.id, "output")


async def test_lines_naming_another_model_fail_with_model_not_found(
    resources: Make, http: aiohttp.ClientSession
) -> None:
    res = resources(DEP)
    provider = provider_for(http, res.params())
    data = b"".join(json.dumps({**request_line(f"r{i}", model="gpt-4o-mini"),
                                "url": "/chat/completions"}).encode() + b"\n" for i in range(2))
    file_id = await provider.put_input(chunks(data), "raw.jsonl")
    failed = await finish(provider, (await provider.submit(job(file_id))).id)
    assert failed.status == "failed" and failed.failed_at
    assert failed.errors is not None
    assert {e.code for e in failed.errors} == {"model_not_found"}
    assert [e.line for e in failed.errors] == [1, 2]  # Azure's strings, as ints


async def test_legacy_shapes_are_normalised(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, legacy_shapes=True)
    provider = provider_for(http, res.params())
    created = await provider.submit(job(await put_lines(provider)))
    assert created.status == "validating"  # "Validating"
    assert created.request_counts == RequestCounts(0, 0, 0)  # null members
    assert isinstance(created.expires_at, int)
    statuses = [(await provider.poll(created.id)).status for _ in range(3)]
    assert statuses == ["in_progress", "finalizing", "completed"]
    done = await provider.poll(created.id)
    # The output file's ISO `created_at` is Unix seconds too.
    assert done.output is not None and isinstance(done.output.created_at, int)


async def test_normalise_batch_tolerates_azure_quirks(http: aiohttp.ClientSession) -> None:
    provider = provider_for(http, raw(), group=GROUP_NAME)
    got = provider.wire_batch({
        "id": "batch_1", "status": "Failed", "endpoint": None, "created_at":
        "2024-08-01T00:00:00Z", "completed_at": 1722470500, "failed_at": None,
        "in_progress_at": "2024-08-01T00:00:10Z", "expires_at": "1722556800",
        "output_file_id": "", "error_file_id": "", "request_counts": None,
        "errors": {"data": [{"code": "model_not_found", "line": "3",
                             "message": f"deployment {DEP} not found"}, "plain text"]},
        "input_blob": "https://acct.blob.core.windows.net/in/x.jsonl",
    })
    assert got.status == "failed" and got.failed_at == 1722470500
    assert got.in_progress_at == 1722470410 and got.expires_at == 1722556800
    assert got.output_file_id is None and got.error_file_id is None
    assert got.request_counts == RequestCounts(0, 0, 0)
    assert got.errors is not None and got.errors.data == [
        BatchError(code="model_not_found", line=3, message=f"deployment {GROUP_NAME} not found"),
        BatchError(message="plain text"),
    ]
    assert not hasattr(got, "input_blob")
    # Statuses spelt otherwise, and states Azure may invent, map onto OpenAI's.
    for spelt, status in (("InProgress", "in_progress"), ("Canceling", "cancelling"),
                          ("Succeeded", "completed"), ("Queued", "in_progress")):
        assert provider.wire_batch({"id": "b", "status": spelt}).status == status
    with pytest.raises(UpstreamUnavailable):
        provider.wire_batch({"status": "completed"})


async def test_cancel(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    batch = await provider.submit(job(await put_lines(provider)))
    assert (await provider.cancel(batch.id)).status == "cancelling"
    done = await finish(provider, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and done.output is None
    with pytest.raises(UpstreamConflict):
        await provider.cancel(batch.id)


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
        (200, "<html>a proxy's page</html>", None, UpstreamUnavailable),
    ],
)
async def test_error_envelope_mapping(
    resources: Make, http: aiohttp.ClientSession, status: int, body: Any,
    headers: dict[str, str] | None, expected: type[Exception],
) -> None:
    res = resources(DEP, processing_polls=0)
    provider = provider_for(http, res.params())
    file_id = await put_lines(provider)
    res.fake.fail("POST", r"/batches$", status,
                  body=body.encode() if isinstance(body, str) else body, headers=headers)
    with pytest.raises(expected) as info:
        await provider.submit(job(file_id))
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
    await asyncio.gather(*(put_lines(provider) for _ in range(4)))
    assert len(fake_entra.tokens) == 1
    await asyncio.sleep(0.6)
    file_id = await put_lines(provider)
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
    file_id = await put_lines(provider)
    fake_entra.revoke_all()
    batch = await provider.submit(job(file_id))
    assert batch.status == "validating"
    assert len(fake_entra.tokens) == 1  # a new one, after the revocation


async def test_entra_refused_secret_is_unavailable_without_leaking(
    resources: Make, entra: tuple[FakeEntra, str], http: aiohttp.ClientSession
) -> None:
    fake_entra, _ = entra
    res = resources(DEP, api_key=None, entra=fake_entra)
    params = res.params(**{**entra_params(entra), "client_secret": "wrong-secret-value"})
    provider = provider_for(http, params)
    with pytest.raises(UpstreamUnavailable) as info:
        await provider.poll("batch_x")
    assert "AADSTS7000215" in info.value.detail and "wrong-secret" not in info.value.detail
    assert provider.entra is not None and provider.entra.fetches == 1  # no retry storm
    assert res.fake.requests == []


async def test_static_azure_ad_token(resources: Make, http: aiohttp.ClientSession) -> None:
    res = resources(DEP, api_key=None, ad_tokens={"static-token"}, processing_polls=0)
    provider = provider_for(http, res.params(azure_ad_token="static-token"))
    file_id = await put_lines(provider)
    assert res.fake.requests[-1][3]["authorization"] == "Bearer static-token"
    assert (await provider.submit(job(file_id))).status == "validating"
