"""A third-party adapter for "TinyBatch" (see fake_tinybatch.py), an inline batch API shaped
like Anthropic Message Batches. Written from `docs/writing-an-adapter.md` and the public API
only: it imports from `gateway`, never from `gateway.<module>`.

    model_list:
      - model_name: tiny
        litellm_params: {model: tinybatch/tiny-1, api_key: os.environ/TINY_KEY}
        model_info: {mode: batch}
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import aiohttp
import msgspec

from gateway import (
    CHAT_COMPLETIONS,
    Batch,
    Capabilities,
    Deployment,
    InvalidRequestLine,
    LineRewrite,
    MapLines,
    Provider,
    ProviderContext,
    ProviderParams,
    RequestCounts,
    ResultFile,
    ResultKind,
    Status,
    Submission,
    Unsuitable,
    UpstreamBadRequest,
    UpstreamConflict,
    UpstreamError,
    UpstreamNotFound,
    UpstreamRateLimited,
    UpstreamUnavailable,
    hookimpl,
    lines,
    retry_after,
    safe_decode,
)

DEFAULT_API_BASE = "https://api.tinybatch.example"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_RESULT_PIECE = 64 << 10


# -- what the adapter takes from config.yaml -----------------------------------------------------


class TinyParams(ProviderParams, kw_only=True):
    """`litellm_params` of a `tinybatch/<model>` entry, checked when the config loads."""

    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 1024  # when a request sets none
    max_requests: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 100_000

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key is required")


# -- the upstream's shapes (only the fields we read) ---------------------------------------------


class _Counts(msgspec.Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class _Batch(msgspec.Struct):
    id: str
    processing_status: Literal["in_progress", "canceling", "ended"]
    request_counts: _Counts
    created_at: str
    expires_at: str | None = None
    ended_at: str | None = None
    cancel_initiated_at: str | None = None


class _Text(msgspec.Struct):
    type: str
    text: str = ""


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


class _Message(msgspec.Struct):
    id: str
    model: str
    content: list[_Text]
    stop_reason: str | None = None
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorDetail = msgspec.field(default_factory=_ErrorDetail)


class _Result(msgspec.Struct):
    type: Literal["succeeded", "errored", "canceled", "expired"]
    message: _Message | None = None
    error: _ErrorEnvelope | None = None


class _ResultLine(msgspec.Struct):
    custom_id: str
    result: _Result


_decode_batch = msgspec.json.Decoder(_Batch).decode
_decode_result = msgspec.json.Decoder(_ResultLine).decode
_encode = msgspec.json.Encoder().encode

_STATUS_CODES = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
    "api_error": 500, "overloaded_error": 529,
}
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls", "refusal": "content_filter"}


def _epoch(stamp: str | None) -> int | None:
    return None if stamp is None else int(datetime.fromisoformat(stamp).timestamp())


# -- the provider --------------------------------------------------------------------------------


class CreateBody:
    """The create request's body, `{"requests": [<line>, <line>, ...]}`, streamed: each line
    the core hands over is already a request item (see `to_native`), so it is passed on as it
    arrives and the body is never held in memory. Remembers an error raised by the input."""

    def __init__(self, job: Submission) -> None:
        self.job = job
        self.error: Exception | None = None

    async def stream(self) -> AsyncIterator[bytes]:
        yield b'{"requests":['
        separator = b""
        try:
            async for line in lines(self.job.open_input()):
                yield separator + line
                separator = b","
        except Exception as e:
            self.error = e
            raise
        yield b"]}"


class TinyBatchProvider(Provider):
    name = "tinybatch"
    Params: ClassVar[type[ProviderParams]] = TinyParams
    identity: ClassVar[tuple[str, ...]] = ("model", "api_base")

    def __init__(self, deployment: Deployment, ctx: ProviderContext) -> None:
        super().__init__(deployment, ctx)  # no I/O here: the core builds providers at start
        assert isinstance(deployment.params, TinyParams)
        self.params = deployment.params
        self.base = (self.params.api_base or DEFAULT_API_BASE).rstrip("/")

    def capabilities(self) -> Capabilities:
        return Capabilities(
            input="inline",
            endpoints=frozenset({CHAT_COMPLETIONS}),
            max_requests=self.params.max_requests,
            max_bytes=256 << 20,
            cancel=True,
            delete=False,
        )

    # -- request lines -----------------------------------------------------------------------

    def rewrite(self) -> LineRewrite:
        return MapLines(self.to_native)

    def to_native(self, line: dict[str, Any]) -> dict[str, Any]:
        """An OpenAI chat request line -> a TinyBatch request item `{custom_id, params}`."""
        custom_id = line["custom_id"]
        if not CUSTOM_ID.match(custom_id):
            raise InvalidRequestLine("custom_id", "must match ^[a-zA-Z0-9_-]{1,64}$ here")
        body = line["body"]
        if body.get("n", 1) != 1:
            raise InvalidRequestLine("body.n", "only one choice per request")
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        for i, message in enumerate(body.get("messages") or ()):
            role, content = message.get("role"), message.get("content")
            if isinstance(content, list):  # text parts
                content = "".join(p.get("text", "") for p in content if p.get("type") == "text")
            if role in ("system", "developer"):
                system.append(str(content))
            elif role in ("user", "assistant"):
                messages.append({"role": role, "content": content})
            else:
                raise InvalidRequestLine(f"body.messages[{i}].role", f"role {role!r} not taken")
        params: dict[str, Any] = {
            "model": self.deployment.model,
            "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens")
            or self.params.max_tokens,
            "messages": messages,
        }
        if system:
            params["system"] = "\n".join(system)
        if isinstance(body.get("stop"), str | list):
            stop = body["stop"]
            params["stop_sequences"] = [stop] if isinstance(stop, str) else stop
        if isinstance(body.get("temperature"), int | float):
            params["temperature"] = min(float(body["temperature"]), 1.0)
        if isinstance(body.get("user"), str):
            params["metadata"] = {"user_id": body["user"]}
        return {"custom_id": custom_id, "params": params}

    # -- transport ---------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        assert self.params.api_key is not None  # Params requires it
        return {"x-api-key": self.params.api_key, "content-type": "application/json"}

    def error_for(self, status: int, body: Any, headers: Mapping[str, str]) -> UpstreamError:
        message = str(body)[:300]
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message = str(body["error"].get("message", ""))
        if status == 404:
            return UpstreamNotFound(message, status=status)
        if status == 409:
            return UpstreamConflict(message, status=status)
        if status == 429:
            return UpstreamRateLimited(message, retry_after=retry_after(headers))
        if status in (401, 403) or status >= 500:
            return UpstreamUnavailable(message, status=status)  # the admin's problem
        return UpstreamBadRequest(message, status=status)

    async def open(self, method: str, path: str, *, data: Any = None,
                   streaming: bool = False) -> aiohttp.ClientResponse:
        """One request; the open response on 200, else a typed error. Release it after use."""
        seconds = self.params.timeout
        timeout = (aiohttp.ClientTimeout(total=None, sock_connect=seconds, sock_read=seconds)
                   if streaming else aiohttp.ClientTimeout(total=seconds))
        try:
            resp = await self.http.request(method, f"{self.base}/{path}", data=data,
                                           headers=self.headers(), timeout=timeout)
            if resp.status != 200:
                raw = await resp.read()
                resp.release()
                raise self.error_for(resp.status, safe_decode(raw), resp.headers)
            return resp
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{type(e).__name__}: {e}") from e

    async def call(self, method: str, path: str, *, data: Any = None,
                   streaming: bool = False) -> Batch:
        resp = await self.open(method, path, data=data, streaming=streaming)
        try:
            raw = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"{type(e).__name__}: {e}") from e
        finally:
            resp.release()
        try:
            return self.batch(_decode_batch(raw))
        except (msgspec.DecodeError, ValueError) as e:
            raise UpstreamUnavailable(f"not a batch object: {e}") from e

    # -- batches -----------------------------------------------------------------------------

    def batch(self, wire: _Batch) -> Batch:
        c = wire.request_counts
        ended = wire.processing_status == "ended"
        status: Status
        if wire.processing_status == "in_progress":
            status = "in_progress"
        elif wire.processing_status == "canceling":
            status = "cancelling"
        elif wire.cancel_initiated_at is not None:
            status = "cancelled"
        elif c.expired and not (c.succeeded or c.errored):
            status = "expired"
        else:
            status = "completed"
        failed = c.errored + c.canceled + c.expired
        ended_at = _epoch(wire.ended_at)
        return Batch(
            id=wire.id,
            status=status,
            # Counts are only known at the end; 0 lets the core fill in its own total.
            request_counts=RequestCounts(
                total=c.processing + c.succeeded + failed, completed=c.succeeded, failed=failed
            ),
            output=ResultFile(created_at=ended_at) if ended and c.succeeded else None,
            error=ResultFile(created_at=ended_at) if ended and failed else None,
            in_progress_at=_epoch(wire.created_at),
            expires_at=_epoch(wire.expires_at),
            cancelling_at=_epoch(wire.cancel_initiated_at),
            completed_at=ended_at if status == "completed" else None,
            cancelled_at=ended_at if status == "cancelled" else None,
            expired_at=ended_at if status == "expired" else None,
        )

    async def submit(self, job: Submission) -> Batch:
        if job.endpoint != CHAT_COMPLETIONS:
            raise Unsuitable(f"TinyBatch runs {CHAT_COMPLETIONS} only")
        body = CreateBody(job)
        try:
            return await self.call("POST", "v1/batches", data=body.stream(), streaming=True)
        except UpstreamUnavailable:
            # aiohttp reports an exception raised while reading the body as a connection
            # error; the core's own (a line this deployment cannot take, an unreadable kept
            # file) must reach the core unchanged.
            if body.error is not None:
                raise body.error from None
            raise

    async def poll(self, batch_id: str) -> Batch:
        return await self.call("GET", f"v1/batches/{batch_id}")

    async def cancel(self, batch_id: str) -> Batch:
        return await self.call("POST", f"v1/batches/{batch_id}/cancel")

    # -- results -----------------------------------------------------------------------------

    async def results(self, batch_id: str, which: ResultKind) -> AsyncIterator[bytes]:
        # Opened (and failures raised) here, before the first chunk; converted as it streams.
        resp = await self.open("GET", f"v1/batches/{batch_id}/results", streaming=True)
        return self.converted(resp, batch_id, which)

    async def converted(
        self, resp: aiohttp.ClientResponse, batch_id: str, which: ResultKind
    ) -> AsyncIterator[bytes]:
        piece = bytearray()
        try:
            async for raw in lines(resp.content.iter_chunked(_RESULT_PIECE)):
                item = _decode_result(raw)
                if (item.result.type == "succeeded") != (which == "output"):
                    continue
                piece += _encode(openai_line(batch_id, item)) + b"\n"
                if len(piece) >= _RESULT_PIECE:
                    yield bytes(piece)
                    piece.clear()
            if piece:
                yield bytes(piece)
        finally:
            resp.release()


def openai_line(batch_id: str, item: _ResultLine) -> dict[str, Any]:
    """One TinyBatch result as an OpenAI batch-output line."""
    digest = hashlib.sha256(f"{batch_id}/{item.custom_id}".encode()).hexdigest()
    line_id = "batch_req_" + digest[:24]  # the same on every read
    result = item.result
    if result.type == "succeeded" and result.message is not None:
        m = result.message
        usage = {"prompt_tokens": m.usage.input_tokens,
                 "completion_tokens": m.usage.output_tokens,
                 "total_tokens": m.usage.input_tokens + m.usage.output_tokens}
        body = {
            "id": m.id,
            "object": "chat.completion",
            "model": m.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant",
                            "content": "".join(b.text for b in m.content if b.type == "text")},
                "finish_reason": _FINISH.get(m.stop_reason or "", "stop"),
            }],
            "usage": usage,
        }
        response = {"status_code": 200, "request_id": m.id, "body": body}
        return {"id": line_id, "custom_id": item.custom_id, "response": response, "error": None}
    if result.type == "errored":
        detail = (result.error or _ErrorEnvelope()).error
        error = {"message": detail.message, "type": detail.type, "param": None, "code": None}
        response = {"status_code": _STATUS_CODES.get(detail.type, 500), "request_id": None,
                    "body": {"error": error}}
        return {"id": line_id, "custom_id": item.custom_id, "response": response, "error": None}
    code = "batch_cancelled" if result.type == "canceled" else "batch_expired"
    message = f"The request was not run: the batch was {result.type}."
    return {"id": line_id, "custom_id": item.custom_id, "response": None,
            "error": {"code": code, "message": message}}


@hookimpl
def register_providers() -> list[type[Provider]]:
    return [TinyBatchProvider]
