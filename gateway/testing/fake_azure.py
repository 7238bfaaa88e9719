"""A faithful fake of Azure OpenAI's Files + Batches API, plus a fake Entra ID token endpoint
(reference/providers.md sections 2 and 6).

    entra = FakeEntra(expires_in=3600)
    fake = FakeAzure(api_key="azure-key", deployments=["gpt-4o-mini-batch"], entra=entra)
    with ServerThread(fake.app) as server:   # api_base = server.url
        ...

What it enforces, as Azure does:

- Both surfaces: `/openai/...?api-version=<known version>` (missing → 404 "Resource not found",
  unknown → 400 "API version not supported") and `/openai/v1/...` (api-version optional).
- Auth: `api-key: <api_key>`, or `Authorization: Bearer <token>` with a static token from
  `ad_tokens` or an unexpired one issued by `entra`; on the v1 surface also `Bearer <api_key>`.
  Anything else is a 401 in Microsoft's envelope.
- Uploads: multipart `purpose` (Azure's enum) + `file`, optional `expires_after.*` /
  `expires_after[*]` (14 to 30 days); answer `201` + `Location`, status `pending`, which turns
  `processed` after `processing_polls` GETs of the file (or `error` when `processing_error`
  is set). Creating a batch on a file still `pending` is a 400.
- Batches: create answers `create_status` (200) with `endpoint: null`; each GET moves a batch
  one state on (validating → in_progress → finalizing → completed, cancelling → cancelled).
  Leaving `validating` the input is checked: every line's `body.model` must be one of
  `deployments` (else `model_not_found`, which is also what a UTF-8 BOM gets), the same on
  every line (`model_mismatch`), its `url` the batch endpoint (`/chat/completions` and
  `/v1/chat/completions` both count), plus `invalid_json_line`, `duplicate_custom_id`,
  `invalid_request`, `empty_file`, `too_many_tasks`; `errors.data[].line` is a string.
- Results: output lines in Azure's shape (no top-level `id`, `content_filter_results`,
  `prompt_filter_results`, GUID `request_id`); an error file is always attached, zero bytes
  when nothing failed; a missing output file is `""`.
- Errors: Microsoft's envelope `{"error": {"code", "message", "innererror"?}}` on the
  versioned surface, OpenAI's on v1. Batch and file lists on the versioned surface carry no
  `has_more`.
- `legacy_shapes=True` answers with an old doc example's shapes: ISO-8601 `created_at`,
  `"Validating"`-style statuses, `null` request_counts members.

A request line whose body carries `"metadata": {"fake_fail": "true"}` fails (status_code 400
line in the error file). For tests: `requests` (method, path, query, headers, credential kind),
`uploads`, `file_lines()`, `complete()`, `fail()` / `stall()` for fault injection, and
`token_limit_error()` for Azure's fail-fast quota answer.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.testing.fake_openai import FAIL_MARKER

_encode = msgspec.json.encode
_decode = msgspec.json.decode

API_VERSIONS = frozenset(
    {
        "2024-07-01-preview", "2024-08-01-preview", "2024-10-01-preview", "2024-10-21",
        "2024-12-01-preview", "2025-01-01-preview", "2025-03-01-preview", "2025-04-01-preview",
    }
)
V1_API_VERSIONS = frozenset({"v1", "preview"})
PURPOSES = frozenset({"fine-tune", "fine-tune-results", "assistants", "assistants_output", "batch"})
ENDPOINTS = frozenset(
    {"/chat/completions", "/v1/chat/completions", "/embeddings", "/v1/embeddings",
     "/completions", "/v1/completions", "/responses", "/v1/responses"}
)
ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
NEXT_STATE = {
    "validating": "in_progress",
    "in_progress": "finalizing",
    "finalizing": "completed",
    "cancelling": "cancelled",
}
MAX_REQUESTS = 100_000
DAY = 86_400
BOM = b"\xef\xbb\xbf"
_TIMESTAMPS = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
               "failed_at", "expired_at", "cancelling_at", "cancelled_at")
_BAD_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)
_BAD_TOKEN = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)
_NO_DEPLOYMENT = (
    "A valid model deployment name couldn't be extracted from the input file. Please ensure "
    "that each row in the input file has a valid deployment name specified in the 'model' "
    "field, and that the deployment name is consistent across all rows."
)


def token_limit_error(deployment: str, limit: str = "30K") -> dict[str, Any]:
    """The 400 body of a fail-fast create on a deployment whose enqueued-token quota is used."""
    return {
        "error": {
            "code": "token_limit_exceeded",
            "message": f"The number of enqueued tokens has surpassed the configured limit of "
            f"{limit} for the deployment '{deployment}'. Please either increase the limit or "
            "try again once the current jobs have finished.",
        }
    }


class AzureError(Exception):
    def __init__(
        self, status: int, code: str, message: str, inner: str | None = None,
        param: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.inner, self.param, self.headers = inner, param, headers

    def response(self, v1: bool) -> Response:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if v1:
            err.update(param=self.param, type="invalid_request_error")
        elif self.inner:
            err["innererror"] = {"code": self.inner}
        return Response(_encode({"error": err}), self.status, headers=self.headers,
                        media_type="application/json")


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    times: int  # remaining uses; <0 = forever
    status: int = 0
    body: Any = None
    headers: dict[str, str] | None = None
    seconds: float = 0.0


class FakeEntra:
    """`POST /{tenant}/oauth2/v2.0/token` (client-credentials grant), as login.microsoftonline.com.

    Point `azure_authority_host` at it. `tokens` maps every issued token to its expiry.
    """

    def __init__(
        self, tenant_id: str = "tenant-1", client_id: str = "client-1",
        client_secret: str = "secret-1", expires_in: int = 3600,
    ) -> None:
        self.tenant_id, self.client_id, self.client_secret = tenant_id, client_id, client_secret
        self.expires_in = expires_in
        self.tokens: dict[str, float] = {}
        self.app = Starlette(
            routes=[Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"])]
        )

    def valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        return expiry is not None and time.time() < expiry

    def revoke_all(self) -> None:
        self.tokens.clear()

    async def _token(self, request: Request) -> Response:
        form = await request.form()
        if request.path_params["tenant"] != self.tenant_id:
            return _entra_error(400, "invalid_request", "AADSTS90002: Tenant not found.")
        if form.get("grant_type") != "client_credentials":
            return _entra_error(400, "unsupported_grant_type", "AADSTS70003: unsupported grant.")
        if form.get("client_id") != self.client_id:
            return _entra_error(400, "unauthorized_client", "AADSTS700016: Application not found.")
        if form.get("client_secret") != self.client_secret:
            return _entra_error(
                401, "invalid_client", "AADSTS7000215: Invalid client secret provided."
            )
        if form.get("scope") != ENTRA_SCOPE:
            return _entra_error(400, "invalid_scope", "AADSTS70011: The provided scope is invalid.")
        token = "eyJ0eXAiOiJKV1Qi." + secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + self.expires_in
        return Response(
            _encode({"token_type": "Bearer", "expires_in": self.expires_in,
                     "ext_expires_in": self.expires_in, "access_token": token}),
            media_type="application/json",
        )


def _entra_error(status: int, error: str, description: str) -> Response:
    body = {"error": error, "error_description": description, "error_codes": [int(
        description[6:description.index(":")])]}
    return Response(_encode(body), status, media_type="application/json")


class FakeAzure:
    def __init__(
        self,
        api_key: str | None = "azure-key",
        deployments: Iterable[str] = ("gpt-4o-mini-batch",),
        ad_tokens: Iterable[str] = (),
        entra: FakeEntra | None = None,
        processing_polls: int = 1,
        create_status: int = 200,
        legacy_shapes: bool = False,
        model_version: str = "gpt-4o-mini-2024-07-18",
    ) -> None:
        self.api_key = api_key
        self.deployments = frozenset(deployments)
        self.ad_tokens = frozenset(ad_tokens)
        self.entra = entra
        self.processing_polls = processing_polls
        self.processing_error: str | None = None  # status_details for uploads that fail
        self.create_status = create_status
        self.legacy_shapes = legacy_shapes
        self.model_version = model_version
        self.files: dict[str, dict[str, Any]] = {}  # id → File object
        self.contents: dict[str, bytes] = {}  # id → bytes, input and output files
        self.uploads: dict[str, bytes] = {}  # id → bytes of uploaded (input) files
        self.batches: dict[str, dict[str, Any]] = {}
        # (method, path, query, headers, credential kind: api-key | entra | bearer-key | None)
        self.requests: list[tuple[str, str, dict[str, str], dict[str, str], str | None]] = []
        self._polls_left: dict[str, int] = {}
        self._faults: list[_Rule] = []
        self._stalls: list[_Rule] = []
        self._lock = threading.RLock()
        self.app = Starlette(
            routes=[Route("/openai/{rest:path}", self._dispatch, methods=["GET", "POST", "DELETE"])]
        )

    # -- helpers for tests -------------------------------------------------------------------

    def fail(
        self, method: str, path_regex: str, status: int, body: Any = None,
        headers: dict[str, str] | None = None, times: int = 1,
    ) -> None:
        """Answer the next `times` (-1: every) requests matching `method` ("*": any) and
        `path_regex` (searched in the path) with `status` and `body` (default: an envelope)."""
        self._faults.append(
            _Rule(method.upper(), re.compile(path_regex), times, status, body, headers)
        )

    def stall(self, method: str, path_regex: str, seconds: float, times: int = 1) -> None:
        self._stalls.append(_Rule(method.upper(), re.compile(path_regex), times, seconds=seconds))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._stalls.clear()

    def file_lines(self, file_id: str) -> list[dict[str, Any]]:
        return [_decode(x) for x in self.contents[file_id].splitlines() if x.strip()]

    def creates(self) -> int:
        return sum(1 for r in self.requests if r[0] == "POST" and r[1].endswith("/batches"))

    def complete(self, batch_id: str) -> dict[str, Any]:
        with self._lock:
            batch = self.batches[batch_id]
            while batch["status"] not in TERMINAL:
                self._move(batch, NEXT_STATE[batch["status"]])
            return batch

    # -- dispatch ----------------------------------------------------------------------------

    async def _dispatch(self, request: Request) -> Response:
        rest = request.path_params["rest"].strip("/")
        v1 = rest == "v1" or rest.startswith("v1/")
        parts = rest.split("/")[1:] if v1 else rest.split("/")
        method, path = request.method, request.url.path
        query = dict(parse_qsl(request.url.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append((method, path, query, headers, None))
        index = len(self.requests) - 1
        stall = self._take(self._stalls, method, path)
        if stall is not None:
            await asyncio.sleep(stall.seconds)
        fault = self._take(self._faults, method, path)
        if fault is not None:
            return self._fault_response(fault, v1)
        try:
            self._check_version(query, v1)
            credential = self._check_auth(headers, v1)
            self.requests[index] = (method, path, query, headers, credential)
            return await self._route(request, method, parts, v1)
        except AzureError as e:
            return e.response(v1)

    async def _route(self, request: Request, method: str, parts: list[str], v1: bool) -> Response:
        match (method, parts):
            case ("POST", ["files"]):
                return await self._upload(request, v1)
            case ("GET", ["files"]):
                return self._list_files(request, v1)
            case ("GET", ["files", file_id]):
                return _json(self._show_file(self._tick(file_id)))
            case ("DELETE", ["files", file_id]):
                with self._lock:
                    self._get_file(file_id)
                    del self.files[file_id]
                    self.contents.pop(file_id, None)
                    self.uploads.pop(file_id, None)
                return _json({"object": "file", "deleted": True, "id": file_id})
            case ("GET", ["files", file_id, "content"]):
                self._get_file(file_id)
                return Response(self.contents[file_id], media_type="application/octet-stream")
            case ("POST", ["batches"]):
                return await self._create(request, v1)
            case ("GET", ["batches"]):
                return self._list_batches(request, v1)
            case ("GET", ["batches", batch_id]):
                with self._lock:
                    batch = self._get_batch(batch_id)
                    if batch["status"] not in TERMINAL:
                        self._move(batch, NEXT_STATE[batch["status"]])
                    return _json(self._show_batch(batch))
            case ("POST", ["batches", batch_id, "cancel"]):
                with self._lock:
                    batch = self._get_batch(batch_id)
                    if batch["status"] in TERMINAL:
                        raise AzureError(
                            409, "conflict",
                            f"Batch {batch_id} is in status '{batch['status']}' and cannot be "
                            "cancelled.",
                        )
                    if batch["status"] != "cancelling":
                        self._move(batch, "cancelling")
                    return _json(self._show_batch(batch))
        raise AzureError(404, "404", "Resource not found")

    def _take(self, rules: list[_Rule], method: str, path: str) -> _Rule | None:
        for rule in list(rules):
            if rule.method in ("*", method) and rule.pattern.search(path):
                if rule.times > 0:
                    rule.times -= 1
                    if rule.times == 0:
                        rules.remove(rule)
                return rule
        return None

    @staticmethod
    def _fault_response(rule: _Rule, v1: bool) -> Response:
        if rule.body is None:
            codes = {429: "tooManyRequests", 500: "internalFailure", 503: "serviceUnavailable"}
            return AzureError(
                rule.status, codes.get(rule.status, str(rule.status)),
                f"Injected failure {rule.status}.", headers=rule.headers,
            ).response(v1)
        content = rule.body if isinstance(rule.body, bytes) else _encode(rule.body)
        return Response(content, rule.status, headers=rule.headers, media_type="application/json")

    @staticmethod
    def _check_version(query: dict[str, str], v1: bool) -> None:
        version = query.get("api-version")
        if v1:
            if version is not None and version not in V1_API_VERSIONS:
                raise AzureError(400, "BadRequest", "API version not supported")
            return
        if version is None:
            raise AzureError(404, "404", "Resource not found")
        if version not in API_VERSIONS:
            raise AzureError(400, "BadRequest", "API version not supported")

    def _check_auth(self, headers: dict[str, str], v1: bool) -> str:
        key = headers.get("api-key")
        if key is not None:
            if self.api_key is not None and key == self.api_key:
                return "api-key"
            raise AzureError(401, "401", _BAD_KEY)
        auth = headers.get("authorization", "")
        if auth.startswith("Bearer "):
            token = auth[7:].strip()
            if token in self.ad_tokens or (self.entra is not None and self.entra.valid(token)):
                return "entra"
            if v1 and self.api_key is not None and token == self.api_key:
                return "bearer-key"
            raise AzureError(401, "401", _BAD_TOKEN)
        raise AzureError(
            401, "401",
            "Access denied due to missing subscription key. Make sure to include subscription "
            "key when making requests to an API.",
        )

    # -- files -------------------------------------------------------------------------------

    async def _upload(self, request: Request, v1: bool) -> Response:
        form = await request.form()
        purpose = form.get("purpose")
        upload = form.get("file")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise AzureError(400, "invalidPayload",
                             f"The specified purpose '{purpose}' is not supported.",
                             param="purpose")
        if not isinstance(upload, UploadFile):
            raise AzureError(400, "invalidPayload", "The file is missing.", param="file")
        content = await upload.read()
        now = int(time.time())
        obj: dict[str, Any] = {
            "object": "file",
            "id": "file-" + uuid.uuid4().hex,
            "purpose": purpose,
            "filename": upload.filename,
            "bytes": len(content),
            "created_at": now,
            "status": "pending" if self.processing_polls > 0 else "processed",
            "status_details": None,
        }
        seconds = form.get("expires_after.seconds", form.get("expires_after[seconds]"))
        anchor = form.get("expires_after.anchor", form.get("expires_after[anchor]"))
        if seconds is not None or anchor is not None:
            if anchor != "created_at" or not str(seconds).isdigit() \
                    or not 1_209_600 <= int(str(seconds)) <= 2_592_000:
                raise AzureError(400, "invalidPayload",
                                 "expires_after must be anchored at created_at, 14 to 30 days.")
            obj["expires_at"] = now + int(str(seconds))
        with self._lock:
            self.files[obj["id"]] = obj
            self.contents[obj["id"]] = content
            self.uploads[obj["id"]] = content
            self._polls_left[obj["id"]] = self.processing_polls
        location = f"{str(request.base_url).rstrip('/')}/openai/{'v1/' if v1 else ''}files/" \
            + obj["id"]
        return Response(_encode(self._show_file(obj)), 201, headers={"Location": location},
                        media_type="application/json")

    def _get_file(self, file_id: str) -> dict[str, Any]:
        obj = self.files.get(file_id)
        if obj is None:
            raise AzureError(404, "notFound", f"File with id {file_id} was not found.")
        return obj

    def _tick(self, file_id: str) -> dict[str, Any]:
        """A GET of a pending file: processing finishes after `processing_polls` of them."""
        with self._lock:
            obj = self._get_file(file_id)
            left = self._polls_left.get(file_id, 0)
            if obj["status"] == "pending":
                left -= 1
                self._polls_left[file_id] = left
                if left <= 0:
                    if self.processing_error:
                        obj["status"], obj["status_details"] = "error", self.processing_error
                    else:
                        obj["status"] = "processed"
            return obj

    def _show_file(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.legacy_shapes:
            return {**obj, "created_at": _iso(obj["created_at"])}
        return obj

    def _list_files(self, request: Request, v1: bool) -> Response:
        purpose = request.query_params.get("purpose")
        with self._lock:
            items = [self._show_file(f) for f in reversed(self.files.values())
                     if purpose is None or f["purpose"] == purpose]
        if not v1:
            return _json({"data": items, "object": "list"})  # 2024-10-21: no has_more
        return _json(_page(items, request.query_params.get("after"),
                           _limit(request, 10_000)))

    # -- batches -----------------------------------------------------------------------------

    async def _create(self, request: Request, v1: bool) -> Response:
        try:
            body = _decode(await request.body())
        except msgspec.DecodeError:
            raise AzureError(400, "invalidPayload", "The request body is not valid JSON.") \
                from None
        if not isinstance(body, dict):
            raise AzureError(400, "invalidPayload", "The request body must be an object.")
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise AzureError(400, "invalidPayload", f"'{name}' is required.", param=name)
        if body["endpoint"] not in ENDPOINTS:
            raise AzureError(400, "invalidPayload",
                             f"The endpoint '{body['endpoint']}' is not supported.",
                             param="endpoint")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(metadata) > 16):
            raise AzureError(400, "invalidPayload", "metadata: at most 16 pairs.",
                             param="metadata")
        file_id = body["input_file_id"]
        now = int(time.time())
        with self._lock:
            file = self.files.get(file_id)
            if file is None or file["purpose"] != "batch":
                raise AzureError(404, "notFound", f"File with id {file_id} was not found.")
            if file["status"] != "processed":
                raise AzureError(
                    400, "invalidPayload",
                    f"The input file '{file_id}' is in '{file['status']}' state. Only files "
                    "with status 'Processed' are accepted for batch inferencing. Please check "
                    "the file status and try again",
                )
            batch: dict[str, Any] = {
                "id": f"batch_{uuid.uuid4()}",
                "object": "batch",
                "endpoint": body["endpoint"],
                "errors": None,
                "input_file_id": file_id,
                "completion_window": body["completion_window"],
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
                "metadata": metadata,
            }
            self.batches[batch["id"]] = batch
            shown = {**self._show_batch(batch), "endpoint": None}  # as Azure's create answers
        return Response(
            _encode(shown), self.create_status, media_type="application/json",
            headers={"deployment-enqueued-tokens": "0",
                     "deployment-maximum-enqueued-tokens": "5000000"},
        )

    def _get_batch(self, batch_id: str) -> dict[str, Any]:
        batch = self.batches.get(batch_id)
        if batch is None:
            raise AzureError(404, "notFound", f"Batch with id {batch_id} was not found.")
        return batch

    def _show_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        if self.legacy_shapes:
            out["status"] = out["status"].title().replace("_", "")  # "InProgress"
            out["created_at"] = _iso(out["created_at"])
            out["request_counts"] = {k: v or None for k, v in out["request_counts"].items()}
        return out

    def _list_batches(self, request: Request, v1: bool) -> Response:
        with self._lock:
            items = [self._show_batch(b) for b in reversed(self.batches.values())]
        page = _page(items, request.query_params.get("after"), _limit(request, 100, 20))
        if not v1:
            del page["has_more"]  # not in the versioned answer
        return _json(page)

    # -- the state machine (call with self._lock held) ---------------------------------------

    def _move(self, batch: dict[str, Any], target: str) -> None:
        now = int(time.time())
        if batch["status"] == "validating" and target != "cancelling":
            errors, total = self._validate(batch)
            if errors:
                batch.update(status="failed", failed_at=now,
                             errors={"object": "list", "data": errors[:1000]})
                return
            batch["request_counts"] = {"total": total, "completed": 0, "failed": 0}
            batch["output_file_id"] = batch["error_file_id"] = ""
        if target == "in_progress":
            batch["in_progress_at"] = now
        elif target == "finalizing":
            batch["finalizing_at"] = now
        elif target == "completed":
            self._write_results(batch, now)
            batch["completed_at"] = now
        elif target == "cancelling":
            batch["cancelling_at"] = now
        elif target == "cancelled":
            batch["cancelled_at"] = now
            batch["output_file_id"] = batch["error_file_id"] = ""
        batch["status"] = target

    def _validate(self, batch: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        content = self.contents.get(batch["input_file_id"], b"")
        if content.startswith(BOM):
            return [_err("model_not_found", _NO_DEPLOYMENT)], 0
        errors: list[dict[str, Any]] = []
        endpoint = _openai_form(batch["endpoint"])
        seen: set[str] = set()
        model: str | None = None
        total = 0
        if batch["completion_window"] != "24h":
            errors.append(_err("invalid_request", "completion_window must be '24h'."))
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            total += 1
            try:
                line = _decode(raw)
            except msgspec.DecodeError:
                errors.append(_err("invalid_json_line", "This line is not parseable as valid "
                                   "JSON.", number))
                continue
            body = line.get("body") if isinstance(line, dict) else None
            if not isinstance(body, dict) or not isinstance(line.get("custom_id"), str) \
                    or line.get("method") != "POST" or not isinstance(line.get("url"), str):
                errors.append(_err("invalid_request", "The request is malformed.", number))
                continue
            if _openai_form(line["url"]) != endpoint or line["url"] not in ENDPOINTS:
                errors.append(_err("url_mismatch", "The url of this request does not match the "
                                   "batch endpoint.", number))
            if line["custom_id"] in seen:
                errors.append(_err("duplicate_custom_id", "The custom_id for this request is a "
                                   "duplicate of another request.", number))
            seen.add(line["custom_id"])
            name = body.get("model")
            if name not in self.deployments:
                errors.append(_err(
                    "model_not_found",
                    f"The provided model deployment '{name}' was not found or is not a "
                    "Global-Batch deployment.", number,
                ))
            elif model is None:
                model = name
            elif name != model:
                errors.append(_err("model_mismatch", "The model deployment of this request "
                                   "differs from the other requests in the file.", number))
        if total == 0:
            errors.append(_err("empty_file", "The input file is empty."))
        elif total > MAX_REQUESTS:
            errors.append(_err("too_many_tasks", f"More than {MAX_REQUESTS} requests."))
        return errors, total

    def _write_results(self, batch: dict[str, Any], now: int) -> None:
        out: list[bytes] = []
        err: list[bytes] = []
        for raw in self.contents[batch["input_file_id"]].splitlines():
            if not raw.strip():
                continue
            line = _decode(raw)
            metadata = line["body"].get("metadata")
            if isinstance(metadata, dict) and str(metadata.get(FAIL_MARKER)).lower() == "true":
                err.append(_encode(_failed_line(line["custom_id"])))
            else:
                out.append(_encode(self._result_line(line, now)))
        batch["request_counts"] = {"total": len(out) + len(err), "completed": len(out),
                                   "failed": len(err)}
        batch["output_file_id"] = self._output_file(batch, "output", out, now) if out else ""
        # Azure attaches an error file to every finished job, zero bytes when nothing failed.
        batch["error_file_id"] = self._output_file(batch, "error", err, now)

    def _output_file(self, batch: dict[str, Any], kind: str, lines: list[bytes], now: int) -> str:
        file_id = f"file-{uuid.uuid4()}"
        content = b"".join(x + b"\n" for x in lines)
        self.files[file_id] = {
            "object": "file", "id": file_id, "purpose": "batch_output",
            "filename": f"{batch['id']}_{kind}.jsonl", "bytes": len(content), "created_at": now,
            "status": "processed", "status_details": None,
        }
        self.contents[file_id] = content
        return file_id

    def _result_line(self, line: dict[str, Any], now: int) -> dict[str, Any]:
        safe = {"filtered": False, "severity": "safe"}
        filters = {"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe}
        content = "echo:" + line["custom_id"]
        body = {
            "choices": [{
                "content_filter_results": filters,
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {"content": content, "role": "assistant"},
            }],
            "created": now,
            "id": "chatcmpl-" + secrets.token_urlsafe(21),
            "model": self.model_version,
            "object": "chat.completion",
            "prompt_filter_results": [{
                "prompt_index": 0,
                "content_filter_results": {**filters,
                                           "jailbreak": {"filtered": False, "detected": False}},
            }],
            "system_fingerprint": "fp_" + secrets.token_hex(5),
            "usage": {"completion_tokens": 3, "prompt_tokens": 10, "total_tokens": 13},
        }
        return {
            "custom_id": line["custom_id"],
            "response": {"body": body, "request_id": str(uuid.uuid4()), "status_code": 200},
            "error": None,
        }


def _failed_line(custom_id: str) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "response": {
            "body": {"error": {"code": "invalid_request", "message": "Fake failure requested by "
                               f"body.metadata.{FAIL_MARKER}.", "param": None, "type": None}},
            "request_id": str(uuid.uuid4()),
            "status_code": 400,
        },
        "error": None,
    }


def _err(code: str, message: str, line: int | None = None) -> dict[str, Any]:
    # Azure types `line` as a string.
    return {"code": code, "message": message, "line": str(line) if line else None,
            "param": None}


def _openai_form(url: str) -> str:
    return url if url.startswith("/v1/") else "/v1" + url


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(obj: Any) -> Response:
    return Response(_encode(obj), 200, media_type="application/json")


def _limit(request: Request, high: int, default: int | None = None) -> int:
    raw = request.query_params.get("limit")
    try:
        value = int(raw) if raw is not None else (default or high)
    except ValueError:
        value = 0
    if not 1 <= value <= high:
        raise AzureError(400, "invalidPayload", f"limit must be between 1 and {high}.",
                         param="limit")
    return value


def _page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    if after:
        ids = [x["id"] for x in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    data = items[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(items) > limit,
    }
