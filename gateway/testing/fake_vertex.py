"""Fake Google upstreams for the Vertex AI adapter: an OAuth2 token endpoint (JWT-bearer grant,
signature checked) and the Vertex AI `batchPredictionJobs` API that really runs jobs against
GCS. GCS itself is the third-party `gcp-storage-emulator`, started by `gcs_emulator()`.

    oauth = FakeGoogleOAuth()
    with gcs_emulator("bucket") as gcs_url, ServerThread(oauth.app) as auth_server:
        key = oauth.add_account(token_uri=auth_server.url + "/token")
        vertex = FakeVertex(oauth, gcs_url)
        with ServerThread(vertex.app) as api: ...

Jobs follow the proto3 JSON conventions (camelCase, int64 as strings, zero fields omitted, the
project *number* in `name`) and advance one state per GET: PENDING → RUNNING → (after
`processing_polls` GETs) SUCCEEDED, having read the input objects and written
`predictions.jsonl` (in reverse input order: Vertex keeps no order) under
`<outputUriPrefix>/prediction-model-<time>/`. A line that is not a valid Gemini request, or
whose last user text contains "FAIL", becomes a failed prediction; "BLOCK" gets a
safety-blocked prompt.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from http.server import HTTPServer
from typing import Any
from urllib.parse import quote

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}
TERMINAL = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                      "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"})


def google_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message,
                                   "status": _GOOGLE_STATUS.get(status, "UNKNOWN")}}, status)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _b64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


@contextlib.contextmanager
def gcs_emulator(*buckets: str) -> Iterator[str]:
    """gcp-storage-emulator on a free loopback port, in memory; yields its base URL.

    Served from our own thread (not the package's `Server`) to poll for shutdown often: its
    default half-second poll would add that much to every test.
    """
    from gcp_storage_emulator.handlers.buckets import create_bucket
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    storage = Storage(use_memory_fs=True)
    for bucket in buckets:
        create_bucket(bucket, storage)
    httpd = HTTPServer(("127.0.0.1", 0), functools.partial(RequestHandler, storage))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# -- OAuth2 ---------------------------------------------------------------------------------------


class FakeGoogleOAuth:
    """`POST /token` with the JWT-bearer grant, as oauth2.googleapis.com.

    `add_account()` makes a service-account key (a fresh RSA key) whose JWTs it accepts.
    `tokens` maps every issued token to its expiry on `clock`.
    """

    def __init__(self, expires_in: int = 3599) -> None:
        self.expires_in = expires_in
        self.clock: Callable[[], float] = time.time
        self.keys: dict[str, Any] = {}  # client_email -> RSA public key
        self.tokens: dict[str, float] = {}
        self.grants = 0  # tokens issued
        self.app = Starlette(routes=[Route("/token", self._token, methods=["POST"])])

    def add_account(
        self, token_uri: str, project_id: str = "my-project", name: str = "gateway"
    ) -> dict[str, Any]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = f"{name}@{project_id}.iam.gserviceaccount.com"
        self.keys[email] = key.public_key()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": project_id,
                "private_key_id": secrets.token_hex(20), "private_key": pem,
                "client_email": email, "client_id": str(secrets.randbelow(10**20)),
                "token_uri": token_uri}

    def valid(self, token: str) -> bool:
        expiry = self.tokens.get(token)
        return expiry is not None and self.clock() < expiry

    def revoke_all(self) -> None:
        self.tokens.clear()

    async def _token(self, request: Request) -> Response:
        form = await request.form()
        if form.get("grant_type") != GRANT_TYPE:
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        problem = self._check(str(form.get("assertion") or ""), str(request.url))
        if problem:
            return _oauth_error("invalid_grant", problem)
        token = f"ya29.fake-{secrets.token_urlsafe(24)}"
        self.tokens[token] = self.clock() + self.expires_in
        self.grants += 1
        return JSONResponse({"access_token": token, "expires_in": self.expires_in,
                             "token_type": "Bearer"})

    def _check(self, assertion: str, url: str) -> str | None:
        try:
            head, body, signature = assertion.split(".")
            header, claims = json.loads(_b64url(head)), json.loads(_b64url(body))
            sig = _b64url(signature)
        except (ValueError, binascii.Error):
            return "Invalid JWT: not a compact JWS."
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg must be RS256."
        key = self.keys.get(claims.get("iss"))
        if key is None:
            return "Invalid JWT: unknown issuer."
        try:
            key.verify(sig, f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "Invalid JWT Signature."
        now = self.clock()
        if claims.get("aud") != url:
            return f"Invalid JWT: audience must be {url}."
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid JWT: scope missing."
        iat, exp = claims.get("iat", 0), claims.get("exp", 0)
        if not (iat - 60 <= now < exp) or exp - iat > 3600:
            return "Invalid JWT: Token must be a short-lived token (60 minutes) and in a " \
                   "reasonable timeframe."
        return None


def _oauth_error(error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, 400)


# -- Vertex AI batchPredictionJobs ----------------------------------------------------------------


class FakeVertex:
    def __init__(
        self,
        oauth: FakeGoogleOAuth,
        gcs_url: str,
        project_id: str = "my-project",
        project_number: str = "510528649030",
        location: str = "us-central1",
        models: Iterable[str] = ("gemini-2.5-flash",),
        processing_polls: int = 1,
        prediction_files: int = 1,
    ) -> None:
        self.oauth = oauth
        self.gcs_url = gcs_url.rstrip("/")
        self.project_id, self.project_number = project_id, project_number
        self.location = location
        self.models = frozenset(models)
        self.processing_polls = processing_polls
        self.prediction_files = prediction_files
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: list[tuple[str, int]] = []  # (method, status): answer next such call so
        self._polls: dict[str, int] = {}
        self._ids = itertools.count(3814889423749775360)
        self._lock = threading.Lock()
        base = "/v1/projects/{project}/locations/{location}/batchPredictionJobs"
        self.app = Starlette(routes=[
            Route(base, self._collection, methods=["GET", "POST"]),
            Route(base + "/{job}", self._job, methods=["GET", "POST", "DELETE"]),
        ])

    def fail_next(self, method: str, status: int) -> None:
        self.faults.append((method, status))

    # -- HTTP ----------------------------------------------------------------------------------

    def _guard(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path))
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not self.oauth.valid(auth[7:]):
            return google_error(401, "Request had invalid authentication credentials. "
                                     "Expected OAuth 2 access token.")
        params = request.path_params
        if params["project"] not in (self.project_id, self.project_number) \
                or params["location"] != self.location:
            return google_error(403, f"Permission denied on resource project "
                                     f"{params['project']}.")
        for fault in self.faults:
            if fault[0] == request.method:
                self.faults.remove(fault)
                return google_error(fault[1], "Injected failure.")
        return None

    async def _collection(self, request: Request) -> Response:
        refused = self._guard(request)
        if refused:
            return refused
        if request.method == "GET":
            return self._list(request)
        try:
            body = await request.json()
        except ValueError:
            return google_error(400, "Invalid JSON payload received.")
        problem = _check_job(body, self.models)
        if problem:
            return google_error(400, problem)
        job_id = str(next(self._ids))
        now = time.time()
        job = {
            "name": f"projects/{self.project_number}/locations/{self.location}"
                    f"/batchPredictionJobs/{job_id}",
            "displayName": body.get("displayName", ""),
            "model": body["model"],
            "modelVersionId": "1",
            "inputConfig": body["inputConfig"],
            "outputConfig": body["outputConfig"],
            "state": "JOB_STATE_PENDING",
            "createTime": rfc3339(now),
            "updateTime": rfc3339(now),
        }
        if body.get("labels"):
            job["labels"] = body["labels"]
        with self._lock:
            self.jobs[job_id] = job
        return JSONResponse(job)

    def _list(self, request: Request) -> Response:
        size = int(request.query_params.get("pageSize") or 100)
        start = int(request.query_params.get("pageToken") or 0)
        jobs = list(self.jobs.values())[start : start + size]
        page: dict[str, Any] = {"batchPredictionJobs": jobs} if jobs else {}
        if start + size < len(self.jobs):
            page["nextPageToken"] = str(start + size)
        return JSONResponse(page)

    async def _job(self, request: Request) -> Response:
        refused = self._guard(request)
        if refused:
            return refused
        job_id, _, verb = request.path_params["job"].partition(":")
        job = self.jobs.get(job_id)
        if job is None:
            return google_error(404, f"The BatchPredictionJob does not exist: {job_id}")
        if request.method == "POST" and verb == "cancel":
            if job["state"] in TERMINAL:
                return _precondition(f"Cannot cancel BatchPredictionJob {job_id} in state "
                                     f"{job['state']}.")
            job["state"] = "JOB_STATE_CANCELLING"
            job["updateTime"] = rfc3339(time.time())
            return JSONResponse({})
        if request.method == "DELETE":
            if job["state"] not in TERMINAL:
                return _precondition("The job must be finished before it is deleted.")
            del self.jobs[job_id]
            return JSONResponse({"name": f"{job['name']}/operations/1", "done": True, "metadata": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata"}})
        if request.method != "GET" or verb:
            return google_error(404, "Method not found.")
        await self._advance(job_id, job)
        return JSONResponse(job)

    # -- the job state machine ------------------------------------------------------------------

    async def _advance(self, job_id: str, job: dict[str, Any]) -> None:
        now = time.time()
        state = job["state"]
        if state == "JOB_STATE_PENDING":
            job.update(state="JOB_STATE_RUNNING", startTime=rfc3339(now))
        elif state == "JOB_STATE_CANCELLING":
            job.update(state="JOB_STATE_CANCELLED", endTime=rfc3339(now),
                       error={"code": 1, "message": "CANCELED"})
        elif state == "JOB_STATE_RUNNING":
            self._polls[job_id] = self._polls.get(job_id, 0) + 1
            if self._polls[job_id] < self.processing_polls:
                return
            await self._process(job, now)
            job["endTime"] = rfc3339(now)
        else:
            return
        job["updateTime"] = rfc3339(now)

    async def _process(self, job: dict[str, Any], now: float) -> None:
        uris = job["inputConfig"]["gcsSource"]["uris"]
        prefix = job["outputConfig"]["gcsDestination"]["outputUriPrefix"].rstrip("/")
        directory = f"{prefix}/prediction-model-{rfc3339(now)}"
        results: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as http:
            for uri in uris:
                data = await self._download(http, uri)
                if data is None:
                    job.update(state="JOB_STATE_FAILED", error={
                        "code": 3, "message": f"Failed to read input {uri}: object not found."})
                    return
                for raw in data.splitlines():
                    if raw.strip():
                        results.append(_predict(raw, job["model"].rsplit("/", 1)[-1], now))
            results.reverse()
            files = max(1, min(self.prediction_files, len(results)))
            for n in range(files):
                name = "predictions.jsonl" if files == 1 else f"predictions_{n + 1:04d}.jsonl"
                chunk = results[n::files]
                body = b"".join(json.dumps(r).encode() + b"\n" for r in chunk)
                await self._upload(http, f"{directory}/{name}", body)
        ok = sum(1 for r in results if not r["status"])
        stats = {k: str(v) for k, v in (("successfulCount", ok),
                                        ("failedCount", len(results) - ok)) if v}
        job.update(state="JOB_STATE_SUCCEEDED", completionStats=stats,
                   outputInfo={"gcsOutputDirectory": directory})

    async def _download(self, http: aiohttp.ClientSession, uri: str) -> bytes | None:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        url = f"{self.gcs_url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}?alt=media"
        async with http.get(url) as resp:
            return await resp.read() if resp.status == 200 else None

    async def _upload(self, http: aiohttp.ClientSession, uri: str, data: bytes) -> None:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        with aiohttp.MultipartWriter("related") as body:
            body.append_json({"name": name, "contentType": "application/jsonl"})
            body.append(data, {"Content-Type": "application/jsonl"})
            async with http.post(f"{self.gcs_url}/upload/storage/v1/b/{bucket}/o",
                                 params={"uploadType": "multipart"}, data=body) as resp:
                assert resp.status == 200, await resp.text()


def _precondition(message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": 400, "message": message,
                                   "status": "FAILED_PRECONDITION"}}, 400)


def _check_job(body: Any, models: frozenset[str]) -> str | None:
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    model = str(body.get("model", ""))
    if not model.startswith("publishers/google/models/") or model.rsplit("/", 1)[-1] not in models:
        return f"Publisher model {model} is not found or not supported."
    source = (body.get("inputConfig") or {})
    uris = (source.get("gcsSource") or {}).get("uris")
    if source.get("instancesFormat") != "jsonl" or not isinstance(uris, list) or not uris \
            or not all(isinstance(u, str) and u.startswith("gs://") for u in uris):
        return "inputConfig must name jsonl instances in gcsSource.uris."
    out = body.get("outputConfig") or {}
    prefix = (out.get("gcsDestination") or {}).get("outputUriPrefix")
    if out.get("predictionsFormat") != "jsonl" or not str(prefix).startswith("gs://"):
        return "outputConfig must be jsonl predictions to a gcsDestination."
    return _check_labels(body.get("labels") or {}, "labels")


def _check_labels(tags: Any, where: str) -> str | None:
    if not isinstance(tags, dict) or len(tags) > 64:
        return f"{where}: at most 64 labels."
    for key, value in tags.items():
        if not _LABEL_KEY.fullmatch(str(key)) or not isinstance(value, str) \
                or not _LABEL_VALUE.fullmatch(value):
            return f"{where}: invalid label {key!r}: {value!r}."
    return None


# -- one prediction ------------------------------------------------------------------------------

_REQUEST_KEYS = frozenset({"contents", "systemInstruction", "tools", "toolConfig",
                           "generationConfig", "labels", "safetySettings", "cachedContent"})
_NUMBER, _INT = (int, float), (int,)
_GENERATION: dict[str, tuple[type, ...]] = {
    "temperature": _NUMBER, "topP": _NUMBER, "topK": _NUMBER, "candidateCount": _INT,
    "maxOutputTokens": _INT, "stopSequences": (list,), "presencePenalty": _NUMBER,
    "frequencyPenalty": _NUMBER, "seed": _INT, "responseMimeType": (str,),
    "responseSchema": (dict,), "responseJsonSchema": (dict,), "responseLogprobs": (bool,),
    "logprobs": _INT, "thinkingConfig": (dict,),
}
_PART_DATA = frozenset({"text", "inlineData", "fileData", "functionCall", "functionResponse"})


def check_request(request: Any) -> str | None:
    """Why a Gemini GenerateContentRequest would be refused, or None (a tolerant subset of
    Vertex AI's own validation: unknown fields, roles, part shapes, value types)."""
    if not isinstance(request, dict):
        return "request must be an object."
    for key in request:
        if key not in _REQUEST_KEYS:
            return f'Invalid JSON payload received. Unknown name "{key}".'
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return "contents is required."
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role") not in ("user", "model"):
            return f"contents[{i}].role must be user or model."
        problem = _check_parts(content.get("parts"), f"contents[{i}]")
        if problem:
            return problem
    system = request.get("systemInstruction")
    if system is not None:
        problem = _check_parts((system or {}).get("parts"), "systemInstruction")
        if problem:
            return problem
    for key, value in (request.get("generationConfig") or {}).items():
        types = _GENERATION.get(key)
        if types is None:
            return f'Invalid JSON payload received. Unknown name "{key}" at generation_config.'
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"generation_config.{key} has the wrong type."
    for tool in request.get("tools") or []:
        for decl in (tool or {}).get("functionDeclarations") or []:
            if not isinstance(decl.get("name"), str):
                return "function declarations need a name."
    mode = ((request.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if mode not in (None, "AUTO", "ANY", "NONE", "VALIDATED"):
        return f"unknown function calling mode {mode!r}."
    return _check_labels(request.get("labels") or {}, "labels")


def _check_parts(parts: Any, where: str) -> str | None:
    if not isinstance(parts, list) or not parts:
        return f"{where}.parts must not be empty."
    for j, part in enumerate(parts):
        data = [k for k in part if k in _PART_DATA] if isinstance(part, dict) else []
        if len(data) != 1:
            return f"{where}.parts[{j}] must have exactly one data field."
        value = part[data[0]]
        if data[0] == "text" and not isinstance(value, str):
            return f"{where}.parts[{j}].text must be a string."
        if data[0] == "inlineData":
            try:
                base64.b64decode(value["data"], validate=True)
            except (KeyError, TypeError, binascii.Error):
                return f"{where}.parts[{j}].inlineData.data must be base64."
        if data[0] == "fileData" and not (value.get("fileUri") and value.get("mimeType")):
            return f"{where}.parts[{j}].fileData needs fileUri and mimeType."
        if data[0] in ("functionCall", "functionResponse") and not isinstance(
            value.get("args", value.get("response")), dict
        ):
            return f"{where}.parts[{j}].{data[0]} needs an object."
    return None


def _predict(raw: bytes, model: str, now: float) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(now, UTC).isoformat()
    try:
        line = json.loads(raw)
    except ValueError:
        return {"status": "Invalid JSON in the input line.", "processed_time": stamp,
                "request": {}}
    request = line.get("request") if isinstance(line, dict) else None
    problem = check_request(request)
    if problem:
        return {"status": f"INVALID_ARGUMENT: {problem}", "processed_time": stamp,
                "request": request if isinstance(request, dict) else {}}
    assert isinstance(request, dict)
    text = _last_user_text(request)
    prediction: dict[str, Any] = {"status": "", "processed_time": stamp, "request": request}
    if "FAIL" in text:
        prediction["status"] = "INTERNAL: The model failed to process this request."
        return prediction
    prompt_tokens = len(json.dumps(request["contents"]).split())
    response: dict[str, Any] = {"modelVersion": f"{model}@default", "createTime": rfc3339(now),
                                "responseId": secrets.token_urlsafe(12)}
    if "BLOCK" in text:
        response.update(promptFeedback={"blockReason": "SAFETY"},
                        usageMetadata={"promptTokenCount": prompt_tokens,
                                       "totalTokenCount": prompt_tokens})
        prediction["response"] = response
        return prediction
    config = request.get("generationConfig") or {}
    candidates, used = [], 0
    for index in range(config.get("candidateCount", 1)):
        parts, reason = _reply(request, text, config)
        used += sum(len(str(p.get("text", p)).split()) for p in parts)
        candidates.append({"index": index, "content": {"role": "model", "parts": parts},
                           "finishReason": reason})
    thoughts = 7 if config.get("thinkingConfig") else 0
    usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": used,
             "totalTokenCount": prompt_tokens + used + thoughts, "trafficType": "ON_DEMAND"}
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    response.update(candidates=candidates, usageMetadata=usage)
    prediction["response"] = response
    return prediction


def _last_user_text(request: dict[str, Any]) -> str:
    for content in reversed(request["contents"]):
        if content["role"] == "user":
            texts = [p["text"] for p in content["parts"] if "text" in p]
            if texts:
                return " ".join(texts)
    return ""


def _reply(
    request: dict[str, Any], text: str, config: dict[str, Any]
) -> tuple[list[dict[str, Any]], str]:
    calling = (request.get("toolConfig") or {}).get("functionCallingConfig") or {}
    declared = [d["name"] for t in request.get("tools") or []
                for d in t.get("functionDeclarations") or []]
    parts: list[dict[str, Any]] = []
    if config.get("thinkingConfig"):
        parts.append({"text": "Let me think.", "thought": True})
    if declared and calling.get("mode") == "ANY":
        name = (calling.get("allowedFunctionNames") or declared)[0]
        parts.append({"functionCall": {"name": name, "args": {"query": text}}})
        return parts, "STOP"
    if config.get("responseMimeType") == "application/json":
        parts.append({"text": json.dumps({"echo": text})})
        return parts, "STOP"
    words = f"echo: {text}".split()
    limit = config.get("maxOutputTokens")
    reason = "STOP"
    if limit is not None and len(words) > limit:
        words, reason = words[:limit], "MAX_TOKENS"
    parts.append({"text": " ".join(words)})
    return parts, reason
