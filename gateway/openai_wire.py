"""A provider base for upstreams that speak OpenAI's Files + Batches wire protocol.

OpenAI itself, Azure OpenAI and many OpenAI-compatible servers share this protocol and differ
in URLs, auth and quirks; an adapter subclasses `OpenAIWireProvider` and overrides `url`,
`headers` and `error_for`.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

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
from gateway.provider import Capabilities, Provider, Submission
from gateway.types import (
    TERMINAL,
    TIMES,
    Batch,
    BatchError,
    BatchTimes,
    RequestCounts,
    ResultFile,
    ResultKind,
    Status,
    Usage,
)

_T = TypeVar("_T")
_decode = msgspec.json.decode
_CONTENT_CHUNK = 256 << 10
# OpenAI's documented header for a caller-chosen request id (ASCII, at most 512 characters):
# the gateway sends its own request id, so a provider's support can find the call.



def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `Retry-After` or the millisecond variants Azure sends."""
    lower = {k.lower(): v for k, v in headers.items()}
    for name, scale in (
        ("retry-after-ms", 1000.0),
        ("x-ms-retry-after-ms", 1000.0),
        ("retry-after", 1.0),
    ):
        value = lower.get(name)
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


class _WireBatchErrors(msgspec.Struct):
    data: list[BatchError] | None = None


class _WireBatch(BatchTimes, kw_only=True):
    """The OpenAI Batch fields the gateway reads; anything else an upstream sends is dropped."""

    id: str
    status: Status
    request_counts: RequestCounts | None = None
    usage: Usage | None = None
    errors: _WireBatchErrors | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


class OpenAIWireProvider(Provider):
    default_api_base = "https://api.openai.com/v1"

    # -- the parts subclasses change ----------------------------------------------------------

    def url(self, path: str) -> str:
        base = (self.deployment.params.api_base or self.default_api_base).rstrip("/")
        return f"{base}/{path}"

    def params(self) -> dict[str, str]:
        return {}

    async def headers(self) -> dict[str, str]:
        key = self.deployment.params.api_key
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

    def normalise_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        """The upstream's Batch JSON in OpenAI's types (for upstreams with loose shapes)."""
        return body

    def capabilities(self) -> Capabilities:
        return Capabilities(input="file")

    # -- transport -----------------------------------------------------------------------------

    @property
    def timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.deployment.params.timeout)

    @property
    def transfer_timeout(self) -> aiohttp.ClientTimeout:
        # Large transfers may take minutes in total; what must not happen is silence.
        seconds = self.deployment.params.timeout
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
        """One request: the decoded body and the response headers, or a typed error. Reads
        are tried again on a failure that may pass (see `retrying`); writes are not, since a
        second create could start a second batch."""
        attempt = functools.partial(self._send_once, method, path, json=json, data=data,
                                    query=query, timeout=timeout, ok=ok)
        if method != "GET":
            return await attempt()
        return await retrying(attempt, self.deployment.params.max_retries)

    async def _send_once(
        self,
        method: str,
        path: str,
        *,
        json: Any,
        data: Any,
        query: Mapping[str, str] | None,
        timeout: aiohttp.ClientTimeout | None,
        ok: tuple[int, ...],
    ) -> tuple[Any, Mapping[str, str]]:
        params = {**self.params(), **(query or {})}
        headers = await self.headers()
        try:
            async with self.http.request(
                method,
                self.url(path),
                params=params,
                json=json,
                data=data,
                headers=headers,
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

    async def call_object(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        """`call` for answers that must be a JSON object: anything else (a proxy's HTML page
        behind a 200) is an unavailable upstream, never passed on."""
        body = await self.call(method, path, **options)
        if not isinstance(body, dict):
            raise UpstreamUnavailable(f"{method} {path}: the answer is not a JSON object")
        return body

    # -- inputs --------------------------------------------------------------------------------

    async def put_input(self, content: AsyncIterator[bytes], name: str) -> str:
        with aiohttp.MultipartWriter("form-data") as form:
            form.append("batch").set_content_disposition("form-data", name="purpose")
            part = form.append(content, {"Content-Type": "application/jsonl"})
            part.set_content_disposition("form-data", name="file", filename=name)
            body = await self.call_object(
                "POST", "files", data=form, timeout=self.transfer_timeout, ok=(200, 201)
            )
        return self.native_id(body)

    async def delete_input(self, input_id: str) -> None:
        await self.call("DELETE", f"files/{input_id}")

    async def file_info(self, file_id: str) -> ResultFile:
        body = await self.call_object("GET", f"files/{file_id}")
        size, created = body.get("bytes"), body.get("created_at")
        return ResultFile(
            bytes=size if isinstance(size, int) else None,
            created_at=created if isinstance(created, int) else None,
        )

    async def file_content(self, file_id: str) -> AsyncIterator[bytes]:
        """Open a file's content; raises before the first chunk."""
        path = f"files/{file_id}/content"
        try:
            resp = await self.http.get(
                self.url(path),
                params=self.params(),
                headers=await self.headers(),
                timeout=self.transfer_timeout,
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{type(e).__name__}: {e}") from e
        if resp.status != 200:
            raw = await resp.read()
            resp.release()
            body = safe_decode(raw)
            raise self.error_for(resp.status, body, resp.headers)
        return _stream(resp)

    # -- batches -------------------------------------------------------------------------------

    def wire_batch(self, body: dict[str, Any]) -> _WireBatch:
        try:
            return msgspec.convert(self.normalise_batch(body), _WireBatch, strict=False)
        except msgspec.ValidationError as e:
            raise UpstreamUnavailable(f"the upstream's batch is not an OpenAI Batch: {e}") from e

    async def batch(self, body: dict[str, Any]) -> Batch:
        wire = self.wire_batch(body)
        output = error = None
        if wire.status in TERMINAL:
            # Sizes and times of result files come from the files themselves; an empty error
            # file (Azure attaches one to clean batches) is no error file.
            if wire.output_file_id:
                output = await self.file_info(wire.output_file_id)
            if wire.error_file_id:
                error = await self.file_info(wire.error_file_id)
                if error.bytes == 0:
                    error = None
        return Batch(
            id=wire.id,
            status=wire.status,
            request_counts=wire.request_counts,
            usage=wire.usage,
            errors=wire.errors.data if wire.errors is not None else None,
            output=output,
            error=error,
            **{name: getattr(wire, name) for name in TIMES},
        )

    async def submit(self, job: Submission) -> Batch:
        payload: dict[str, Any] = {
            "input_file_id": job.input_id,
            "endpoint": job.endpoint,
            "completion_window": job.completion_window,
        }
        if job.metadata:
            payload["metadata"] = dict(job.metadata)
        return await self.batch(await self.call_object("POST", "batches", json=payload,
                                                       ok=(200, 201)))

    async def poll(self, batch_id: str) -> Batch:
        return await self.batch(await self.call_object("GET", f"batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> Batch:
        return await self.batch(await self.call_object("POST", f"batches/{batch_id}/cancel"))

    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        wire = self.wire_batch(await self.call_object("GET", f"batches/{batch_id}"))
        file_id = wire.output_file_id if which == "output" else wire.error_file_id
        if not file_id:
            raise UpstreamNotFound(f"batch has no {which} file")
        return await self.file_content(file_id)

    # -- crash recovery ------------------------------------------------------------------------

    async def find_inputs(self, name: str, since: int) -> list[str]:
        # No `limit`: OpenAI's default is its maximum (10,000) and Azure takes none.
        return [f["id"] async for f in self._newest("files", {"purpose": "batch"}, since)
                if f.get("filename") == name]

    async def find_batches(self, batch_id: str, input_id: str | None, since: int) -> list[str]:
        return [b["id"] async for b in self._newest("batches", {"limit": "100"}, since)
                if input_id is not None and b.get("input_file_id") == input_id]

    async def _newest(self, path: str, query: dict[str, str],
                      since: int) -> AsyncIterator[dict[str, Any]]:
        """A list's objects, newest first, down to those created at `since`."""
        after: str | None = None
        while True:
            page = await self.call_object("GET", path,
                                          query={**query, **({"after": after} if after else {})})
            items = [i for i in page.get("data") or [] if isinstance(i, dict)
                     and isinstance(i.get("id"), str)]
            for item in items:
                created = item.get("created_at")
                if isinstance(created, int) and created < since:
                    return
                yield item
            if not items or not page.get("has_more"):
                return
            after = items[-1]["id"]

    @staticmethod
    def native_id(body: dict[str, Any]) -> str:
        native = body.get("id")
        if not isinstance(native, str) or not native:
            raise UpstreamUnavailable("the upstream's answer has no id")
        return native


# Waits between tries: exponential with full jitter, so many gateways retrying one upstream do
# not do it in step; a Retry-After longer than the longest wait is the caller's to honour.
_BACKOFF_BASE = 0.25
_BACKOFF_MAX = 2.0


async def retrying(call: Callable[[], Awaitable[_T]], retries: int) -> _T:
    """`call()`, tried up to `retries` more times while it fails with something that may pass:
    a connection failure, a timeout, 429 or a 5xx (not a refused credential)."""
    for attempt in range(retries + 1):
        try:
            return await call()
        except (UpstreamUnavailable, UpstreamRateLimited) as e:
            refused = e.upstream_status is not None and 400 <= e.upstream_status < 500 \
                and not isinstance(e, UpstreamRateLimited)
            if attempt == retries or refused or not e.retryable:  # refused stays refused
                raise
            wait = random.uniform(0, min(_BACKOFF_BASE * 2**attempt, _BACKOFF_MAX))
            if isinstance(e, UpstreamRateLimited) and e.retry_after is not None:
                if e.retry_after > _BACKOFF_MAX:
                    raise
                wait = max(wait, e.retry_after)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


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
