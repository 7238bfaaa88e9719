"""FakeAnthropic: a faithful fake of Anthropic's Message Batches API, for tests.

A starlette app; run it with `gateway.testing.servers.ServerThread(fake.app)`. What it does, as
the real service does (sources: Anthropic's API reference and batch guide, the SDK's types):

- Every call: the key in `x-api-key` (or `Authorization: Bearer`), else 401
  `authentication_error`; an `anthropic-version` header naming a real version (`2023-01-01`,
  `2023-06-01`, `2026-10-21`), else 400 `invalid_request_error` ("anthropic-version: header is
  required" / "... is not a valid version"). Errors use the envelope
  `{"type": "error", "error": {"type", "message"}, "request_id"}`; every answer carries a
  `request-id` header.
- `POST /v1/messages/batches`: checked synchronously: the body is exactly `{"requests": [...]}`
  (1..100,000 items, at most 256 MB, else 413 `request_too_large`), each item exactly
  `{"custom_id", "params"}`, custom_ids matching `^[a-zA-Z0-9_-]{1,64}$` and unique, `params`
  an object. `params` themselves are validated when the request runs, as upstream does ("Validation
  of the params object ... is performed asynchronously"): an unknown field ("Extra inputs are
  not permitted"), a missing `max_tokens`, a bad block or tool pairing, sampling parameters
  under `2026-10-21` ... make that request `errored` (`check_params`).
- `GET /v1/messages/batches/{id}`: by default every retrieve moves a batch one step on:
  `in_progress` -> `ended` (each request run), `canceling` -> `ended` (requests not run become
  `canceled`; `in_flight_on_cancel` of them still finish). With `processing_seconds` set, a
  batch ends on the first access that long after its creation instead. A batch still running at
  its `expires_at` ends with the rest `expired` (`expire()` moves `expires_at` to now).
  Request counts other than `processing` stay 0 until the end; `results_url` (absolute) is set
  only once ended.
- `POST .../{id}/cancel`: `in_progress` -> `canceling`; `DELETE .../{id}`: only once ended
  (`{"id", "type": "message_batch_deleted"}`); `GET .../{id}/results`: JSONL, one line per
  request in reverse order (results come in any order), only once ended; `GET
  /v1/messages/batches`: newest first, `limit` / `after_id` / `before_id`. Cancel, delete or
  results in the wrong state answer 409 `conflict_error` [the real status is unverified]; an
  archived batch's results (`archive()`) are 404. Unknown ids are 404 `not_found_error`.

A request that runs succeeds with `"echo: " + <its last user text>` (truncated at
`max_tokens` -> `stop_reason: max_tokens`; cut at a stop sequence; a `tool_use` block when
`tool_choice` is `any` or `tool`; JSON when `output_config.format` is set), except when
`params.metadata.user_id` is `"fail"` (the failure marker): `errored`, 400
`invalid_request_error`.

For tests: `requests` (every request received: method, path, query, headers), `created`
(batch id -> the create body as received), `chunked` (batch id -> whether that body came
chunked), `batches`, and `fail(...)` to inject errors.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import msgspec
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

VERSIONS = frozenset({"2023-01-01", "2023-06-01", "2026-10-21"})
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
MAX_REQUESTS = 100_000
MAX_BYTES = 256 << 20
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 409: "conflict_error",
    413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error",
}
PARAMS = frozenset({
    "model", "max_tokens", "messages", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "output_config",
    "service_tier", "container", "context_management", "mcp_servers", "inference_geo",
})
SAMPLING = frozenset({"temperature", "top_p", "top_k"})


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def _request_id() -> str:
    return "req_" + secrets.token_hex(12)


def error_body(status: int, message: str, kind: str | None = None) -> dict[str, Any]:
    return {"type": "error",
            "error": {"type": kind or ERROR_TYPES.get(status, "api_error"), "message": message},
            "request_id": _request_id()}


def _error(status: int, message: str, headers: dict[str, str] | None = None,
           kind: str | None = None) -> Response:
    return Response(msgspec.json.encode(error_body(status, message, kind)), status,
                    headers=headers, media_type="application/json")


def _json(obj: Any) -> Response:
    return Response(msgspec.json.encode(obj), 200, media_type="application/json")


class Received(NamedTuple):
    method: str
    path: str
    query: str
    headers: dict[str, str]


@dataclass
class FakeBatch:
    id: str
    requests: list[dict[str, Any]]
    version: str
    created_at: datetime
    expires_at: datetime
    status: str = "in_progress"  # in_progress | canceling | ended
    ended_at: datetime | None = None
    cancel_initiated_at: datetime | None = None
    archived_at: datetime | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if self.status == "ended":
            for line in self.results:
                counts[line["result"]["type"]] += 1
        else:
            counts["processing"] = len(self.requests)
        return counts


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    headers: dict[str, str] | None
    raw: bytes | None


class FakeAnthropic:
    def __init__(
        self,
        api_key: str = "sk-ant-test",
        *,
        processing_seconds: float | None = None,
        expires_after: timedelta = timedelta(hours=24),
        max_requests: int = MAX_REQUESTS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.api_key = api_key
        self.processing_seconds = processing_seconds
        self.expires_after = expires_after
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.in_flight_on_cancel = 0  # requests that still finish when a cancel ends a batch
        self.batches: dict[str, FakeBatch] = {}
        self.created: dict[str, dict[str, Any]] = {}
        self.chunked: dict[str, bool] = {}
        self.requests: list[Received] = []
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        router = Starlette(routes=[
            Route("/v1/messages/batches", self._create, methods=["POST"]),
            Route("/v1/messages/batches", self._list, methods=["GET"]),
            Route("/v1/messages/batches/{id}", self._get, methods=["GET"]),
            Route("/v1/messages/batches/{id}", self._delete, methods=["DELETE"]),
            Route("/v1/messages/batches/{id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/messages/batches/{id}/results", self._results, methods=["GET"]),
        ])
        self.app = _Gate(router, self)

    # -- test controls ---------------------------------------------------------------------------

    def fail(self, method: str, path_regex: str, status: int, times: int = 1,
             headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        """Answer the next `times` requests matching (`*` for any method) with `status` and
        the error envelope (or `raw`, as an edge proxy's page would be)."""
        with self._lock:
            self._faults.append(_Fault(method, re.compile(path_regex), status, times, headers,
                                       raw))

    def take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in ("*", method) and fault.path.search(path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def expire(self, batch_id: str, processed: int = 0) -> None:
        """The batch reaches its `expires_at` now: the next access ends it, `processed` of
        its requests run and the rest `expired`."""
        with self._lock:
            batch = self.batches[batch_id]
            batch.expires_at = _now()
            batch.results = [self._run(batch, item) for item in batch.requests[:processed]]

    def finish(self, batch_id: str) -> None:
        """End the batch now, as if its requests had all run."""
        with self._lock:
            batch = self.batches[batch_id]
            if batch.status != "ended":
                self._end(batch)

    def archive(self, batch_id: str) -> None:
        """As 29 days after creation: the batch stays, its results are gone."""
        with self._lock:
            self.batches[batch_id].archived_at = _now()

    def received(self, method: str, path_regex: str) -> list[Received]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method and pattern.search(r.path)]

    # -- routes ----------------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        raw = bytearray()
        try:
            async for chunk in request.stream():
                raw += chunk
                if len(raw) > self.max_bytes:
                    return _error(413, f"Request exceeds the maximum size of {self.max_bytes} "
                                       "bytes.")
        except ClientDisconnect:  # the client stopped sending (its input broke off)
            return _error(400, "The request body was cut off.")
        try:
            body = msgspec.json.decode(bytes(raw))
        except msgspec.DecodeError:
            return _error(400, "There was an issue with your request body: invalid JSON.")
        problem = self._check_create(body)
        if problem:
            return _error(400, problem)
        now = _now()
        batch = FakeBatch(id="msgbatch_" + secrets.token_hex(12), requests=body["requests"],
                          version=request.headers["anthropic-version"], created_at=now,
                          expires_at=now + self.expires_after)
        with self._lock:
            self.batches[batch.id] = batch
            self.created[batch.id] = body
            self.chunked[batch.id] = "chunked" in request.headers.get("transfer-encoding", "")
            return _json(self._view(batch, request))

    def _check_create(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "body: Input should be a valid dictionary"
        for key in body:
            if key != "requests":
                return f"{key}: Extra inputs are not permitted"
        items = body.get("requests")
        if items is None:
            return "requests: Field required"
        if not isinstance(items, list):
            return "requests: Input should be a valid list"
        if not items:
            return "requests: List should have at least 1 item after validation, not 0"
        if len(items) > self.max_requests:
            return (f"requests: List should have at most {self.max_requests} items after "
                    f"validation, not {len(items)}")
        seen: set[str] = set()
        for i, item in enumerate(items):
            where = f"requests.{i}"
            if not isinstance(item, dict):
                return f"{where}: Input should be a valid dictionary"
            for key in item:
                if key not in ("custom_id", "params"):
                    return f"{where}.{key}: Extra inputs are not permitted"
            for key in ("custom_id", "params"):
                if key not in item:
                    return f"{where}.{key}: Field required"
            custom_id = item["custom_id"]
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                return f"{where}.custom_id: String should match pattern '{CUSTOM_ID.pattern}'"
            if custom_id in seen:
                return (f"requests: custom_id '{custom_id}' is used more than once; each "
                        "custom_id must be unique within the batch")
            seen.add(custom_id)
            if not isinstance(item["params"], dict):
                return f"{where}.params: Input should be a valid dictionary"
        return None

    def _find(self, request: Request) -> FakeBatch | Response:
        batch_id = request.path_params["id"]
        batch = self.batches.get(batch_id)
        if batch is None:
            return _error(404, f"Message batch '{batch_id}' not found.")
        self._tick(batch, request.method == "GET" and request.url.path.endswith(batch_id))
        return batch

    async def _get(self, request: Request) -> Response:
        with self._lock:
            batch = self._find(request)
            if isinstance(batch, Response):
                return batch
            return _json(self._view(batch, request))

    async def _list(self, request: Request) -> Response:
        query = request.query_params
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            return _error(400, "limit: Input should be a valid integer")
        if not 1 <= limit <= 1000:
            return _error(400, "limit: Input should be between 1 and 1000")
        with self._lock:
            for batch in self.batches.values():
                self._tick(batch, False)
            newest = list(reversed(self.batches.values()))
            ids = [b.id for b in newest]
            if "after_id" in query:
                if query["after_id"] not in ids:
                    return _error(404, f"Message batch '{query['after_id']}' not found.")
                newest = newest[ids.index(query["after_id"]) + 1:]
                page = newest[:limit]
                more = len(newest) > limit
            elif "before_id" in query:
                if query["before_id"] not in ids:
                    return _error(404, f"Message batch '{query['before_id']}' not found.")
                newest = newest[:ids.index(query["before_id"])]
                page = newest[-limit:]
                more = len(newest) > limit
            else:
                page = newest[:limit]
                more = len(newest) > limit
            data = [self._view(b, request) for b in page]
        return _json({"data": data, "has_more": more,
                      "first_id": data[0]["id"] if data else None,
                      "last_id": data[-1]["id"] if data else None})

    async def _cancel(self, request: Request) -> Response:
        with self._lock:
            batch = self._find(request)
            if isinstance(batch, Response):
                return batch
            if batch.status == "ended":
                return _error(409, f"Message batch '{batch.id}' has already ended and cannot "
                                   "be canceled.")
            batch.status = "canceling"
            batch.cancel_initiated_at = batch.cancel_initiated_at or _now()
            return _json(self._view(batch, request))

    async def _delete(self, request: Request) -> Response:
        with self._lock:
            batch = self._find(request)
            if isinstance(batch, Response):
                return batch
            if batch.status != "ended":
                return _error(409, f"Message batch '{batch.id}' is still processing; cancel it "
                                   "and wait for it to end before deleting it.")
            del self.batches[batch.id]
            return _json({"id": batch.id, "type": "message_batch_deleted"})

    async def _results(self, request: Request) -> Response:
        with self._lock:
            batch = self._find(request)
            if isinstance(batch, Response):
                return batch
            if batch.status != "ended":
                return _error(409, f"Message batch '{batch.id}' is still processing; results "
                                   "are available once it has ended.")
            if batch.archived_at is not None:
                return _error(404, f"The results of message batch '{batch.id}' have expired.")
            lines = [msgspec.json.encode(r) + b"\n" for r in reversed(batch.results)]
        return Response(b"".join(lines), 200, media_type="application/binary")

    # -- the lifecycle (lock held) ----------------------------------------------------------------

    def _tick(self, batch: FakeBatch, retrieved: bool) -> None:
        if batch.status == "ended":
            return
        now = _now()
        if now >= batch.expires_at:
            self._end(batch, leftover="expired")
        elif batch.status == "canceling" and (retrieved or self.processing_seconds is not None):
            self._end(batch, leftover="canceled", in_flight=self.in_flight_on_cancel)
        elif self.processing_seconds is None:
            if retrieved:
                self._end(batch)
        elif (now - batch.created_at).total_seconds() >= self.processing_seconds:
            self._end(batch)

    def _end(self, batch: FakeBatch, leftover: str | None = None, in_flight: int = 0) -> None:
        done = {line["custom_id"] for line in batch.results}
        run = in_flight if leftover else len(batch.requests)
        for item in batch.requests:
            if item["custom_id"] in done:
                continue
            if run > 0:
                batch.results.append(self._run(batch, item))
                run -= 1
            else:
                batch.results.append({"custom_id": item["custom_id"],
                                      "result": {"type": leftover}})
        batch.status = "ended"
        batch.ended_at = _now()

    def _run(self, batch: FakeBatch, item: dict[str, Any]) -> dict[str, Any]:
        params = item["params"]
        problem = check_params(params, batch.version)
        if problem is None and (params.get("metadata") or {}).get("user_id") == "fail":
            problem = "failure requested by metadata.user_id"
        if problem is not None:
            return {"custom_id": item["custom_id"], "result": {"type": "errored", "error": {
                "type": "error",
                "error": {"type": "invalid_request_error", "message": problem},
                "request_id": None,
            }}}
        return {"custom_id": item["custom_id"],
                "result": {"type": "succeeded", "message": reply(params)}}

    def _view(self, batch: FakeBatch, request: Request) -> dict[str, Any]:
        base = str(request.base_url).rstrip("/")
        ended = batch.status == "ended"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": batch.counts(),
            "created_at": _stamp(batch.created_at),
            "expires_at": _stamp(batch.expires_at),
            "ended_at": _stamp(batch.ended_at),
            "cancel_initiated_at": _stamp(batch.cancel_initiated_at),
            "archived_at": _stamp(batch.archived_at),
            "results_url": f"{base}/v1/messages/batches/{batch.id}/results" if ended else None,
        }


class _Gate:
    """Records every request, answers injected faults, checks the key and the version, and
    puts a `request-id` on every answer."""

    def __init__(self, app: Any, fake: FakeAnthropic) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope["headers"]}
        method, path = scope["method"], scope["path"]
        with self.fake._lock:
            self.fake.requests.append(Received(method, path,
                                               scope.get("query_string", b"").decode(), headers))
        request_id = _request_id()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"request-id", request_id.encode())]}
            await send(message)

        key = headers.get("x-api-key")
        bearer = headers.get("authorization", "")
        if key is None and bearer.lower().startswith("bearer "):
            key = bearer[7:].strip()
        version = headers.get("anthropic-version")
        fault = self.fake.take_fault(method, path)
        response: Response
        if fault is not None:
            if fault.raw is not None:
                response = Response(fault.raw, fault.status, headers=fault.headers,
                                    media_type="text/html")
            else:
                response = _error(fault.status, "Injected failure.", fault.headers)
        elif key is None:
            response = _error(401, "x-api-key header is required")
        elif key != self.fake.api_key:
            response = _error(401, "invalid x-api-key")
        elif version is None:
            response = _error(400, "anthropic-version: header is required")
        elif version not in VERSIONS:
            response = _error(400, f'anthropic-version: "{version}" is not a valid version')
        else:
            await self.app(scope, receive, send_with_id)
            return
        await response(scope, receive, send_with_id)


# -- params: the Messages API's checks ----------------------------------------------------------


def check_params(params: Any, version: str = "2023-06-01") -> str | None:
    """What Anthropic says about a Messages create body (as a batch request's `params`):
    None when it would run, else the error message (pydantic-style `path: message`)."""
    if not isinstance(params, dict):
        return "params: Input should be a valid dictionary"
    allowed = PARAMS - SAMPLING if version == "2026-10-21" else PARAMS
    for key in params:
        if key not in allowed:
            return f"{key}: Extra inputs are not permitted"
    for key in ("model", "max_tokens", "messages"):
        if key not in params:
            return f"{key}: Field required"
    if not isinstance(params["model"], str) or not params["model"]:
        return "model: Input should be a valid string"
    max_tokens = params["max_tokens"]
    if not _int(max_tokens) or max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    if params.get("stream"):
        return "stream: streaming is not supported in Message Batches"
    checks = (_check_system(params.get("system")), _check_metadata(params.get("metadata")),
              _check_stop(params.get("stop_sequences")), _check_sampling(params),
              _check_tools(params.get("tools"), params.get("tool_choice")),
              _check_output_config(params.get("output_config")),
              _check_thinking(params.get("thinking"), max_tokens),
              _check_messages(params["messages"], version))
    return next((c for c in checks if c is not None), None)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _blank(text: Any) -> bool:
    return not isinstance(text, str) or not text.strip()


def _check_system(system: Any) -> str | None:
    if system is None or isinstance(system, str):
        return None
    if not isinstance(system, list):
        return "system: Input should be a valid string or list"
    for i, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            return f"system.{i}.type: Input should be 'text'"
        if _blank(block.get("text")):
            return "system: text content blocks must contain non-whitespace text"
    return None


def _check_metadata(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "metadata: Input should be a valid dictionary"
    for key in metadata:
        if key != "user_id":
            return f"metadata.{key}: Extra inputs are not permitted"
    user_id = metadata.get("user_id")
    if user_id is not None and (not isinstance(user_id, str) or len(user_id) > 256):
        return "metadata.user_id: String should have at most 256 characters"
    return None


def _check_stop(stop: Any) -> str | None:
    if stop is None:
        return None
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        return "stop_sequences: Input should be a valid list of strings"
    if any(_blank(s) for s in stop):
        return "stop_sequences: each stop sequence must contain non-whitespace"
    return None


def _check_sampling(params: dict[str, Any]) -> str | None:
    for name, top in (("temperature", 1.0), ("top_p", 1.0)):
        value = params.get(name)
        if value is not None and (not _number(value) or not 0 <= value <= top):
            return f"{name}: Input should be less than or equal to {top:g}"
    top_k = params.get("top_k")
    if top_k is not None and (not _int(top_k) or top_k < 0):
        return "top_k: Input should be greater than or equal to 0"
    return None


def _check_tools(tools: Any, choice: Any) -> str | None:
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict):
                return f"tools.{i}: Input should be a valid dictionary"
            if tool.get("type", "custom") != "custom":
                names.append(str(tool.get("name")))  # a server tool: not checked here
                continue
            for key in tool:
                if key not in ("type", "name", "description", "input_schema", "cache_control",
                               "strict", "input_examples"):
                    return f"tools.{i}.custom.{key}: Extra inputs are not permitted"
            name = tool.get("name")
            if not isinstance(name, str) or not TOOL_NAME.match(name):
                return f"tools.{i}.custom.name: String should match pattern '{TOOL_NAME.pattern}'"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict):
                return f"tools.{i}.custom.input_schema: Field required"
            if schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
            if "strict" in tool and not isinstance(tool["strict"], bool):
                return f"tools.{i}.custom.strict: Input should be a valid boolean"
            if name in names:
                return "tools: Tool names must be unique."
            names.append(name)
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice: Input tag does not match any of the expected tags: 'auto', " \
               "'any', 'tool', 'none'"
    allowed = {"type", "disable_parallel_tool_use"} | ({"name"} if choice["type"] == "tool"
                                                         else set())
    for key in choice:
        if key not in allowed:
            return f"tool_choice.{choice['type']}.{key}: Extra inputs are not permitted"
    if "disable_parallel_tool_use" in choice:
        if choice["type"] == "none":
            return "tool_choice.none.disable_parallel_tool_use: Extra inputs are not permitted"
        if not isinstance(choice["disable_parallel_tool_use"], bool):
            return (f"tool_choice.{choice['type']}.disable_parallel_tool_use: Input should be "
                    "a valid boolean")
    if choice["type"] in ("any", "tool") and not names:
        return "tool_choice: tool_choice may only be specified while providing tools."
    if choice["type"] == "tool" and choice.get("name") not in names:
        return f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in provided tools"
    return None


def _check_output_config(config: Any) -> str | None:
    if config is None:
        return None
    if not isinstance(config, dict):
        return "output_config: Input should be a valid dictionary"
    for key in config:
        if key not in ("format", "effort"):
            return f"output_config.{key}: Extra inputs are not permitted"
    fmt = config.get("format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            return "output_config.format.type: Input should be 'json_schema'"
        if set(fmt) - {"type", "schema"}:
            return "output_config.format: Extra inputs are not permitted"
        if not isinstance(fmt.get("schema"), dict):
            return "output_config.format.schema: Field required"
    effort = config.get("effort")
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        return "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
    return None


def _check_thinking(thinking: Any, max_tokens: int) -> str | None:
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind in ("adaptive", "disabled"):
        return None
    if kind != "enabled":
        return "thinking: Input tag does not match any of the expected tags"
    budget = thinking.get("budget_tokens")
    if not _int(budget) or budget < 1024:
        return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if budget >= max_tokens:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    return None


_BLOCKS = {
    "user": frozenset({"text", "image", "document", "tool_result", "search_result"}),
    "assistant": frozenset({"text", "tool_use", "thinking", "redacted_thinking", "document",
                            "server_tool_use"}),
}


def _check_messages(messages: Any, version: str) -> str | None:
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: List should have at least 1 item after validation, not 0"
    asked: set[str] = set()  # tool_use ids of the previous assistant message
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            return f"{where}: Input should be a valid dictionary"
        for key in message:
            if key not in ("role", "content"):
                return f"{where}.{key}: Extra inputs are not permitted"
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant"):
            return f"{where}.role: Input should be 'user' or 'assistant'"
        final = i == len(messages) - 1
        if isinstance(content, str):
            if not content and not (final and role == "assistant"):
                return f"{where}: all messages must have non-empty content except for the " \
                       "optional final assistant message"
            blocks = [{"type": "text", "text": content}] if content else []
        elif isinstance(content, list):
            if not content and not (final and role == "assistant"):
                return f"{where}: all messages must have non-empty content except for the " \
                       "optional final assistant message"
            blocks = content
        else:
            return f"{where}.content: Input should be a valid string or list"
        answered: set[str] = set()
        used: set[str] = set()
        seen_other = False
        for j, block in enumerate(blocks):
            at = f"{where}.content.{j}"
            if not isinstance(block, dict) or block.get("type") not in _BLOCKS[role]:
                kind = block.get("type") if isinstance(block, dict) else None
                return f"{at}: Input tag '{kind}' found using 'type' does not match any of the " \
                       f"expected tags for a {role} message"
            problem = _check_block(block, at, role, version)
            if problem:
                return problem
            if block["type"] == "tool_result":
                if seen_other:
                    return f"{where}: `tool_result` blocks must come first in the content of " \
                           "a user message"
                if block["tool_use_id"] not in asked:
                    return (f"{at}: unexpected `tool_use_id` found in `tool_result` blocks: "
                            f"{block['tool_use_id']}. Each `tool_result` block must have a "
                            "corresponding `tool_use` block in the previous message.")
                answered.add(block["tool_use_id"])
            else:
                seen_other = True
            if block["type"] == "tool_use":
                if block["id"] in used:
                    return f"{at}: `tool_use` ids must be unique"
                used.add(block["id"])
        if asked - answered:
            return (f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(sorted(asked - answered))}. Each `tool_use` "
                    "block must have a corresponding `tool_result` block in the next message.")
        asked = used if role == "assistant" else set()
        if final and role == "assistant" and blocks:
            last = blocks[-1]
            if last.get("type") == "text" and last["text"] != last["text"].rstrip():
                return "messages: final assistant content cannot end with trailing whitespace"
    if asked:
        return (f"messages.{len(messages) - 1}: `tool_use` ids were found without "
                f"`tool_result` blocks immediately after: {', '.join(sorted(asked))}")
    return None


def _check_block(block: dict[str, Any], at: str, role: str, version: str) -> str | None:
    kind = block["type"]
    if kind == "text":
        if _blank(block.get("text")):
            return "messages: text content blocks must contain non-whitespace text"
        if version == "2026-10-21" and role == "user" and block.get("citations"):
            return f"{at}.citations: citations are not accepted in user messages"
    elif kind == "image":
        return _check_source(block.get("source"), f"{at}.source", IMAGE_TYPES)
    elif kind == "document":
        if version == "2026-10-21" and role == "assistant":
            return f"{at}: document blocks are not accepted in assistant messages"
        return _check_source(block.get("source"), f"{at}.source",
                             frozenset({"application/pdf"}))
    elif kind == "tool_use":
        if not isinstance(block.get("id"), str) or not TOOL_ID.match(block["id"]):
            return f"{at}.id: String should match pattern '{TOOL_ID.pattern}'"
        if not isinstance(block.get("name"), str):
            return f"{at}.name: Field required"
        if not isinstance(block.get("input"), dict):
            return f"{at}.input: Input should be a valid dictionary"
    elif kind == "tool_result":
        if not isinstance(block.get("tool_use_id"), str):
            return f"{at}.tool_use_id: Field required"
        content = block.get("content")
        if content is not None and not isinstance(content, str):
            if not isinstance(content, list):
                return f"{at}.content: Input should be a valid string or list"
            for k, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                    return f"{at}.content.{k}: Input tag does not match 'text' or 'image'"
                if part["type"] == "text" and _blank(part.get("text")):
                    return "messages: text content blocks must contain non-whitespace text"
        if "is_error" in block and not isinstance(block["is_error"], bool):
            return f"{at}.is_error: Input should be a valid boolean"
    return None


def _check_source(source: Any, at: str, media_types: frozenset[str]) -> str | None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        assert isinstance(source, dict)
        if source.get("media_type") not in media_types:
            return f"{at}.base64.media_type: Input should be one of {sorted(media_types)}"
        if _blank(source.get("data")):
            return f"{at}.base64.data: Field required"
        return None
    if kind == "url":
        assert isinstance(source, dict)
        url = source.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return f"{at}.url.url: Input should be a valid URL"
        return None
    if kind == "file":
        return None
    return f"{at}: Input tag '{kind}' found using 'type' does not match any of the expected tags"


# -- answers -------------------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or ():
        if block.get("type") == "text":
            parts.append(block["text"])
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content")))
    return " ".join(p for p in parts if p)


def tokens(text: str) -> int:
    """The fake's token count: a token per 4 characters, at least 1."""
    return max(1, math.ceil(len(text) / 4))


def reply(params: dict[str, Any]) -> dict[str, Any]:
    """The Message a request that runs answers with."""
    users = [m for m in params["messages"] if m["role"] == "user"]
    said = _text_of(users[-1]["content"]) if users else ""
    prompt = tokens(msgspec.json.encode([params.get("system"), params["messages"]]).decode())
    choice = params.get("tool_choice") or {}
    content: list[dict[str, Any]]
    stop_sequence = None
    if choice.get("type") in ("any", "tool"):
        name = choice.get("name") or params["tools"][0]["name"]
        content = [{"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": name,
                    "input": {"echo": said}}]
        stop_reason = "tool_use"
        out = 16
    else:
        text = "echo: " + said
        if (params.get("output_config") or {}).get("format"):
            text = msgspec.json.encode({"echo": said}).decode()
        stop_reason = "end_turn"
        for sequence in params.get("stop_sequences") or ():
            if sequence in text:
                text, stop_reason, stop_sequence = text[:text.index(sequence)], "stop_sequence", \
                    sequence
        if tokens(text) > params["max_tokens"]:
            text, stop_reason = text[:params["max_tokens"] * 4], "max_tokens"
        content = [{"type": "text", "text": text}]
        out = tokens(text)
    return {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": prompt, "output_tokens": out,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "service_tier": "batch"},
    }
