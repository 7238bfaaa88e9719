"""A fake AWS Bedrock batch inference control plane, and a SigV4-checking front for S3, for
tests. Needs the adapter's `test` extras (boto3, httpx) and an S3 API to run jobs against
(moto in server mode: `gateway.testing.s3.S3Emulator`).

    with S3Emulator() as s3:
        fake = FakeBedrock(s3.url)
        with ServerThread(fake.app) as bedrock, ServerThread(fake.s3_app) as s3_front:
            ...  # api_base=bedrock.url, s3_endpoint_url=s3_front.url

What it enforces, as the real services do:

- **SigV4** on every request, recomputed with botocore from the request as received (service
  `bedrock` or `s3`, region, date within 5 minutes, signed `host` and `x-amz-date`, the session
  token when the key has one, the payload hash): failures answer AWS's 403s
  (`MissingAuthenticationTokenException`, `IncompleteSignatureException`,
  `UnrecognizedClientException`, `InvalidSignatureException`; on S3 `AccessDenied`,
  `InvalidAccessKeyId`, `SignatureDoesNotMatch`, ... as XML).
- **CreateModelInvocationJob** validated against botocore's service model (required members,
  unions, patterns, ranges, enums; unknown members refused), known model ids and roles, unique
  job names, `clientRequestToken` idempotency, an optional cap on active jobs
  (`ServiceQuotaExceededException`).
- **Jobs** advance one state per GetModelInvocationJob: Submitted → Validating → Scheduled
  (having read the input from S3: missing or non-JSONL input, bad records, or fewer than
  `min_records` / more than `max_records` records end the job `Failed` with Bedrock's message) →
  InProgress → Completed, having written `<input name>.out` (lines in shuffled order) and
  `manifest.json.out` under `<output s3Uri>/<job id>/`. Each record's `modelInput` is checked as
  Claude's Messages body (`Malformed input request: ...` errors per record, never for the job);
  a record whose last user text contains "FAIL" gets a model error. StopModelInvocationJob →
  Stopping → Stopped, with output for half the records when it was already running.
- Everything received is kept in `requests` (and `s3_requests` for the S3 front).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import hashlib
import hmac
import json
import random
import re
import secrets
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ACCESS_KEY = "AKIAFAKEBEDROCK00001"
SECRET_KEY = "fake-bedrock-secret-key/0123456789abcdef"
REGION = "us-east-1"
ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/BedrockBatchInference"
MODELS = frozenset({
    "anthropic.claude-3-haiku-20240307-v1:0",
    "anthropic.claude-3-5-sonnet-20240620-v1:0",
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "us.anthropic.claude-haiku-4-5-20251001-v1:0",
})
_METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]
_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<day>\d{8})/(?P<region>[^/,\s]+)/"
    r"(?P<service>[^/,\s]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*"
    r"Signature=(?P<signature>[0-9a-f]{64})")
_SKEW = 300  # seconds a request's X-Amz-Date may be off
_CORAL = "http://internal.amazon.com/coral/com.amazon.coral.service/"
_BEDROCK_NS = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_JOB_ID_ALPHABET = string.ascii_lowercase + string.digits
_RECORD_ID = re.compile(r"[A-Za-z0-9]+")
_ACTIVE = frozenset({"Submitted", "Validating", "Scheduled", "InProgress", "Stopping"})
TERMINAL = frozenset({"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"})


def iso(t: float) -> str:
    """Bedrock's timestamps: ISO 8601, milliseconds, `Z`."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{int(t * 1000) % 1000:03d}Z"


# -- SigV4 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthFailure:
    status: int
    code: str
    message: str


def verify_sigv4(
    method: str, raw_path: str, raw_query: str, headers: Any, body: bytes, *,
    service: str, region: str, keys: Mapping[str, tuple[str, str | None]], now: float,
) -> AuthFailure | None:
    """Check a request's SigV4 `Authorization` header by signing it again with botocore.

    `headers` is the request's case-insensitive multi-dict (starlette `Headers`); `keys` maps
    access key ids to (secret, session token or None). None when the signature holds.
    """
    s3 = service == "s3"

    def fail(kind: str, message: str) -> AuthFailure:
        if s3:
            code, status = {"missing": ("AccessDenied", 403),
                            "malformed": ("AuthorizationHeaderMalformed", 400),
                            "key": ("InvalidAccessKeyId", 403),
                            "token": ("InvalidToken", 400),
                            "skew": ("RequestTimeTooSkewed", 403),
                            "mismatch": ("SignatureDoesNotMatch", 403)}[kind]
        else:
            code, status = {"missing": ("MissingAuthenticationTokenException", 403),
                            "malformed": ("IncompleteSignatureException", 403),
                            "key": ("UnrecognizedClientException", 403),
                            "token": ("UnrecognizedClientException", 403),
                            "skew": ("InvalidSignatureException", 403),
                            "mismatch": ("InvalidSignatureException", 403)}[kind]
        return AuthFailure(status, code, message)

    auth = headers.get("authorization")
    if not auth:
        return fail("missing", "Access Denied" if s3 else "Missing Authentication Token")
    match = _AUTH.fullmatch(auth.strip())
    if match is None:
        return fail("malformed", "Authorization header requires 'Credential', 'Signature' and "
                                 "'SignedHeaders' parameters in AWS4-HMAC-SHA256 form.")
    key = match["key"]
    if key not in keys:
        return fail("key", "The AWS Access Key Id you provided does not exist in our records."
                    if s3 else "The security token included in the request is invalid.")
    signed = match["signed"].split(";")
    if signed != sorted(set(signed)) or "host" not in signed or "x-amz-date" not in signed:
        return fail("malformed", "'Host' and 'X-Amz-Date' must be signed, and SignedHeaders "
                                 "sorted and unique.")
    if any(name not in headers for name in signed):
        return fail("malformed", "A signed header is missing from the request.")
    amz_date = headers["x-amz-date"]
    try:
        signed_at = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return fail("malformed", f"Invalid X-Amz-Date '{amz_date}'.")
    if amz_date[:8] != match["day"]:
        return fail("mismatch", "Date in Credential scope does not match YYYYMMDD from "
                                "ISO-8601 version of date from HTTP.")
    if abs(now - signed_at) > _SKEW:
        return fail("skew", f"Signature expired: {amz_date} is now earlier or later than "
                            f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))} (5 min).")
    if match["region"] != region:
        return fail("malformed" if s3 else "mismatch",
                    f"Credential should be scoped to a valid region, not '{match['region']}'; "
                    f"expecting '{region}'.")
    if match["service"] != service:
        return fail("malformed" if s3 else "mismatch",
                    f"Credential should be scoped to correct service: '{service}'.")
    secret, token = keys[key]
    if token is not None and (headers.get("x-amz-security-token") != token
                              or "x-amz-security-token" not in signed):
        return fail("token", "The security token included in the request is invalid.")
    if s3:
        declared = headers.get("x-amz-content-sha256")
        if declared is None:
            return AuthFailure(400, "InvalidRequest", "Missing required header for this "
                                                      "request: x-amz-content-sha256")
        if declared != "UNSIGNED-PAYLOAD" and declared != hashlib.sha256(body).hexdigest():
            return AuthFailure(400, "XAmzContentSHA256Mismatch", "The provided "
                               "'x-amz-content-sha256' header does not match what was computed.")
    request = AWSRequest(
        method=method,
        url=f"http://{headers['host']}{raw_path}",
        headers={name: ",".join(headers.getlist(name)) for name in signed},
        data=body,
        params=parse_qsl(raw_query, keep_blank_values=True),
    )
    request.context["timestamp"] = amz_date
    signer = (S3SigV4Auth if s3 else SigV4Auth)(Credentials(key, secret, token), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, match["signature"]):
        return fail("mismatch", "The request signature we calculated does not match the "
                                "signature you provided. Check your AWS Secret Access Key and "
                                "signing method. Consult the service documentation for details.")
    return None


def aws_error(status: int, code: str, message: str, namespace: str = _BEDROCK_NS) -> Response:
    """A rest-json error as Bedrock answers it."""
    return JSONResponse({"message": message}, status, headers={
        "x-amzn-ErrorType": f"{code}:{namespace}", "x-amzn-RequestId": str(uuid.uuid4())})


def s3_error(status: int, code: str, message: str, method: str) -> Response:
    body = b"" if method == "HEAD" else (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>").encode()
    return Response(body, status, media_type="application/xml")


@dataclass
class Received:
    method: str
    path: str  # as sent, percent-encoded
    query: str
    headers: dict[str, str]
    body: bytes
    status: int = 0


# -- botocore's service model as a validator ------------------------------------------------------


class ShapeValidator:
    """Validates a request body against a shape of botocore's service model, with AWS's
    `N validation error(s) detected: ...` wording."""

    def __init__(self, service: str = "bedrock") -> None:
        import botocore.loaders

        self.shapes: dict[str, Any] = botocore.loaders.Loader().load_service_model(
            service, "service-2")["shapes"]

    def errors(self, value: Any, shape_name: str, path: str = "") -> list[str]:
        shape = self.shapes[shape_name]
        kind = shape["type"]
        where = path or "request"
        if kind == "structure":
            if not isinstance(value, dict):
                return [f"Value at '{where}' failed to satisfy constraint: Member must be an "
                        "object"]
            members = shape.get("members", {})
            out = [f"Value at '{path + '.' if path else ''}{k}' failed to satisfy constraint: "
                   "Member is not a known member of the structure" for k in value
                   if k not in members]
            out += [f"Value null at '{path + '.' if path else ''}{k}' failed to satisfy "
                    "constraint: Member must not be null"
                    for k in shape.get("required", []) if value.get(k) is None]
            if shape.get("union") and len([k for k in value if value[k] is not None]) != 1:
                out.append(f"Value at '{where}' failed to satisfy constraint: Member must "
                           "have exactly one member set")
            for k, member in members.items():
                if value.get(k) is not None:
                    out += self.errors(value[k], member["shape"],
                                       f"{path}.{k}" if path else k)
            return out
        if kind == "string":
            if not isinstance(value, str):
                return [f"Value at '{where}' failed to satisfy constraint: Member must be a "
                        "string"]
            out = []
            if "enum" in shape and value not in shape["enum"]:
                out.append(f"Value '{value}' at '{where}' failed to satisfy constraint: Member "
                           f"must satisfy enum value set: [{', '.join(shape['enum'])}]")
            if len(value) < shape.get("min", 0) or len(value) > shape.get("max", 1 << 62):
                out.append(f"Value '{value}' at '{where}' failed to satisfy constraint: Member "
                           f"must have length between {shape.get('min', 0)} and "
                           f"{shape.get('max')}")
            pattern = shape.get("pattern")
            if pattern and not re.fullmatch(pattern, value):
                out.append(f"Value '{value}' at '{where}' failed to satisfy constraint: Member "
                           f"must satisfy regular expression pattern: {pattern}")
            return out
        if kind in ("integer", "long"):
            if isinstance(value, bool) or not isinstance(value, int):
                return [f"Value at '{where}' failed to satisfy constraint: Member must be an "
                        "integer"]
            low, high = shape.get("min"), shape.get("max")
            if (low is not None and value < low) or (high is not None and value > high):
                return [f"Value '{value}' at '{where}' failed to satisfy constraint: Member "
                        f"must have value between {low} and {high}"]
            return []
        if kind == "list":
            if not isinstance(value, list):
                return [f"Value at '{where}' failed to satisfy constraint: Member must be a "
                        "list"]
            out = []
            if len(value) < shape.get("min", 0) or len(value) > shape.get("max", 1 << 62):
                out.append(f"Value at '{where}' failed to satisfy constraint: Member must "
                           f"have length between {shape.get('min', 0)} and {shape.get('max')}")
            for i, item in enumerate(value):
                out += self.errors(item, shape["member"]["shape"], f"{where}.{i + 1}.member")
            return out
        if kind == "boolean" and not isinstance(value, bool):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be a boolean"]
        return []

    def message(self, value: Any, shape_name: str) -> str | None:
        errors = self.errors(value, shape_name)
        if not errors:
            return None
        noun = "error" if len(errors) == 1 else "errors"
        return f"{len(errors)} validation {noun} detected: " + "; ".join(errors)


# -- Claude on Bedrock, one record ----------------------------------------------------------------


_CLAUDE_KEYS = frozenset({"anthropic_version", "max_tokens", "messages", "system", "temperature",
                          "top_p", "top_k", "stop_sequences", "tools", "tool_choice", "thinking",
                          "metadata", "anthropic_beta"})
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


class Malformed(Exception):
    pass


def check_claude_body(body: Any) -> None:
    """Claude's Messages body as Bedrock takes it in InvokeModel records; raises `Malformed`
    with Bedrock's wording (JSON-pointer paths)."""
    if not isinstance(body, dict):
        raise Malformed("#: expected type: JSONObject")
    for key in body:
        if key not in _CLAUDE_KEYS:
            raise Malformed(f"#: extraneous key [{key}] is not permitted")
    if body.get("anthropic_version") != "bedrock-2023-05-31":
        raise Malformed("#/anthropic_version: must be bedrock-2023-05-31"
                        if "anthropic_version" in body else
                        "#: required key [anthropic_version] not found")
    tokens = body.get("max_tokens")
    if tokens is None:
        raise Malformed("#: required key [max_tokens] not found")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise Malformed(f"#/max_tokens: {tokens} is not greater or equal to 1")
    for key in ("temperature", "top_p"):
        value = body.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                  or not 0 <= value <= 1):
            raise Malformed(f"#/{key}: {value} is not between 0 and 1")
    system = body.get("system")
    if system is not None and not isinstance(system, str) and (
            not isinstance(system, list) or not all(
                isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
                for b in system)):
        raise Malformed("#/system: expected a string or a list of text blocks")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(
            isinstance(s, str) and s.strip() for s in stops)):
        raise Malformed("#/stop_sequences: expected a list of non-blank strings")
    tool_names = set()
    for i, tool in enumerate(body.get("tools") or []):
        if not isinstance(tool, dict) or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}",
                                                          str(tool.get("name"))):
            raise Malformed(f"#/tools/{i}/name: string does not match pattern")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise Malformed(f"#/tools/{i}/input_schema/type: must be object")
        tool_names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else None
        if kind not in ("auto", "any", "tool", "none"):
            raise Malformed("#/tool_choice/type: must be one of auto, any, tool, none")
        if kind in ("any", "tool") and not tool_names:
            raise Malformed("#/tool_choice: tool_choice may only be specified while providing "
                            "tools")
        if kind == "tool" and choice.get("name") not in tool_names:
            raise Malformed("#/tool_choice/name: names no tool")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Malformed("#/messages: expected minimum item count: 1")
    pending: set[str] = set()  # tool_use ids awaiting their result in the next user turn
    for i, message in enumerate(messages):
        where = f"#/messages/{i}"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            raise Malformed(f"{where}/role: {role} is not a valid enum value")
        content = message.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(blocks, list) or not blocks:
            raise Malformed(f"{where}/content: expected a string or a non-empty list")
        results: set[str] = set()
        for j, block in enumerate(blocks):
            at = f"{where}/content/{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                if not isinstance(block.get("text"), str) or not block["text"].strip():
                    raise Malformed(f"{at}: text content blocks must contain non-whitespace "
                                    "text")
            elif kind == "image":
                source = block.get("source") or {}
                if source.get("type") != "base64":
                    raise Malformed(f"{at}/source/type: only base64 image sources are "
                                    "supported")
                if source.get("media_type") not in _IMAGE_TYPES:
                    raise Malformed(f"{at}/source/media_type: unsupported image type")
                try:
                    base64.b64decode(str(source.get("data") or ""), validate=True)
                except (binascii.Error, ValueError):
                    raise Malformed(f"{at}/source/data: invalid base64 data") from None
            elif kind == "tool_use" and role == "assistant":
                pending.add(str(block.get("id")))
            elif kind == "tool_result" and role == "user":
                if block.get("tool_use_id") not in pending:
                    raise Malformed(f"{at}: unexpected tool_use_id found in tool_result blocks")
                results.add(block["tool_use_id"])
            else:
                raise Malformed(f"{at}/type: {kind} is not valid in a {role} message")
        if role == "user" and pending:
            if pending - results:
                raise Malformed(f"{where}: tool_use ids were found without tool_result blocks "
                                "immediately after")
            pending = set()


def _words(text: str) -> list[str]:
    return text.split()


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b["text"] for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]


def claude_reply(body: dict[str, Any], model: str, rng: random.Random) -> dict[str, Any]:
    """A plausible Claude Messages response for a valid body: an echo of the last user text,
    a tool call when tool_choice demands one, cut at max_tokens or a stop sequence."""
    last_user = next(m for m in reversed(body["messages"]) if m["role"] == "user")
    prompt = " ".join(_texts(last_user["content"]))
    input_tokens = sum(len(_words(t)) for m in body["messages"] for t in _texts(m["content"]))
    system = body.get("system")
    input_tokens += len(_words(system if isinstance(system, str) else
                               " ".join(_texts(system or []))))
    input_tokens += 8 * sum(1 for m in body["messages"] for b in
                            (m["content"] if isinstance(m["content"], list) else [])
                            if b.get("type") == "image")
    message_id = "msg_bdrk_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24))
    out: dict[str, Any] = {"id": message_id, "type": "message", "role": "assistant",
                           "model": model, "content": [], "stop_reason": "end_turn",
                           "stop_sequence": None}
    choice = body.get("tool_choice") or {}
    tools = body.get("tools") or []
    if tools and choice.get("type") in ("any", "tool"):
        name = choice.get("name") or tools[0]["name"]
        out["content"] = [{"type": "tool_use", "id": "toolu_bdrk_" + message_id[-20:],
                           "name": name, "input": {"query": prompt}}]
        out["stop_reason"] = "tool_use"
        output_tokens = 12
    else:
        words = _words(f"echo: {prompt}")
        text = " ".join(words)
        for stop in body.get("stop_sequences") or []:
            if stop in text:
                text = text[: text.index(stop)].rstrip()
                out["stop_reason"], out["stop_sequence"] = "stop_sequence", stop
                break
        words = _words(text)
        if len(words) > body["max_tokens"]:
            words = words[: body["max_tokens"]]
            out["stop_reason"], out["stop_sequence"] = "max_tokens", None
        text = " ".join(words)
        out["content"] = [{"type": "text", "text": text}]
        output_tokens = max(len(words), 1)
    out["usage"] = {"input_tokens": max(input_tokens, 1), "output_tokens": output_tokens}
    return out


def model_name(model_id: str) -> str:
    """What Claude on Bedrock reports as `model`: `claude-3-haiku-20240307` for
    `anthropic.claude-3-haiku-20240307-v1:0`."""
    tail = model_id.rsplit("/", 1)[-1].split("anthropic.", 1)[-1]
    return re.sub(r"-v\d+(:\d+)?$", "", tail)


# -- the fake -------------------------------------------------------------------------------------


@dataclass
class Job:
    arn: str
    job_id: str
    name: str
    token: str | None
    model_id: str
    role_arn: str
    input_uri: str
    output_uri: str
    timeout_hours: int | None
    submit_time: float
    status: str = "Submitted"
    last_modified: float = 0.0
    end_time: float | None = None
    message: str | None = None
    records: list[tuple[str, Any]] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    stopped_from: str | None = None
    in_progress_gets: int = 0

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "jobArn": self.arn, "jobName": self.name, "modelId": self.model_id,
            "roleArn": self.role_arn, "status": self.status, "submitTime": iso(self.submit_time),
            "lastModifiedTime": iso(self.last_modified),
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": self.input_uri,
                                                      "s3InputFormat": "JSONL"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": self.output_uri}},
            "timeoutDurationInHours": self.timeout_hours or 24,
            "jobExpirationTime": iso(self.submit_time + 3600 * (self.timeout_hours or 24)),
        }
        if self.token:
            out["clientRequestToken"] = self.token
        if self.message:
            out["message"] = self.message
        if self.end_time is not None:
            out["endTime"] = iso(self.end_time)
        for key in ("totalRecordCount", "processedRecordCount", "successRecordCount",
                    "errorRecordCount"):
            if key in self.counts:
                out[key] = self.counts[key]
        return out


def _split_uri(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class FakeBedrock:
    """The Bedrock control plane (`app`) and a SigV4-checking S3 front (`s3_app`) forwarding
    to the S3 API at `s3_url`, sharing one set of accepted keys."""

    def __init__(
        self,
        s3_url: str,
        *,
        region: str = REGION,
        account: str = ACCOUNT,
        keys: Mapping[str, tuple[str, str | None]] | None = None,
        models: Iterable[str] = MODELS,
        roles: Iterable[str] | None = (ROLE_ARN,),
        min_records: int = 100,
        max_records: int = 50_000,
        in_progress_gets: int = 1,
        max_active_jobs: int | None = None,
        s3_access_key: str = "testing-access-key",
        s3_secret_key: str = "testing-secret-key",
    ) -> None:
        self.s3_url = s3_url.rstrip("/")
        self.region = region
        self.account = account
        self.keys: dict[str, tuple[str, str | None]] = dict(keys or {ACCESS_KEY: (SECRET_KEY,
                                                                                  None)})
        self.models = set(models)
        self.roles = set(roles) if roles is not None else None
        self.min_records = min_records
        self.max_records = max_records
        self.in_progress_gets = in_progress_gets
        self.max_active_jobs = max_active_jobs
        self.clock: Callable[[], float] = time.time
        self.jobs: dict[str, Job] = {}  # by job id
        self.requests: list[Received] = []
        self.s3_requests: list[Received] = []
        # One-off answers for the next control-plane calls: (status, code, message).
        self.inject: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()
        self._validator = ShapeValidator()
        self._s3_client: Any = None
        self._s3_keys = (s3_access_key, s3_secret_key)
        self._http: Any = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._control, methods=_METHODS)])
        self.s3_app = Starlette(routes=[Route("/{path:path}", self._s3_front, methods=_METHODS)])

    # -- plumbing -------------------------------------------------------------------------------

    def s3(self) -> Any:
        """A boto3 client on the S3 API itself (what the job's service role reaches)."""
        if self._s3_client is None:
            import boto3

            self._s3_client = boto3.client(
                "s3", endpoint_url=self.s3_url, region_name=self.region,
                aws_access_key_id=self._s3_keys[0], aws_secret_access_key=self._s3_keys[1])
        return self._s3_client

    @staticmethod
    async def _received(request: Request) -> Received:
        return Received(
            method=request.method,
            path=request.scope["raw_path"].decode("latin-1"),
            query=request.scope["query_string"].decode("latin-1"),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )

    def _verify(self, received: Received, request: Request, service: str) -> AuthFailure | None:
        return verify_sigv4(received.method, received.path, received.query, request.headers,
                            received.body, service=service, region=self.region, keys=self.keys,
                            now=self.clock())

    def close(self) -> None:
        """Release the S3 front's connections (from any thread)."""
        if self._http is not None and self._http_loop is not None \
                and not self._http_loop.is_closed():
            future = asyncio.run_coroutine_threadsafe(self._http.aclose(), self._http_loop)
            future.result(timeout=10)
        self._http = None

    # -- the S3 front -----------------------------------------------------------------------------

    async def _s3_front(self, request: Request) -> Response:
        received = await self._received(request)
        self.s3_requests.append(received)
        failure = self._verify(received, request, "s3")
        if failure is not None:
            received.status = failure.status
            return s3_error(failure.status, failure.code, failure.message, received.method)
        import httpx

        if self._http is None:
            self._http = httpx.AsyncClient(timeout=60)
            self._http_loop = asyncio.get_running_loop()
        url = self.s3_url + received.path + (f"?{received.query}" if received.query else "")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length", "connection")}
        upstream = await self._http.request(received.method, url, content=received.body,
                                            headers=headers)
        received.status = upstream.status_code
        passed = {k: v for k, v in upstream.headers.items()
                  if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                       "content-encoding", "date", "server")}
        if received.method == "HEAD":
            return Response(b"", upstream.status_code, headers=passed)
        return Response(upstream.content, upstream.status_code, headers=passed)

    # -- the control plane ------------------------------------------------------------------------

    async def _control(self, request: Request) -> Response:
        received = await self._received(request)
        self.requests.append(received)
        response = await self._answer(received, request)
        received.status = response.status_code
        return response

    async def _answer(self, received: Received, request: Request) -> Response:
        failure = self._verify(received, request, "bedrock")
        if failure is not None:
            return aws_error(failure.status, failure.code, failure.message, _CORAL)
        if self.inject:
            status, code, message = self.inject.pop(0)
            return aws_error(status, code, message)
        parts = [unquote(p) for p in received.path.strip("/").split("/")]
        method = received.method
        if method == "POST" and parts == ["model-invocation-job"]:
            try:
                body = json.loads(received.body or b"{}")
            except ValueError:
                return aws_error(400, "SerializationException", "Could not parse the body.")
            return self._create(body)
        if parts == ["model-invocation-jobs"] and method == "GET":
            return self._list(dict(parse_qsl(received.query)))
        if len(parts) in (2, 3) and parts[0] == "model-invocation-job":
            job = self._find(parts[1])
            if isinstance(job, Response):
                return job
            if len(parts) == 2 and method == "GET":
                await run_in_threadpool(self.advance, job)
                return JSONResponse(job.describe())
            if len(parts) == 3 and parts[2] == "stop" and method == "POST":
                return self._stop(job)
        return aws_error(404, "UnknownOperationException", "", _CORAL)

    def _find(self, identifier: str) -> Job | Response:
        pattern = self._validator.shapes["ModelInvocationJobIdentifier"]["pattern"]
        if not re.fullmatch(pattern, identifier):
            return aws_error(400, "ValidationException", (
                f"1 validation error detected: Value '{identifier}' at 'jobIdentifier' failed "
                f"to satisfy constraint: Member must satisfy regular expression pattern: "
                f"{pattern}"))
        job_id = identifier.rsplit("/", 1)[-1]
        job = self.jobs.get(job_id)
        if job is None or (identifier.startswith("arn:") and identifier != job.arn):
            return aws_error(404, "ResourceNotFoundException",
                             f"The specified job {identifier} could not be found.")
        return job

    def _create(self, body: Any) -> Response:
        problem = self._validator.message(body, "CreateModelInvocationJobRequest")
        if problem:
            return aws_error(400, "ValidationException", problem)
        with self._lock:
            token = body.get("clientRequestToken")
            if token:
                for job in self.jobs.values():
                    if job.token == token:  # a repeat: ignored, same job
                        return JSONResponse({"jobArn": job.arn})
            if body["modelId"] not in self.models:
                return aws_error(400, "ValidationException",
                                 "The provided model identifier is invalid.")
            if self.roles is not None and body["roleArn"] not in self.roles:
                return aws_error(400, "ValidationException", "Amazon Bedrock could not assume "
                                 "the provided service role. Check its trust policy.")
            if any(j.name == body["jobName"] for j in self.jobs.values()):
                return aws_error(400, "ConflictException",
                                 f"A job named {body['jobName']} already exists.")
            active = sum(1 for j in self.jobs.values()
                         if j.status in _ACTIVE and j.model_id == body["modelId"])
            if self.max_active_jobs is not None and active >= self.max_active_jobs:
                return aws_error(400, "ServiceQuotaExceededException", (
                    "The number of submitted and in-progress batch inference jobs for this "
                    f"model has reached the quota ({self.max_active_jobs})."))
            job_id = "".join(secrets.choice(_JOB_ID_ALPHABET) for _ in range(12))
            now = self.clock()
            job = Job(
                arn=f"arn:aws:bedrock:{self.region}:{self.account}:model-invocation-job/{job_id}",
                job_id=job_id, name=body["jobName"], token=token, model_id=body["modelId"],
                role_arn=body["roleArn"],
                input_uri=body["inputDataConfig"]["s3InputDataConfig"]["s3Uri"],
                output_uri=body["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"],
                timeout_hours=body.get("timeoutDurationInHours"), submit_time=now,
                last_modified=now)
            self.jobs[job_id] = job
        return JSONResponse({"jobArn": job.arn})

    def _list(self, query: dict[str, str]) -> Response:
        jobs = sorted(self.jobs.values(), key=lambda j: j.submit_time,
                      reverse=query.get("sortOrder", "Descending") == "Descending")
        if "statusEquals" in query:
            jobs = [j for j in jobs if j.status == query["statusEquals"]]
        if "nameContains" in query:
            jobs = [j for j in jobs if query["nameContains"] in j.name]
        start = int(query.get("nextToken") or 0)
        size = int(query.get("maxResults") or 1000)
        page = jobs[start: start + size]
        out: dict[str, Any] = {"invocationJobSummaries": [j.describe() for j in page]}
        if start + size < len(jobs):
            out["nextToken"] = str(start + size)
        return JSONResponse(out)

    def _stop(self, job: Job) -> Response:
        with self._lock:
            if job.status in TERMINAL:
                return aws_error(400, "ValidationException",
                                 f"The job cannot be stopped in its current status "
                                 f"({job.status}).")
            if job.status != "Stopping":
                job.stopped_from = job.status
                job.status = "Stopping"
                job.last_modified = self.clock()
        return JSONResponse({})

    # -- the lifecycle ----------------------------------------------------------------------------

    def advance(self, job: Job) -> None:
        """One step of the job's life (what happens between two Gets)."""
        with self._lock:
            now = self.clock()
            before = job.status
            if job.status == "Submitted":
                job.status = "Validating"
            elif job.status == "Validating":
                problem = self._validate(job)
                if problem:
                    self._end(job, "Failed", now, problem)
                else:
                    job.status = "Scheduled"
            elif job.status == "Scheduled":
                job.status = "InProgress"
                job.counts.update(processedRecordCount=0, successRecordCount=0,
                                  errorRecordCount=0)
            elif job.status == "InProgress":
                job.in_progress_gets += 1
                if job.in_progress_gets >= self.in_progress_gets:
                    self._run(job, job.records)
                    self._end(job, "Completed", now)
            elif job.status == "Stopping":
                if job.stopped_from == "InProgress":
                    self._run(job, job.records[: len(job.records) // 2])
                self._end(job, "Stopped", now)
            if job.status != before:
                job.last_modified = now

    def set_status(self, job_id: str, status: str, processed: int | None = None) -> None:
        """Force a job into a status (PartiallyCompleted, Expired, ...), running the first
        `processed` records first when given."""
        with self._lock:
            job = self.jobs[job_id]
            if processed is not None:
                if not job.records:
                    self._validate(job)
                self._run(job, job.records[:processed])
            if status in TERMINAL:
                self._end(job, status, self.clock(), job.message)
            else:
                job.status = status
            job.last_modified = self.clock()

    def _end(self, job: Job, status: str, now: float, message: str | None = None) -> None:
        job.status = status
        job.end_time = now
        job.message = message

    def _validate(self, job: Job) -> str | None:
        """Read the input as the job's role would; Bedrock's reason to fail, or None."""
        client = self.s3()
        bucket, key = _split_uri(job.input_uri)
        try:
            if key.endswith(".jsonl"):
                keys = [key]
                client.head_object(Bucket=bucket, Key=key)
            else:
                listed = client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
                keys = [o["Key"] for o in listed if o["Key"].endswith(".jsonl")]
            out_bucket, _ = _split_uri(job.output_uri)
            client.head_bucket(Bucket=out_bucket)
        except Exception:
            return (f"Amazon Bedrock could not access the S3 location {job.input_uri} or the "
                    "output location with the provided service role.")
        if not keys:
            return f"No .jsonl input files were found at {job.input_uri}."
        records: list[tuple[str, Any]] = []
        seen: set[str] = set()
        for name in keys:
            data = client.get_object(Bucket=bucket, Key=name)["Body"].read()
            for n, raw in enumerate(data.splitlines(), start=1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    return f"Line {n} of s3://{bucket}/{name} is not valid JSON."
                if not isinstance(record, dict) or not isinstance(record.get("modelInput"),
                                                                  dict):
                    return (f"Line {n} of s3://{bucket}/{name} is not a record "
                            "({\"recordId\", \"modelInput\"}).")
                rid = record.get("recordId")
                if rid is None:
                    rid = "".join(secrets.choice(string.ascii_uppercase + string.digits)
                                  for _ in range(11))
                if not isinstance(rid, str) or not _RECORD_ID.fullmatch(rid):
                    return (f"Line {n} of s3://{bucket}/{name}: recordId must be an "
                            "alphanumeric string.")
                if rid in seen:
                    return f"Line {n} of s3://{bucket}/{name}: duplicate recordId {rid}."
                seen.add(rid)
                records.append((rid, record["modelInput"]))
        count = len(records)
        if count < self.min_records:
            return (f"The number of records in the input ({count}) is less than the minimum "
                    f"number of records per batch inference job ({self.min_records}).")
        if count > self.max_records:
            return (f"The number of records in the input ({count}) exceeds the maximum number "
                    f"of records per batch inference job ({self.max_records}).")
        job.records = records
        job.input_names = [name.rsplit("/", 1)[-1] for name in keys]
        job.counts["totalRecordCount"] = count
        return None

    def _run(self, job: Job, records: list[tuple[str, Any]]) -> None:
        """Process records and write `<input name>.out` and `manifest.json.out`."""
        rng = random.Random(job.job_id)
        lines = []
        success = errors = tokens_in = tokens_out = 0
        for rid, body in records:
            line: dict[str, Any] = {"recordId": rid, "modelInput": body}
            try:
                check_claude_body(body)
            except Malformed as e:
                line["error"] = {"errorCode": 400, "errorMessage": (
                    f"Malformed input request: {e}, please reformat your input and try again.")}
            else:
                last = next((m for m in reversed(body["messages"]) if m["role"] == "user"), None)
                if last is not None and "FAIL" in " ".join(_texts(last["content"])):
                    line["error"] = {"errorCode": 400, "errorMessage": (
                        "The model could not process this request (simulated failure).")}
                else:
                    reply = claude_reply(body, model_name(job.model_id), rng)
                    line["modelOutput"] = reply
                    tokens_in += reply["usage"]["input_tokens"]
                    tokens_out += reply["usage"]["output_tokens"]
            if "error" in line:
                errors += 1
            else:
                success += 1
            lines.append(line)
        rng.shuffle(lines)  # Bedrock keeps no order: join on recordId
        bucket, key = _split_uri(job.output_uri)
        base = f"{key.rstrip('/')}/{job.job_id}/" if key.strip("/") else f"{job.job_id}/"
        name = job.input_names[0] if job.input_names else "input.jsonl"
        client = self.s3()
        client.put_object(Bucket=bucket, Key=base + name + ".out",
                          Body=b"".join(json.dumps(x).encode() + b"\n" for x in lines))
        total = job.counts.get("totalRecordCount", len(records))
        manifest = {"totalRecordCount": total, "processedRecordCount": len(records),
                    "successRecordCount": success, "errorRecordCount": errors,
                    "inputTokenCount": tokens_in, "outputTokenCount": tokens_out}
        client.put_object(Bucket=bucket, Key=base + "manifest.json.out",
                          Body=json.dumps(manifest).encode())
        job.counts.update({k: v for k, v in manifest.items() if k.endswith("RecordCount")})

    # -- for assertions -------------------------------------------------------------------------

    def job(self, arn: str) -> Job:
        return self.jobs[arn.rsplit("/", 1)[-1]]

    def created(self) -> list[dict[str, Any]]:
        """The bodies of every CreateModelInvocationJob received (accepted or not)."""
        return [json.loads(r.body) for r in self.requests
                if r.method == "POST" and r.path == "/model-invocation-job"]
