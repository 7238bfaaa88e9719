"""A small faithful fake of "TinyBatch", an inline batch API modelled on Anthropic Message
Batches (reference/providers.md section 4), simplified:

- `POST /v1/batches` with `{"requests": [{"custom_id", "params"}]}` (no other key, 1..100,000
  items, `custom_id` matching `^[a-zA-Z0-9_-]{1,64}$` and unique: checked synchronously, 400)
  -> the batch object, `processing_status: "in_progress"`.
- `GET /v1/batches/{id}`: every GET moves a batch one step on: `in_progress` -> `ended`,
  `canceling` -> `ended` (requests left become `canceled`).
- `POST /v1/batches/{id}/cancel`: `in_progress` -> `canceling`; an ended batch is a 409.
- `GET /v1/batches/{id}/results`: JSONL, one line per request in reverse order (results come in
  any order), only once `ended` (409 before).
- Auth: `x-api-key: <key>`; anything else is a 401. Errors use the envelope
  `{"type": "error", "error": {"type", "message"}, "request_id"}`; unknown ids are 404
  `not_found_error`.

`params` are checked only when the batch runs, as upstream does: `model`, `max_tokens >= 1` and
non-empty `messages` of `user`/`assistant` turns are required, else the request is `errored`.
**Failure marker**: a request whose `params.metadata.user_id` is `"fail"` is `errored`. A
successful request answers `"echo:" + custom_id`.

For tests: `requests` (method, path, headers) of every request, `created` (batch id -> the
create body as received), `chunked` (batch id -> whether the create body came with
`Transfer-Encoding: chunked`), `batches`, and `fail(...)` for injected errors.
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def _now() -> datetime:
    return datetime.now(UTC)


def _stamp(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_" + secrets.token_hex(12),
    }
    return Response(msgspec.json.encode(body), status, headers=headers,
                    media_type="application/json")


def _json(obj: Any) -> Response:
    return Response(msgspec.json.encode(obj), 200, media_type="application/json")


@dataclass
class FakeBatch:
    id: str
    requests: list[dict[str, Any]]
    created_at: datetime
    status: str = "in_progress"  # in_progress | canceling | ended
    ended_at: datetime | None = None
    cancel_initiated_at: datetime | None = None
    outcomes: dict[str, str] = field(default_factory=dict)  # custom_id -> result type
    results: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    times: int
    headers: dict[str, str] | None


class FakeTinyBatch:
    def __init__(self, api_key: str = "tb-key") -> None:
        self.api_key = api_key
        self.batches: dict[str, FakeBatch] = {}
        self.created: dict[str, dict[str, Any]] = {}
        self.chunked: dict[str, bool] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        router = Starlette(routes=[
            Route("/v1/batches", self._create, methods=["POST"]),
            Route("/v1/batches/{id}", self._get, methods=["GET"]),
            Route("/v1/batches/{id}/cancel", self._cancel, methods=["POST"]),
            Route("/v1/batches/{id}/results", self._results, methods=["GET"]),
        ])
        self.app = _Gate(router, self)

    def fail(self, method: str, path_regex: str, status: int, times: int = 1,
             headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` matching requests with `status` and the error envelope."""
        with self._lock:
            self._faults.append(_Fault(method, re.compile(path_regex), status, times, headers))

    def take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method in ("*", method) and fault.path.search(path):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- routes ----------------------------------------------------------------------------------

    async def _create(self, request: Request) -> Response:
        try:
            raw = await request.body()
        except ClientDisconnect:  # the client gave up sending (its input broke off)
            return _error(400, "The request body was cut off.")
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return _error(400, "The request body is not valid JSON.")
        problem = _check_create(body)
        if problem:
            return _error(400, problem)
        batch = FakeBatch(id="tbatch_" + secrets.token_hex(12), requests=body["requests"],
                          created_at=_now())
        with self._lock:
            self.batches[batch.id] = batch
            self.created[batch.id] = body
            self.chunked[batch.id] = "chunked" in request.headers.get("transfer-encoding", "")
        return _json(self._view(batch))

    def _find(self, request: Request) -> FakeBatch | Response:
        batch = self.batches.get(request.path_params["id"])
        if batch is None:
            return _error(404, f"Batch '{request.path_params['id']}' not found.")
        return batch

    async def _get(self, request: Request) -> Response:
        with self._lock:
            batch = self._find(request)
            if isinstance(batch, Response):
                return batch
            if batch.status != "ended":
                self._end(batch)
            return _json(self._view(batch))

    async def _cancel(self, request: Request) -> Response:
        with self._lock:
            batch = self._find(request)
            if isinstance(batch, Response):
                return batch
            if batch.status == "ended":
                return _error(409, f"Batch '{batch.id}' has ended and cannot be canceled.")
            batch.status = "canceling"
            batch.cancel_initiated_at = batch.cancel_initiated_at or _now()
            return _json(self._view(batch))

    async def _results(self, request: Request) -> Response:
        with self._lock:
            batch = self._find(request)
            if isinstance(batch, Response):
                return batch
            if batch.status != "ended":
                return _error(409, f"Batch '{batch.id}' is still processing.")
            lines = [msgspec.json.encode(r) + b"\n" for r in reversed(batch.results)]
        return Response(b"".join(lines), 200, media_type="application/binary")

    # -- the batch lifecycle (lock held) ----------------------------------------------------------

    def _end(self, batch: FakeBatch) -> None:
        cancel = batch.status == "canceling"
        for item in batch.requests:
            custom_id = item["custom_id"]
            if cancel:
                result: dict[str, Any] = {"type": "canceled"}
            else:
                result = _run(custom_id, item["params"])
            batch.outcomes[custom_id] = result["type"]
            batch.results.append({"custom_id": custom_id, "result": result})
        batch.status = "ended"
        batch.ended_at = _now()

    def _view(self, batch: FakeBatch) -> dict[str, Any]:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if batch.status == "ended":
            for kind in batch.outcomes.values():
                counts[kind] += 1
        else:
            counts["processing"] = len(batch.requests)
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status,
            "request_counts": counts,
            "created_at": _stamp(batch.created_at),
            "expires_at": _stamp(batch.created_at + timedelta(hours=24)),
            "ended_at": _stamp(batch.ended_at),
            "cancel_initiated_at": _stamp(batch.cancel_initiated_at),
            "archived_at": None,
            "results_url": f"/v1/batches/{batch.id}/results" if batch.status == "ended" else None,
        }


class _Gate:
    """Records every request, answers injected faults, checks `x-api-key`."""

    def __init__(self, app: Any, fake: FakeTinyBatch) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.fake.requests.append((scope["method"], scope["path"], headers))
        fault = self.fake.take_fault(scope["method"], scope["path"])
        if fault is not None:
            response = _error(fault.status, "Injected failure.", fault.headers)
        elif headers.get("x-api-key") != self.fake.api_key:
            response = _error(401, "invalid x-api-key")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)


def _check_create(body: Any) -> str | None:
    if not isinstance(body, dict) or set(body) != {"requests"}:
        return "body: only `requests` is permitted and it is required"
    items = body["requests"]
    if not isinstance(items, list) or not 1 <= len(items) <= 100_000:
        return "requests: between 1 and 100000 items"
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"custom_id", "params"}:
            return f"requests.{i}: exactly `custom_id` and `params`"
        custom_id = item["custom_id"]
        if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
            return f"requests.{i}.custom_id: must match {CUSTOM_ID.pattern}"
        if custom_id in seen:
            return f"requests.{i}.custom_id: duplicate {custom_id!r}"
        seen.add(custom_id)
        if not isinstance(item["params"], dict):
            return f"requests.{i}.params: must be an object"
    return None


def _run(custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
    problem = None
    given = params.get("messages")
    messages: list[dict[str, Any]] = given if isinstance(given, list) else []
    if not isinstance(params.get("model"), str):
        problem = "model: Field required"
    elif not isinstance(params.get("max_tokens"), int) or params["max_tokens"] < 1:
        problem = "max_tokens: must be an integer >= 1"
    elif not messages:
        problem = "messages: at least one message is required"
    elif any(not isinstance(m, dict) or m.get("role") not in ("user", "assistant")
             for m in messages):
        problem = "messages: roles must be 'user' or 'assistant'"
    elif (params.get("metadata") or {}).get("user_id") == "fail":
        problem = "failure requested by metadata.user_id"
    if problem:
        return {"type": "errored", "error": {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": problem},
            "request_id": None,
        }}
    text = "echo:" + custom_id
    prompt = 8 + sum(len(str(m.get("content", ""))) for m in messages) // 4
    return {"type": "succeeded", "message": {
        "id": "msg_" + secrets.token_hex(12),
        "type": "message",
        "role": "assistant",
        "model": params["model"],
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": prompt, "output_tokens": 1 + len(text) // 4},
    }}
