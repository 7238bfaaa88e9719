"""A provider base for upstreams that speak OpenAI's Files + Batches wire protocol.

OpenAI itself, Azure OpenAI and many OpenAI-compatible servers share this protocol and differ
in URLs, auth and quirks; an adapter subclasses `OpenAIWireProvider` and overrides `url`,
`headers` and `error_for`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import msgspec

from gateway.errors import (
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from gateway.provider import Provider, ProviderBatch, ProviderFile

_decode = msgspec.json.decode
_CONTENT_CHUNK = 256 << 10


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `Retry-After` or the millisecond variants Azure sends."""
    for name, scale in (
        ("retry-after-ms", 1000.0),
        ("x-ms-retry-after-ms", 1000.0),
        ("retry-after", 1.0),
    ):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) / scale
            except ValueError:
                continue
    return None


def error_message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"].get("code") or "")
    return str(body)[:500]


class OpenAIWireProvider(Provider):
    default_api_base = "https://api.openai.com/v1"

    # -- the parts subclasses change ----------------------------------------------------------

    def url(self, path: str) -> str:
        base = str(self.deployment.param("api_base", self.default_api_base)).rstrip("/")
        return f"{base}/{path}"

    def params(self) -> dict[str, str]:
        return {}

    async def headers(self) -> dict[str, str]:
        key = self.deployment.param("api_key")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def error_for(self, status: int, body: Any, headers: Mapping[str, str]) -> UpstreamError:
        message = error_message(body)
        if status == 404:
            return UpstreamNotFound(message, status=status)
        if status == 409:
            return UpstreamConflict(message, status=status)
        if status == 429:
            return UpstreamRateLimited(message, retry_after=retry_after(headers))
        if status in (401, 403) or status >= 500:
            # A credential the provider refuses is the admin's problem, not the caller's.
            return UpstreamUnavailable(message, status=status)
        return UpstreamBadRequest(message, status=status)

    def normalise_batch(self, batch: dict[str, Any]) -> ProviderBatch:
        return batch

    # -- transport -----------------------------------------------------------------------------

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=float(self.deployment.param("timeout", 60)))

    @property
    def transfer_timeout(self) -> aiohttp.ClientTimeout:
        # Large transfers may take minutes in total; what must not happen is silence.
        seconds = float(self.deployment.param("timeout", 60))
        return aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: Any = None,
        query: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[Any, Mapping[str, str]]:
        """One request: the decoded body and the response headers, or a typed error."""
        params = {**self.params(), **(query or {})}
        try:
            async with self.http.request(
                method,
                self.url(path),
                params=params,
                json=json,
                data=data,
                headers=await self.headers(),
                timeout=timeout or self.timeout,
            ) as resp:
                body = safe_decode(await resp.read())
                if resp.status not in ok:
                    raise self.error_for(resp.status, body, resp.headers)
                return body, resp.headers
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{type(e).__name__}: {e}") from e

    async def call(self, method: str, path: str, **options: Any) -> Any:
        """`send` (same keyword options), for when only the body matters. Subclasses wrap
        this for retries."""
        body, _ = await self.send(method, path, **options)
        return body

    # -- files ---------------------------------------------------------------------------------

    def file_from(self, body: dict[str, Any]) -> ProviderFile:
        return ProviderFile(
            id=body["id"],
            bytes=body.get("bytes"),
            status=body.get("status") or "processed",
            created_at=body.get("created_at"),
            filename=body.get("filename"),
            purpose=body.get("purpose"),
        )

    async def upload_file(self, content: AsyncIterator[bytes], filename: str) -> ProviderFile:
        with aiohttp.MultipartWriter("form-data") as form:
            form.append("batch").set_content_disposition("form-data", name="purpose")
            part = form.append(content, {"Content-Type": "application/jsonl"})
            part.set_content_disposition("form-data", name="file", filename=filename)
            body = await self.call(
                "POST", "files", data=form, timeout=self.transfer_timeout, ok=(200, 201)
            )
        return self.file_from(body)

    async def retrieve_file(self, file_id: str) -> ProviderFile:
        return self.file_from(await self.call("GET", f"files/{file_id}"))

    async def delete_file(self, file_id: str) -> None:
        await self.call("DELETE", f"files/{file_id}")

    async def file_content(self, file_id: str) -> AsyncIterator[bytes]:
        try:
            resp = await self.http.get(
                self.url(f"files/{file_id}/content"),
                params=self.params(),
                headers=await self.headers(),
                timeout=self.transfer_timeout,
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{type(e).__name__}: {e}") from e
        if resp.status != 200:
            raw = await resp.read()
            resp.release()
            raise self.error_for(resp.status, safe_decode(raw), resp.headers)
        return _stream(resp)

    # -- batches -------------------------------------------------------------------------------

    async def create_batch(
        self,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: Mapping[str, str] | None,
    ) -> ProviderBatch:
        payload: dict[str, Any] = {
            "input_file_id": input_file_id,
            "endpoint": endpoint,
            "completion_window": completion_window,
        }
        if metadata:
            payload["metadata"] = dict(metadata)
        body = await self.call("POST", "batches", json=payload, ok=(200, 201))
        return self.normalise_batch(body)

    async def retrieve_batch(self, batch_id: str) -> ProviderBatch:
        return self.normalise_batch(await self.call("GET", f"batches/{batch_id}"))

    async def cancel_batch(self, batch_id: str) -> ProviderBatch:
        return self.normalise_batch(await self.call("POST", f"batches/{batch_id}/cancel"))


def safe_decode(raw: bytes) -> Any:
    """JSON if it is JSON; otherwise the start of the text, for error messages."""
    try:
        return _decode(raw) if raw else None
    except msgspec.DecodeError:
        return raw[:500].decode("utf-8", "replace")


async def _stream(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.content.iter_chunked(_CONTENT_CHUNK):
            yield chunk
    finally:
        resp.release()
