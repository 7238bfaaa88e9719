"""What goes to the endpoint for a request line, and the OpenAI batch output and error lines
that come back (reference/providers.md 1.7):

    {"id": "batch_req_…", "custom_id": …, "response": {"status_code", "request_id", "body"},
     "error": null}
    {"id": "batch_req_…", "custom_id": …, "response": null, "error": {"code", "message"}}

A line the endpoint refused carries its answer in `response` with `error` null, as OpenAI's
error files do. An answer body is spliced in as received (compacted if it spans lines).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import msgspec

_encode = msgspec.json.encode


class RequestLine(msgspec.Struct):
    custom_id: str
    url: str
    body: msgspec.Raw


decode_line = msgspec.json.Decoder(RequestLine).decode


def endpoint_url(api_base: str, path: str) -> str:
    """`api_base` with or without its `/v1`, plus a line's url (`/v1/chat/completions`)."""
    base = api_base.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        return base + path[3:]
    return base + path


class _UsageFields(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    input_tokens: int | None = None  # /v1/responses
    output_tokens: int | None = None
    total_tokens: int | None = None


class _Answer(msgspec.Struct):
    usage: _UsageFields | None = None


_answer = msgspec.json.Decoder(_Answer).decode


@dataclass(frozen=True)
class Tokens:
    input: int
    output: int
    total: int


def answer_usage(body: bytes) -> Tokens | None:
    """The tokens an answer reports (chat, completions, embeddings, responses), or None; raises
    msgspec.DecodeError when the body is not a JSON object."""
    u = _answer(body).usage
    if u is None:
        return None
    prompt = u.prompt_tokens if u.prompt_tokens is not None else u.input_tokens
    out = u.completion_tokens if u.completion_tokens is not None else u.output_tokens
    if prompt is None and out is None and u.total_tokens is None:
        return None
    total = u.total_tokens if u.total_tokens is not None else (prompt or 0) + (out or 0)
    return Tokens(prompt or 0, out or 0, total)


def _compact(body: bytes) -> bytes:
    # One JSON value per line: an answer pretty-printed over several lines is compacted.
    return msgspec.json.format(body, indent=-1) if b"\n" in body or b"\r" in body else body


def _line_id() -> bytes:
    return b'"batch_req_' + secrets.token_hex(12).encode() + b'"'


def response_line(custom_id: str, status: int, request_id: str, body: bytes) -> bytes:
    """An answered line (output file for 2xx, error file otherwise); `body` is valid JSON."""
    return b"".join((
        b'{"id":', _line_id(), b',"custom_id":', _encode(custom_id),
        b',"response":{"status_code":', str(status).encode(), b',"request_id":',
        _encode(request_id), b',"body":', _compact(body), b'},"error":null}',
    ))


def error_line(custom_id: str, code: str, message: str) -> bytes:
    """A line that got no answer to show: never sent, or no usable answer."""
    return b"".join((
        b'{"id":', _line_id(), b',"custom_id":', _encode(custom_id),
        b',"response":null,"error":', _encode({"code": code, "message": message}), b"}",
    ))


def error_body(status: int, text: bytes) -> bytes:
    """An endpoint's error answer that is not JSON, as OpenAI's error object."""
    message = text[:2000].decode("utf-8", "replace").strip() or f"HTTP {status}"
    return _encode({"error": {"message": message, "type": "upstream_error", "param": None,
                              "code": None}})


EXPIRED = ("batch_expired",
           "This request could not be executed before the completion window expired.")
CANCELLED = ("batch_cancelled",
             "This request could not be executed because the batch was cancelled.")
