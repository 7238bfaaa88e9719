"""A faithful fake of OpenAI's Files + Batches API (reference/providers.md section 1 and 6).

    fake = FakeOpenAI(api_key="sk-upstream", models=["gpt-4o-mini"])
    with ServerThread(fake.app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-upstream")

What it does, as OpenAI does:

- `Authorization: Bearer <api_key>` is required everywhere; anything else is a 401 with code
  `invalid_api_key`. Every response carries `x-request-id`; every success is 200.
- Uploads are multipart (`purpose`, `file`, optional `expires_after[anchor]` /
  `expires_after[seconds]` or the dotted form), parsed as a stream straight to disk: memory does
  not grow with file size; chunked transfer encoding works. Content is served from disk.
- Batches start `validating`; with `auto_advance` every `GET /v1/batches/{id}` moves the batch
  one state on: validating → in_progress → finalizing → completed (cancelling → cancelled).
  Leaving `validating`, the input file is checked like OpenAI does; a bad file ends the batch
  `failed` with `errors.data` (`invalid_json_line`, `invalid_request`, `url_mismatch`,
  `duplicate_custom_id`, `model_mismatch`, `model_not_found`, `empty_file`, `too_many_tasks`).
- On completion an output file (`purpose: batch_output`) holds one chat.completion line per
  request, assistant content `"echo:" + custom_id`, model = the line's `body.model`.

**Failure marker**: a request line whose body carries `"metadata": {"fake_fail": "true"}` does
not succeed: it goes to the error file as a `response.status_code: 400` line.

A missing error (or output) file is `""` when `empty_string_file_ids` (the quirk seen on real
batches) and null otherwise; a batch in which every request failed has `output_file_id: null`.

For tests: `requests` (method, path, query, headers) of every request received, `uploads`
(file id → Path of the stored content), `file_lines(file_id)`, `advance(batch_id, status)`,
`complete(batch_id)`, and fault injection with `fail(...)` and `stall(...)`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import string
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qsl

import msgspec
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

_encode = msgspec.json.encode
_decode = msgspec.json.decode
_BASE62 = string.digits + string.ascii_letters

UPLOAD_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
ENDPOINTS = frozenset(
    {
        "/v1/responses",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/moderations",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/videos",
    }
)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
NEXT_STATE = {
    "validating": "in_progress",
    "in_progress": "finalizing",
    "finalizing": "completed",
    "cancelling": "cancelled",
}
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_REQUESTS = 50_000
MAX_ERRORS = 1000  # errors.data entries reported for one failed batch
DAY = 86_400
FAIL_MARKER = "fake_fail"

_DEFAULT_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "invalid_request_error", None),
    404: ("Not found.", "invalid_request_error", None),
    409: ("Conflict.", "invalid_request_error", None),
    429: (
        "Rate limit reached for requests. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    ),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.", "server_error", None),
}


def _id(prefix: str, n: int = 22) -> str:
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(n))


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None,
    code: str | None = None,
) -> bytes:
    return _encode({"error": {"message": message, "type": type, "param": param, "code": code}})


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status, message, param, code, type
        )

    def response(self) -> Response:
        body = error_body(self.message, self.type, self.param, self.code)
        return Response(body, self.status, media_type="application/json")


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    times: int  # remaining uses; <0 = forever
    status: int = 0
    body: Any = None
    headers: dict[str, str] | None = None
    seconds: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        return (self.method in ("*", method)) and self.pattern.search(path) is not None


@dataclass
class _BatchState:
    """Private per-batch bookkeeping, next to the public Batch object."""

    input_path: Path
    total: int = 0
    validated: bool = False


@dataclass
class _Check:
    errors: list[dict[str, Any]]
    total: int
    model: str | None


@dataclass
class _Rendered:
    out_path: Path
    err_path: Path
    ok: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def discard(self) -> None:
        self.out_path.unlink(missing_ok=True)
        self.err_path.unlink(missing_ok=True)


class FakeOpenAI:
    def __init__(
        self,
        api_key: str = "sk-upstream",
        models: Iterable[str] | None = None,
        empty_string_file_ids: bool = True,
        auto_advance: bool = True,
    ) -> None:
        self.api_key = api_key
        self.models = frozenset(models) if models is not None else None
        self.empty_string_file_ids = empty_string_file_ids
        self.auto_advance = auto_advance

        self.dir = Path(tempfile.mkdtemp(prefix="fake-openai-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.files: dict[str, dict[str, Any]] = {}  # id → FileObject, insertion = creation order
        self.uploads: dict[str, Path] = {}  # id → stored content
        self.batches: dict[str, dict[str, Any]] = {}  # id → Batch object
        self._state: dict[str, _BatchState] = {}
        self.requests: list[tuple[str, str, dict[str, str], dict[str, str]]] = []
        self._faults: list[_Rule] = []
        self._stalls: list[_Rule] = []
        self._holds: list[_Rule] = []
        self._lock = threading.RLock()
        self._rules_lock = threading.Lock()

        routes = [
            Route("/v1/files", self._files, methods=["GET", "POST"]),
            Route("/v1/files/{file_id}", self._file, methods=["GET", "DELETE"]),
            Route("/v1/files/{file_id}/content", self._content, methods=["GET"]),
            Route("/v1/batches", self._batches, methods=["GET", "POST"]),
            Route("/v1/batches/{batch_id}", self._batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self._cancel, methods=["POST"]),
        ]
        self._router = Starlette(
            routes=routes,
            exception_handlers={ApiError: self._api_error, HTTPException: self._http_error},
        )

    # -- public helpers for tests --------------------------------------------------------------

    def close(self) -> None:
        """Remove the stored files (also happens when the fake is garbage collected)."""
        self._finalizer()

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests matching `method` ("*" for any) and `path_regex`
        (searched in the full path, e.g. `r"^/v1/batches$"`) with `status` instead of handling
        them. `body`: dict/list (sent as JSON), str/bytes (sent raw) or None (OpenAI's error
        envelope for that status). `times=-1` fails forever."""
        rule = _Rule(method.upper(), re.compile(path_regex), times, status, body, headers)
        with self._rules_lock:
            self._faults.append(rule)

    def stall(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        """Sleep `seconds` before answering the next `times` matching requests."""
        rule = _Rule(method.upper(), re.compile(path_regex), times, seconds=seconds)
        with self._rules_lock:
            self._stalls.append(rule)

    def hold(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        """Handle the next `times` matching requests at once, but wait `seconds` before
        answering: the upstream has acted and the caller does not know yet (crash tests)."""
        rule = _Rule(method.upper(), re.compile(path_regex), times, seconds=seconds)
        with self._rules_lock:
            self._holds.append(rule)

    def clear_faults(self) -> None:
        with self._rules_lock:
            self._faults.clear()
            self._stalls.clear()
            self._holds.clear()

    def file_lines(self, file_id: str) -> list[dict[str, Any]]:
        with self.uploads[file_id].open("rb") as f:
            return [_decode(line) for line in f if line.strip()]

    def advance(self, batch_id: str, status: str | None = None) -> dict[str, Any]:
        """Move a batch one state on (as a GET with auto_advance does), or straight to `status`
        with that state's side effects (validation, output files, `*_at` stamps)."""
        with self._lock:
            batch = self.batches[batch_id]
            if batch["status"] in TERMINAL:
                if status is None or status == batch["status"]:
                    return batch
                raise ValueError(f"batch {batch_id} is already {batch['status']}")
            self._move(batch, status or NEXT_STATE[batch["status"]])
            return batch

    def complete(self, batch_id: str) -> dict[str, Any]:
        """Advance a batch until it is terminal (completed, or failed if its input is bad)."""
        with self._lock:
            batch = self.batches[batch_id]
            while batch["status"] not in TERMINAL:
                self._move(batch, NEXT_STATE[batch["status"]])
            return batch

    # -- ASGI entry: record, faults, auth, x-request-id ----------------------------------------

    async def app(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._router(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True))
        self.requests.append((method, path, query, headers))
        request_id = "req_" + secrets.token_hex(16)
        raw_id = request_id.encode()

        hold = self._take(self._holds, method, path)

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if hold is not None:
                    await asyncio.sleep(hold.seconds)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw_id)]
            await send(message)

        stall = self._take(self._stalls, method, path)
        if stall is not None:
            await asyncio.sleep(stall.seconds)
        fault = self._take(self._faults, method, path)
        if fault is not None:
            await self._fault_response(fault)(scope, receive, send_with_id)
            return
        auth = headers.get("authorization", "")
        if auth != f"Bearer {self.api_key}":
            await self._auth_error(auth)(scope, receive, send_with_id)
            return
        await self._router(scope, receive, send_with_id)

    def _take(self, rules: list[_Rule], method: str, path: str) -> _Rule | None:
        if not rules:
            return None
        with self._rules_lock:
            for rule in rules:
                if rule.matches(method, path):
                    if rule.times > 0:
                        rule.times -= 1
                        if rule.times == 0:
                            rules.remove(rule)
                    return rule
        return None

    @staticmethod
    def _fault_response(rule: _Rule) -> Response:
        body = rule.body
        if body is None:
            message, type_, code = _DEFAULT_ERRORS.get(
                rule.status, (f"Error {rule.status}.", "server_error", None)
            )
            content, media = error_body(message, type_, None, code), "application/json"
        elif isinstance(body, (dict, list)):
            content, media = _encode(body), "application/json"
        elif isinstance(body, str):
            content, media = body.encode(), "text/plain"
        else:
            content, media = bytes(body), "application/octet-stream"
        return Response(content, rule.status, headers=rule.headers, media_type=media)

    @staticmethod
    def _auth_error(auth: str) -> Response:
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            key = auth[7:].strip()
            shown = key[:3] + "*" * 4 + key[-4:] if len(key) > 8 else "*" * len(key)
            message = (
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        body = error_body(message, "invalid_request_error", None, "invalid_api_key")
        return Response(body, 401, media_type="application/json")

    @staticmethod
    async def _api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    @staticmethod
    async def _http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code in (404, 405):
            message = f"Invalid URL ({request.method} {request.url.path})"
        else:
            message = str(exc.detail)
        return Response(error_body(message), exc.status_code, media_type="application/json")

    # -- files ---------------------------------------------------------------------------------

    async def _files(self, request: Request) -> Response:
        if request.method == "POST":
            return _json(await self._upload(request))
        q = request.query_params
        limit = _int_param(q.get("limit"), "limit", 10_000, 1, 10_000)
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid value for 'order': {order!r}.", "order")
        purpose = q.get("purpose")
        with self._lock:
            items = [f for f in self.files.values() if purpose is None or f["purpose"] == purpose]
        if order == "desc":
            items.reverse()
        return _json(_page(items, q.get("after"), limit))

    async def _upload(self, request: Request) -> dict[str, Any]:
        fields, tmp, filename, size = await self._parse_multipart(request)
        try:
            purpose = fields.get("purpose")
            if tmp is None:
                raise ApiError(400, "Missing required parameter: 'file'.", "file")
            if not purpose:
                raise ApiError(400, "Missing required parameter: 'purpose'.", "purpose")
            if purpose not in UPLOAD_PURPOSES:
                raise ApiError(
                    400,
                    f"Invalid value for 'purpose': {purpose!r}. Supported values are: "
                    + ", ".join(f"'{p}'" for p in sorted(UPLOAD_PURPOSES)) + ".",
                    "purpose",
                )
            if size > MAX_FILE_BYTES:
                raise ApiError(400, "File is too large. Maximum size is 512 MB.", "file")
            if purpose == "batch" and not (filename or "").endswith(".jsonl"):
                raise ApiError(
                    400, "Invalid file format for Batch API. Must be .jsonl", "file"
                )
            now = int(time.time())
            expires_at = self._expiry(fields, now, purpose)
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
        file_id = _id("file-")
        path = self.dir / file_id
        tmp.rename(path)
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": now,
            "expires_at": expires_at,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
        }
        with self._lock:
            self.uploads[file_id] = path
            self.files[file_id] = obj
        return obj

    @staticmethod
    def _expiry(fields: dict[str, str], now: int, purpose: str) -> int | None:
        anchor = fields.get("expires_after[anchor]", fields.get("expires_after.anchor"))
        seconds = fields.get("expires_after[seconds]", fields.get("expires_after.seconds"))
        if anchor is None and seconds is None:
            return now + 30 * DAY if purpose == "batch" else None
        if anchor != "created_at":
            raise ApiError(
                400, "Invalid value for 'expires_after.anchor': must be 'created_at'.",
                "expires_after.anchor",
            )
        try:
            value = int(seconds or "")
        except ValueError:
            value = -1
        if not 3600 <= value <= 2_592_000:
            raise ApiError(
                400,
                "Invalid value for 'expires_after.seconds': must be between 3600 and 2592000.",
                "expires_after.seconds",
            )
        return now + value

    async def _parse_multipart(
        self, request: Request
    ) -> tuple[dict[str, str], Path | None, str | None, int]:
        """Stream the multipart body: small fields into memory, the `file` part to disk."""
        ctype, options = parse_options_header(request.headers.get("content-type"))
        boundary = options.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise ApiError(400, "Expected a multipart/form-data request body.", "file")

        fields: dict[str, str] = {}
        part_headers: dict[bytes, bytes] = {}
        header_field = bytearray()
        header_value = bytearray()
        field_name: str | None = None
        field_buf = bytearray()
        out: IO[bytes] | None = None
        state: dict[str, Any] = {"tmp": None, "filename": None, "size": 0, "in_file": False}
        problem: list[ApiError] = []

        def on_part_begin() -> None:
            nonlocal field_name
            part_headers.clear()
            field_buf.clear()
            field_name = None
            state["in_file"] = False

        def on_header_field(data: bytes, start: int, end: int) -> None:
            header_field.extend(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            header_value.extend(data[start:end])

        def on_header_end() -> None:
            part_headers[bytes(header_field).lower()] = bytes(header_value)
            header_field.clear()
            header_value.clear()

        def on_headers_finished() -> None:
            nonlocal field_name, out
            _, disp = parse_options_header(part_headers.get(b"content-disposition", b""))
            name = disp.get(b"name", b"").decode("utf-8", "replace")
            filename = disp.get(b"filename")
            if name == "file" and filename is not None:
                if state["tmp"] is not None:
                    problem.append(ApiError(400, "Only one file may be uploaded.", "file"))
                    return
                fd, tmp_name = tempfile.mkstemp(dir=self.dir, prefix="upload-")
                state["tmp"] = Path(tmp_name)
                state["filename"] = filename.decode("utf-8", "replace")
                out = open(fd, "wb", buffering=1 << 20)  # noqa: SIM115 - closed below
                state["in_file"] = True
            else:
                field_name = name

        def on_part_data(data: bytes, start: int, end: int) -> None:
            if state["in_file"]:
                assert out is not None
                out.write(data[start:end])
                state["size"] += end - start
            elif field_name is not None:
                if len(field_buf) + end - start > 65_536:
                    problem.append(ApiError(400, f"Field {field_name!r} is too long.", field_name))
                    return
                field_buf.extend(data[start:end])

        def on_part_end() -> None:
            nonlocal out
            if state["in_file"] and out is not None:
                out.close()
                out = None
                state["in_file"] = False
            elif field_name is not None:
                fields[field_name] = field_buf.decode("utf-8", "replace")

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": on_part_begin,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
            },
        )
        try:
            async for chunk in request.stream():
                if chunk:
                    parser.write(chunk)
            parser.finalize()
        except ApiError:
            raise
        except Exception as e:
            problem.append(ApiError(400, f"Could not parse multipart body: {e}", "file"))
        finally:
            if out is not None:
                out.close()
        if problem:
            if state["tmp"] is not None:
                state["tmp"].unlink(missing_ok=True)
            raise problem[0]
        return fields, state["tmp"], state["filename"], state["size"]

    def _get_file(self, file_id: str) -> dict[str, Any]:
        obj = self.files.get(file_id)
        if obj is None:
            raise ApiError(404, f"No such File object: {file_id}", "id")
        return obj

    async def _file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if request.method == "GET":
            return _json(self._get_file(file_id))
        with self._lock:
            self._get_file(file_id)
            del self.files[file_id]
            path = self.uploads.pop(file_id)
            in_use = any(
                s.input_path == path and self.batches[b]["status"] not in TERMINAL
                for b, s in self._state.items()
            )
        if not in_use:  # a running batch keeps reading its input, as upstream does
            path.unlink(missing_ok=True)
        return _json({"id": file_id, "object": "file", "deleted": True})

    async def _content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        with self._lock:
            self._get_file(file_id)
            path = self.uploads[file_id]
        return FileResponse(path, media_type="application/octet-stream")

    # -- batches -------------------------------------------------------------------------------

    async def _batches(self, request: Request) -> Response:
        if request.method == "POST":
            return _json(await self._create_batch(request))
        q = request.query_params
        limit = _int_param(q.get("limit"), "limit", 20, 1, 100)
        with self._lock:
            items = list(self.batches.values())
        items.reverse()  # newest first
        return _json(_page(items, q.get("after"), limit))

    async def _create_batch(self, request: Request) -> dict[str, Any]:
        try:
            body = _decode(await request.body())
        except msgspec.DecodeError as e:
            raise ApiError(400, "We could not parse the JSON body of your request.") from e
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise ApiError(400, f"Missing required parameter: '{name}'.", name)
        if body["completion_window"] != "24h":
            raise ApiError(
                400,
                f"Invalid value for 'completion_window': {body['completion_window']!r}. "
                "Supported values are: '24h'.",
                "completion_window",
            )
        if body["endpoint"] not in ENDPOINTS:
            raise ApiError(
                400,
                f"Invalid value for 'endpoint': {body['endpoint']!r}. Supported values are: "
                + ", ".join(f"'{e}'" for e in sorted(ENDPOINTS)) + ".",
                "endpoint",
            )
        metadata = body.get("metadata")
        if metadata is not None:
            _check_metadata(metadata)
        file_id = body["input_file_id"]
        with self._lock:
            file = self.files.get(file_id)
            if file is None:
                raise ApiError(400, f"No such File object: {file_id}", "input_file_id")
            if file["purpose"] != "batch":
                raise ApiError(
                    400,
                    f"File {file_id} has purpose {file['purpose']!r}; "
                    "batch input files must have purpose 'batch'.",
                    "input_file_id",
                )
            now = int(time.time())
            batch_id = "batch_" + secrets.token_hex(16)
            batch = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body["endpoint"],
                "model": None,
                "errors": None,
                "input_file_id": file_id,
                "completion_window": "24h",
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": now,
                "in_progress_at": None,
                "expires_at": now + DAY,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "usage": None,
                "metadata": metadata,
            }
            self.batches[batch_id] = batch
            self._state[batch_id] = _BatchState(input_path=self.uploads[file_id])
        return batch

    def _get_batch(self, batch_id: str) -> dict[str, Any]:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise ApiError(404, f"No such Batch object: {batch_id}", "id")
        return batch

    async def _batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        with self._lock:
            batch = self._get_batch(batch_id)
            status = batch["status"]
        if self.auto_advance and status not in TERMINAL:
            if status in ("validating", "finalizing"):  # reads/writes files: off the loop
                await run_in_threadpool(self._tick, batch_id, status)
            else:
                self._tick(batch_id, status)
        return _json(batch)

    def _tick(self, batch_id: str, expected: str) -> None:
        """One auto-advance step. The file work (checking the input, writing results) runs
        before taking the lock, so other requests are not held up by a 200 MB file."""
        batch, state = self.batches[batch_id], self._state[batch_id]
        check = rendered = None
        if expected == "validating" and not state.validated:
            check = self._check_input(state.input_path, batch["endpoint"])
        elif expected == "finalizing":
            rendered = self._render(state.input_path, batch["endpoint"], None)
        with self._lock:
            if batch["status"] == expected:  # not moved by someone else meanwhile
                self._move(batch, NEXT_STATE[expected], check, rendered)
                rendered = None
        if rendered is not None:
            rendered.discard()

    async def _cancel(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        with self._lock:
            batch = self._get_batch(batch_id)
            status = batch["status"]
            if status in TERMINAL:
                raise ApiError(409, f"Cannot cancel a batch with status '{status}'.")
            if status != "cancelling":
                self._move(batch, "cancelling")
            return _json(batch)

    # -- the state machine (call with self._lock held) -----------------------------------------

    def _move(
        self,
        batch: dict[str, Any],
        target: str,
        check: _Check | None = None,
        rendered: _Rendered | None = None,
    ) -> None:
        now = int(time.time())
        state = self._state[batch["id"]]
        if target == "in_progress":
            if not self._validate(batch, state, now, check):
                return
            batch["in_progress_at"] = batch["in_progress_at"] or now
        elif target == "finalizing":
            if not self._validate(batch, state, now):
                return
            batch["in_progress_at"] = batch["in_progress_at"] or now
            batch["finalizing_at"] = batch["finalizing_at"] or now
        elif target == "completed":
            if not self._validate(batch, state, now):
                return
            batch["in_progress_at"] = batch["in_progress_at"] or now
            batch["finalizing_at"] = batch["finalizing_at"] or now
            self._write_results(batch, state, None, rendered)
            batch["completed_at"] = now
        elif target == "failed":
            if self._validate(batch, state, now):
                self._fail(batch, now, [_error("fake_failure", "Failed by the test.")])
            return
        elif target == "cancelling":
            batch["cancelling_at"] = now
        elif target == "cancelled":
            batch["cancelling_at"] = batch["cancelling_at"] or now
            if state.validated:
                self._write_results(batch, state, "batch_cancelled")
            batch["cancelled_at"] = now
        elif target == "expired":
            if state.validated or self._validate(batch, state, now):
                self._write_results(batch, state, "batch_expired")
            elif batch["status"] == "failed":
                return
            batch["expired_at"] = now
        else:
            raise ValueError(f"unknown batch status {target!r}")
        batch["status"] = target

    def _fail(self, batch: dict[str, Any], now: int, errors: list[dict[str, Any]]) -> None:
        batch["status"] = "failed"
        batch["failed_at"] = now
        batch["errors"] = {"object": "list", "data": errors}

    def _validate(
        self, batch: dict[str, Any], state: _BatchState, now: int, check: _Check | None = None
    ) -> bool:
        """Check the input file as OpenAI does when a batch leaves `validating`. On failure
        the batch is `failed` and False is returned."""
        if state.validated:
            return True
        if check is None:
            check = self._check_input(state.input_path, batch["endpoint"])
        if check.errors:
            self._fail(batch, now, check.errors)
            return False
        state.validated = True
        state.total = check.total
        batch["model"] = check.model
        batch["request_counts"] = {"total": check.total, "completed": 0, "failed": 0}
        return True

    def _check_input(self, path: Path, endpoint: str) -> _Check:
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        model: str | None = None
        total = 0

        def add(code: str, message: str, line: int | None, param: str | None = None) -> None:
            if len(errors) < MAX_ERRORS:
                errors.append(_error(code, message, line, param))

        for number, line in _read_lines(path):
            total += 1
            if line is None:
                add("invalid_json_line", "This line is not parseable as valid JSON.", number)
                continue
            problem = _line_problem(line)
            if problem:
                add("invalid_request", problem[1], number, problem[0])
                continue
            if line["url"] != endpoint:
                add(
                    "url_mismatch",
                    f"The URL provided for this request does not match the batch endpoint "
                    f"{endpoint!r}.",
                    number,
                    "url",
                )
            if line["custom_id"] in seen:
                add(
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request. "
                    "The custom_id parameter must be unique for each request in a batch.",
                    number,
                    "custom_id",
                )
            seen.add(line["custom_id"])
            line_model = line["body"].get("model")
            if self.models is not None and line_model not in self.models:
                add(
                    "model_not_found",
                    f"The provided model '{line_model}' is not supported by the Batch API.",
                    number,
                    "body.model",
                )
            elif model is None:
                model = line_model
            elif line_model != model:
                add(
                    "model_mismatch",
                    "The provided model does not match the model of the other requests in "
                    "this file. Each input file may only include requests to a single model.",
                    number,
                    "body.model",
                )
        if total == 0:
            add("empty_file", "The batch input file is empty.", None)
        elif total > MAX_REQUESTS:
            add(
                "too_many_tasks",
                f"The batch input file contains {total} requests; the limit is {MAX_REQUESTS}.",
                None,
            )
        return _Check(errors, total, model)

    def _write_results(
        self,
        batch: dict[str, Any],
        state: _BatchState,
        abort: str | None,
        rendered: _Rendered | None = None,
    ) -> None:
        """Register output and error files (rendering them unless done already)."""
        if rendered is None:
            rendered = self._render(state.input_path, batch["endpoint"], abort)
        r = rendered
        bid = batch["id"]
        now = int(time.time())
        absent = "" if self.empty_string_file_ids else None
        batch["output_file_id"] = (
            self._register_output(r.out_path, f"batch_{bid}_output.jsonl", now) if r.ok else None
        )
        batch["error_file_id"] = (
            self._register_output(r.err_path, f"batch_{bid}_error.jsonl", now)
            if r.failed
            else absent
        )
        r.discard()  # whatever was not registered
        batch["request_counts"] = {"total": state.total, "completed": r.ok, "failed": r.failed}
        batch["usage"] = {
            "input_tokens": r.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": r.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": r.input_tokens + r.output_tokens,
        }

    def _render(self, input_path: Path, endpoint: str, abort: str | None) -> _Rendered:
        """Write results for a validated input to temp files. `abort` (batch_expired /
        batch_cancelled) makes every request an error line with that code, as for a batch
        stopped before running it; otherwise marked lines fail and the rest succeed."""
        fd_out, out_name = tempfile.mkstemp(dir=self.dir, prefix="result-")
        fd_err, err_name = tempfile.mkstemp(dir=self.dir, prefix="result-")
        r = _Rendered(Path(out_name), Path(err_name))
        now = int(time.time())
        with open(fd_out, "wb", buffering=1 << 20) as out, open(fd_err, "wb") as err:
            for _, line in _read_lines(input_path):
                assert line is not None  # validated
                custom_id = line["custom_id"]
                body = line["body"]
                if abort is not None:
                    err.write(_encode(_abort_line(custom_id, abort)) + b"\n")
                    r.failed += 1
                    continue
                metadata = body.get("metadata")
                if isinstance(metadata, dict) and str(metadata.get(FAIL_MARKER)).lower() == "true":
                    err.write(_encode(_http_error_line(custom_id)) + b"\n")
                    r.failed += 1
                    continue
                response, pt, ct = _success_body(endpoint, custom_id, body, now)
                r.input_tokens += pt
                r.output_tokens += ct
                result = {
                    "id": "batch_req_" + secrets.token_hex(12),
                    "custom_id": custom_id,
                    "response": {
                        "status_code": 200,
                        "request_id": "req_" + secrets.token_hex(16),
                        "body": response,
                    },
                    "error": None,
                }
                out.write(_encode(result) + b"\n")
                r.ok += 1
        return r

    def _register_output(self, tmp: Path, filename: str, now: int) -> str:
        file_id = _id("file-")
        path = self.dir / file_id
        tmp.rename(path)
        self.uploads[file_id] = path
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": path.stat().st_size,
            "created_at": now,
            "expires_at": now + 30 * DAY,
            "filename": filename,
            "purpose": "batch_output",
            "status": "processed",
            "status_details": None,
        }
        return file_id


# -- helpers ---------------------------------------------------------------------------------


def _json(obj: Any) -> Response:
    return Response(_encode(obj), 200, media_type="application/json")


def _int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        n = low - 1
    if not low <= n <= high:
        raise ApiError(
            400, f"Invalid '{name}': expected an integer between {low} and {high}.", name
        )
    return n


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    if after:
        for i, item in enumerate(items):
            if item["id"] == after:
                items = items[i + 1 :]
                break
        else:
            items = []
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise ApiError(400, "Invalid type for 'metadata': expected an object.", "metadata")
    if len(metadata) > 16:
        raise ApiError(
            400, "Invalid 'metadata': too many properties. Expected at most 16.", "metadata"
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise ApiError(400, "Invalid 'metadata': keys must be at most 64 characters.",
                           "metadata")
        if not isinstance(value, str) or len(value) > 512:
            raise ApiError(400, "Invalid 'metadata': values must be strings of at most 512 "
                           "characters.", "metadata")


def _error(
    code: str, message: str, line: int | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": param}


def _read_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(1-based line number, parsed object or None if not JSON) for every non-blank line."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                yield number, _decode(raw)
            except msgspec.DecodeError:
                yield number, None


def _line_problem(line: Any) -> tuple[str | None, str] | None:
    if not isinstance(line, dict):
        return None, "Each line must be a JSON object."
    custom_id = line.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id", "Missing required parameter: 'custom_id'."
    if line.get("method") != "POST":
        return "method", "Invalid value for 'method': only 'POST' is supported."
    if not isinstance(line.get("url"), str):
        return "url", "Missing required parameter: 'url'."
    body = line.get("body")
    if not isinstance(body, dict):
        return "body", "Missing required parameter: 'body'."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "body.model", "Missing required parameter: 'body.model'."
    return None


def _prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
    for key in ("input", "prompt"):
        if isinstance(body.get(key), str):
            chars += len(body[key])
    return 8 + chars // 4


def _success_body(
    endpoint: str, custom_id: str, body: dict[str, Any], now: int
) -> tuple[dict[str, Any], int, int]:
    model = body["model"]
    prompt = _prompt_tokens(body)
    if endpoint == "/v1/embeddings":
        usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        return (
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.0, 0.5, 1.0]}],
                "model": model,
                "usage": usage,
            },
            prompt,
            0,
        )
    content = "echo:" + custom_id
    completion = 1 + len(content) // 4
    return (
        {
            "id": "chatcmpl-" + secrets.token_hex(12),
            "object": "chat.completion",
            "created": now,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "system_fingerprint": None,
        },
        prompt,
        completion,
    )


def _http_error_line(custom_id: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": {
            "status_code": 400,
            "request_id": "req_" + secrets.token_hex(16),
            "body": {
                "error": {
                    "message": f"Fake failure requested by body.metadata.{FAIL_MARKER}.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
        },
        "error": None,
    }


_ABORT_MESSAGES = {
    "batch_expired": "This request could not be executed before the completion window expired.",
    "batch_cancelled": "This request could not be executed because the batch was cancelled.",
}


def _abort_line(custom_id: str, code: str) -> dict[str, Any]:
    return {
        "id": "batch_req_" + secrets.token_hex(12),
        "custom_id": custom_id,
        "response": None,
        "error": {"code": code, "message": _ABORT_MESSAGES[code]},
    }
