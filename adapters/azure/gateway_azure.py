"""Azure OpenAI adapter: `model: azure/<deployment name>` on Global-Batch / DataZoneBatch
deployments.

Azure speaks OpenAI's Files + Batches protocol with differences absorbed here: resources
under `{api_base}/openai/...?api-version=` (or the `/openai/v1/...` surface), `api-key` or
Entra ID auth, uploads that start `pending`, Microsoft's error envelope, and loose response
shapes (`endpoint: null`, `""` file ids, ISO timestamps, string error lines).

litellm_params: `api_base` and one credential are required: `api_key`, `azure_ad_token`, or
`tenant_id` + `client_id` + `client_secret` (client-credentials flow; `azure_authority_host`
and `azure_scope` override the token endpoint and scope). Optional: `api_version` (default
2024-10-21; `v1`/`preview` select the v1 surface), `timeout`, `file_ready_timeout`,
`file_poll_interval`, `file_poll_max_interval`, `file_expires_after` (seconds),
`token_refresh_margin`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, ClassVar

import aiohttp
import msgspec

from gateway import (
    ConfigError,
    Deployment,
    DeploymentFull,
    OpenAIWireProvider,
    ProviderBatch,
    ProviderFile,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
    hookimpl,
    retry_after,
    safe_decode,
)

DEFAULT_API_VERSION = "2024-10-21"  # GA with Files + Batches
V1_VERSIONS = frozenset({"v1", "preview"})
DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"

# The versioned API documents line urls and batch endpoints without `/v1`; the v1 surface
# documents them with it. `/v1/responses` keeps its prefix on both.
_UNPREFIXED = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
_BOM = b"\xef\xbb\xbf"
_TIMESTAMPS = (
    "created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
    "failed_at", "expired_at", "cancelling_at", "cancelled_at",
)
# Only OpenAI Batch fields reach the core: Azure extras such as `input_blob`/`output_blob`
# name storage accounts.
_BATCH_FIELDS = (
    "id", "endpoint", "errors", "input_file_id", "completion_window", "status",
    "output_file_id", "error_file_id", *_TIMESTAMPS, "request_counts", "metadata", "usage",
)
_STATUSES = {
    "validating": "validating", "in_progress": "in_progress", "inprogress": "in_progress",
    "running": "in_progress", "finalizing": "finalizing", "completed": "completed",
    "succeeded": "completed", "failed": "failed", "expired": "expired",
    "cancelling": "cancelling", "canceling": "cancelling", "cancelled": "cancelled",
    "canceled": "cancelled",
}
_NOT_READY = frozenset({"pending", "uploaded", "running"})
_CONFLICT_CODES = frozenset({"conflict", "unexpectedentitystate"})
_UNAVAILABLE_CODES = frozenset(
    {"serviceunavailable", "internalfailure", "unauthorized", "forbidden", "401", "403"}
)

_decode = msgspec.json.decode
_encode = msgspec.json.encode


def azure_url(url: str, v1: bool) -> str:
    """A request line's `url` (and a batch's `endpoint`) in the form the surface documents."""
    if v1:
        return url if url.startswith("/v1/") else "/v1" + url
    return url.removeprefix("/v1") if url in _UNPREFIXED else url


def openai_url(url: str) -> str:
    return url if url.startswith("/v1/") else "/v1" + url


def epoch(value: Any) -> int | None:
    """Unix seconds from an int, a float or an ISO-8601 string (an old Azure shape)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            pass
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            return None
    return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _line(value: Any) -> int | None:
    # Azure types `errors.data[].line` as a string.
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def azure_error(body: Any) -> tuple[str, str]:
    """(codes, message) from Microsoft's envelope, the v1 OpenAI envelope or an Entra error.

    `codes` joins `code`, `innererror.code` and `type`, lower-cased, for substring tests.
    """
    if not isinstance(body, dict):
        return "", str(body or "")[:500]
    err = body.get("error")
    if isinstance(err, str):  # Entra: {"error": "invalid_client", "error_description": ...}
        return err.lower(), str(body.get("error_description") or err)
    if not isinstance(err, dict):
        return "", str(body)[:500]
    codes = [err.get("code"), err.get("type")]
    inner = err.get("innererror") or err.get("inner_error")
    if isinstance(inner, dict):
        codes.append(inner.get("code"))
    return " ".join(str(c).lower() for c in codes if c), str(err.get("message") or "")


class EntraToken:
    """Client-credentials token for one deployment, fetched lazily and refreshed ahead of
    expiry so no request goes out with a token about to lapse."""

    def __init__(
        self, http: aiohttp.ClientSession, token_url: str, form: dict[str, str], margin: float
    ) -> None:
        self.http = http
        self.token_url = token_url
        self.form = form
        self.margin = margin
        self.fetches = 0
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._token = None

    async def get(self) -> str:
        if self._token and time.monotonic() < self._refresh_at:
            return self._token
        async with self._lock:  # one fetch for many concurrent callers
            if self._token and time.monotonic() < self._refresh_at:
                return self._token
            self._token, lifetime = await self._fetch()
            # Short-lived tokens (tests, strict tenants) refresh at half-life instead.
            self._refresh_at = time.monotonic() + lifetime - min(self.margin, lifetime / 2)
            return self._token

    async def _fetch(self) -> tuple[str, float]:
        self.fetches += 1
        try:
            async with self.http.post(
                self.token_url, data=self.form, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp:
                body = safe_decode(await resp.read())
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"Entra token endpoint: {type(e).__name__}: {e}") from e
        token = body.get("access_token") if isinstance(body, dict) else None
        if status != 200 or not isinstance(token, str):
            _, message = azure_error(body)
            # The secret is never echoed; the status and Entra's AADSTS text help the admin.
            # No `status=`: a 401 here must not look like Azure refusing a stale token.
            raise UpstreamUnavailable(f"Entra token request refused (HTTP {status}): {message}")
        return token, float(body.get("expires_in") or 3600)  # a string on some Entra versions


class AzureProvider(OpenAIWireProvider):
    name = "azure"
    max_requests_per_file: ClassVar[int] = 100_000

    def __init__(self, deployment: Deployment, http: aiohttp.ClientSession) -> None:
        super().__init__(deployment, http)
        where = f"deployment of {deployment.model_name!r} (azure/{deployment.model})"
        base = str(deployment.param("api_base", "")).rstrip("/")
        if not base:
            raise ConfigError(f"{where}: litellm_params.api_base is required for azure/")
        # People paste the SDK's base URL; the resource endpoint is what we build on.
        for suffix in ("/openai/v1", "/openai"):
            base = base.removesuffix(suffix)
        self.api_base = base
        self.api_version = str(deployment.param("api_version", DEFAULT_API_VERSION))
        self.v1 = self.api_version in V1_VERSIONS
        self.entra: EntraToken | None = None
        creds = [deployment.param(k) for k in ("tenant_id", "client_id", "client_secret")]
        if all(creds):
            tenant, client_id, secret = (str(c) for c in creds)
            authority = str(deployment.param("azure_authority_host", DEFAULT_AUTHORITY))
            self.entra = EntraToken(
                http,
                f"{authority.rstrip('/')}/{tenant}/oauth2/v2.0/token",
                {
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": secret,
                    "scope": str(deployment.param("azure_scope", DEFAULT_SCOPE)),
                },
                float(deployment.param("token_refresh_margin", 300)),
            )
        elif any(creds):
            raise ConfigError(
                f"{where}: Entra client credentials need tenant_id, client_id and client_secret"
            )
        elif not (deployment.param("api_key") or deployment.param("azure_ad_token")):
            raise ConfigError(
                f"{where}: set api_key, azure_ad_token, or tenant_id + client_id + client_secret"
            )

    # -- wire ------------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"{self.api_base}/openai/{'v1/' if self.v1 else ''}{path}"

    def params(self) -> dict[str, str]:
        if self.api_version == "v1":
            return {}
        return {"api-version": self.api_version}

    async def headers(self) -> dict[str, str]:
        key = self.deployment.param("api_key")
        if key:
            return {"api-key": str(key)}
        if self.entra is not None:
            return {"Authorization": f"Bearer {await self.entra.get()}"}
        return {"Authorization": f"Bearer {self.deployment.param('azure_ad_token')}"}

    def scrub(self, text: str) -> str:
        # Clients learn the model group, never the deployment behind it.
        return text.replace(self.deployment.model, self.deployment.model_name) \
            .replace(self.api_base, "")

    def error_for(self, status: int, body: Any, headers: Mapping[str, str]) -> UpstreamError:
        codes, message = azure_error(body)
        message = self.scrub(message)
        lowered = message.lower()
        if "token_limit_exceeded" in codes or "token_limit_exceeded" in lowered \
                or "quotaexceeded" in codes:
            return DeploymentFull(message, status=status)
        if status == 429 or "toomanyrequests" in codes:
            return UpstreamRateLimited(message, retry_after=retry_after(headers))
        if status == 404 or "notfound" in codes:
            return UpstreamNotFound(message, status=status)
        if status == 409 or any(c in codes for c in _CONFLICT_CODES):
            return UpstreamConflict(message, status=status)
        if status in (401, 403) or status >= 500 or any(c in codes for c in _UNAVAILABLE_CODES) \
                or "api version" in lowered or "api-version" in lowered:
            # Refused credentials and a wrong api_version are the admin's problem: 502.
            return UpstreamUnavailable(message, status=status)
        return UpstreamBadRequest(message, status=status)

    async def call(self, method: str, path: str, **options: Any) -> Any:
        try:
            return await super().call(method, path, **options)
        except UpstreamUnavailable as e:
            # A cached Entra token can be revoked before it expires: fetch a new one, once.
            if e.upstream_status != 401 or self.entra is None or options.get("data") is not None:
                raise
            self.entra.invalidate()
            return await super().call(method, path, **options)

    # -- request lines -----------------------------------------------------------------------

    def prepare_line(self, line: dict[str, Any]) -> dict[str, Any]:
        line["body"]["model"] = self.deployment.model  # Azure accepts only the deployment name
        line["url"] = azure_url(line["url"], self.v1)
        return line

    # -- files -------------------------------------------------------------------------------

    def file_from(self, body: dict[str, Any]) -> ProviderFile:
        if not isinstance(body, dict) or not body.get("id"):
            raise UpstreamUnavailable(f"unexpected file object: {str(body)[:200]}")
        size = body.get("bytes")
        return ProviderFile(
            id=str(body["id"]),
            bytes=size if isinstance(size, int) else None,
            status=str(body.get("status") or "processed").lower(),
            created_at=epoch(body.get("created_at")),
            filename=body.get("filename"),
            purpose=body.get("purpose"),
        )

    async def upload_file(self, content: AsyncIterator[bytes], filename: str) -> ProviderFile:
        with aiohttp.MultipartWriter("form-data") as form:
            form.append("batch").set_content_disposition("form-data", name="purpose")
            expires = self.deployment.param("file_expires_after")
            if expires:
                # Without an expiry a resource holds only 500 batch files (10,000 with one).
                for name, value in (("anchor", "created_at"), ("seconds", str(int(expires)))):
                    form.append(value).set_content_disposition(
                        "form-data", name=f"expires_after.{name}"
                    )
            part = form.append(_without_bom(content), {"Content-Type": "application/jsonl"})
            part.set_content_disposition("form-data", name="file", filename=filename)
            body, headers = await self.send(
                "POST", "files", data=form, timeout=self.transfer_timeout, ok=(200, 201)
            )
        location = headers.get("Location")
        if isinstance(body, dict) and not body.get("id") and location:
            body = {**body, "id": location.rstrip("/").rsplit("/", 1)[-1].split("?")[0]}
        return self.file_from(body)

    async def delete_file(self, file_id: str) -> None:
        await self.call("DELETE", f"files/{file_id}", ok=(200, 204))

    async def file_content(self, file_id: str) -> AsyncIterator[bytes]:
        stream = await super().file_content(file_id)
        return stream if self.v1 else _openai_urls(stream)

    async def list_files(self, purpose: str | None = "batch") -> AsyncIterator[ProviderFile]:
        """Every file of the resource (not used by the core; for admin tooling and tests)."""
        query = {"purpose": purpose} if purpose else {}
        while True:
            page = await self.call("GET", "files", query=query)
            page = page if isinstance(page, dict) else {}
            data = page.get("data") or []
            for item in data:
                yield self.file_from(item)
            # 2024-10-21 answers one page without has_more; the v1 surface pages.
            if not page.get("has_more") or not data:
                return
            query = {**query, "after": str(page.get("last_id") or data[-1]["id"])}

    async def wait_until_processed(self, file_id: str) -> None:
        """Azure refuses batches on a file still `pending`; wait, bounded, with backoff."""
        limit = float(self.deployment.param("file_ready_timeout", 120))
        delay = float(self.deployment.param("file_poll_interval", 0.5))
        cap = float(self.deployment.param("file_poll_max_interval", 10))
        deadline = time.monotonic() + limit
        while True:
            body = await self.call("GET", f"files/{file_id}")
            status = str((body or {}).get("status") or "processed").lower()
            if status in ("deleted", "deleting"):
                raise UpstreamNotFound(f"input file is {status}")
            if status == "error":
                details = self.scrub(str(body.get("status_details") or "no details given"))
                raise UpstreamBadRequest(f"the input file failed processing upstream: {details}")
            if status not in _NOT_READY:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UpstreamUnavailable(f"input file still {status!r} after {limit:g}s")
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, cap)

    # -- batches -----------------------------------------------------------------------------

    def normalise_batch(self, batch: dict[str, Any]) -> ProviderBatch:
        if not isinstance(batch, dict) or not batch.get("id"):
            raise UpstreamUnavailable(f"unexpected batch object: {str(batch)[:200]}")
        out: dict[str, Any] = {k: batch[k] for k in _BATCH_FIELDS if k in batch}
        out["object"] = "batch"
        status = str(batch.get("status") or "validating").lower()
        # An unknown state is still running as far as a client can tell.
        out["status"] = _STATUSES.get(status, "in_progress")
        for key in _TIMESTAMPS:
            out[key] = epoch(batch.get(key))
        endpoint = batch.get("endpoint")
        out["endpoint"] = openai_url(endpoint) if isinstance(endpoint, str) and endpoint else None
        for key in ("input_file_id", "output_file_id", "error_file_id"):
            out[key] = batch.get(key) or None
        counts = batch.get("request_counts")
        counts = counts if isinstance(counts, dict) else {}
        out["request_counts"] = {k: _int(counts.get(k)) for k in ("total", "completed", "failed")}
        errors = batch.get("errors")
        data = errors.get("data") if isinstance(errors, dict) else errors
        if isinstance(data, list):
            out["errors"] = {"object": "list", "data": [self._batch_error(e) for e in data]}
        else:
            out["errors"] = None
        if out["status"] == "failed" and out["failed_at"] is None:
            out["failed_at"] = out["completed_at"]  # seen in a failed-job example
        return out

    def _batch_error(self, e: Any) -> dict[str, Any]:
        e = e if isinstance(e, dict) else {"message": str(e)}
        message = e.get("message")
        return {
            "code": e.get("code"),
            "line": _line(e.get("line")),
            "message": self.scrub(message) if isinstance(message, str) else None,
            "param": e.get("param"),
        }

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None,
    ) -> ProviderBatch:
        await self.wait_until_processed(input_file_id)
        payload: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": azure_url(endpoint, self.v1),  # must match the lines' url
            "completion_window": completion_window,
        }
        if metadata:
            payload["metadata"] = dict(metadata)
        batch = self.normalise_batch(await self.call("POST", "batches", json=payload,
                                                     ok=(200, 201)))
        batch["endpoint"] = batch["endpoint"] or endpoint  # Azure often answers null
        return batch

    async def list_batches(self, limit: int = 100) -> AsyncIterator[ProviderBatch]:
        """Every batch of the resource (not used by the core; for admin tooling and tests)."""
        query = {"limit": str(limit)}
        while True:
            page = await self.call("GET", "batches", query=query)
            page = page if isinstance(page, dict) else {}
            data = page.get("data") or []
            for item in data:
                yield self.normalise_batch(item)
            more = page.get("has_more")
            if more is None:
                more = len(data) >= limit  # some versions omit has_more
            if not more or not data:
                return
            query = {**query, "after": str(page.get("last_id") or data[-1]["id"])}


async def _without_bom(content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    # Azure rejects a BOM with a misleading "deployment name couldn't be extracted" error.
    first = True
    async for chunk in content:
        if first:
            first = False
            chunk = chunk.removeprefix(_BOM)
        yield chunk


async def _openai_urls(stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Input files come back with the `/v1/...` urls the user wrote; anything else (output and
    error files) passes through untouched, Azure's extra fields included."""
    it = aiter(stream)
    head = b""
    async for chunk in it:
        head += chunk
        if b"\n" in head:
            break
    if not _is_unprefixed_request(head.split(b"\n", 1)[0]):
        if head:
            yield head
        async for chunk in it:
            yield chunk
        return
    partial = head
    while True:
        lines = partial.split(b"\n")
        partial = lines.pop()
        if lines:
            yield b"".join(_fix_url(raw) + b"\n" for raw in lines)
        try:
            partial += await anext(it)
        except StopAsyncIteration:
            break
    if partial:
        yield _fix_url(partial)


def _is_unprefixed_request(raw: bytes) -> bool:
    try:
        line = _decode(raw)
    except msgspec.DecodeError:
        return False
    return isinstance(line, dict) and "method" in line and isinstance(line.get("url"), str) \
        and not line["url"].startswith("/v1/")


def _fix_url(raw: bytes) -> bytes:
    if not raw.strip():
        return raw
    try:
        line = _decode(raw)
    except msgspec.DecodeError:
        return raw
    if isinstance(line, dict) and isinstance(line.get("url"), str):
        line["url"] = openai_url(line["url"])
        return _encode(line)
    return raw


@hookimpl
def register_providers() -> list[type[AzureProvider]]:
    return [AzureProvider]
