"""Bedrock batch output records (`<input>.jsonl.out` lines) → OpenAI batch output lines.

A record carries `modelOutput` (Claude's Messages response) or `error {errorCode,
errorMessage}`; records a stopped, partial or expired job never processed have no line at all
and become `batch_cancelled` / `batch_expired` error lines (see `missing`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from gateway_bedrock.claude_request import custom_id_of

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
           "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop",
           "model_context_window_exceeded": "length"}
_ERROR_TYPE = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 408: "timeout_error",
               413: "request_too_large", 424: "invalid_request_error", 429: "rate_limit_error",
               500: "api_error", 503: "overloaded_error", 529: "overloaded_error"}
_S3_URI = re.compile(r"s3://[^\s'\",]+")
_ARN = re.compile(r"arn:aws[-a-z]*:[a-z0-9-]+:[a-z0-9-]*:\d{0,12}:[^\s'\",]+")


def scrub(message: str) -> str:
    """Buckets, objects and ARNs (roles, jobs, accounts) are deployment internals."""
    return _ARN.sub("arn:…", _S3_URI.sub("s3://…", message))


def _digest(*parts: Any) -> str:
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:24]


def line_id(source: str, custom_id: str) -> str:
    """Stable across reads, different between jobs."""
    return f"batch_req_{_digest(source, custom_id)}"


def convert(record: dict[str, Any], source: str, created: int,
            model: str) -> tuple[bool, str | None, dict[str, Any]]:
    """(succeeded, recordId, OpenAI output line) for one output record.

    `source` names the job (line ids are stable across reads), `created` is the job's end time
    (Bedrock records have none of their own), `model` the job's model id (used when the body
    does not name one).
    """
    record_id = record.get("recordId")
    record_id = record_id if isinstance(record_id, str) else None
    custom_id = custom_id_of(record_id) if record_id is not None else ""
    lid = line_id(source, custom_id)
    output = record.get("modelOutput")
    error = record.get("error")
    if isinstance(output, dict) and error is None:
        body = chat_completion(output, lid, created, model)
        return True, record_id, {
            "id": lid, "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": output.get("id") or lid,
                         "body": body},
            "error": None,
        }
    if isinstance(error, dict):
        status = error.get("errorCode")
        message = scrub(str(error.get("errorMessage") or "The model returned an error."))
        if isinstance(status, int) and not isinstance(status, bool) and 400 <= status <= 599:
            return False, record_id, {
                "id": lid, "custom_id": custom_id,
                "response": {"status_code": status, "request_id": None, "body": {"error": {
                    "message": message, "type": _ERROR_TYPE.get(status, "api_error"),
                    "param": None, "code": None}}},
                "error": None,
            }
        return False, record_id, error_line(lid, custom_id, "bedrock_error", message)
    return False, record_id, error_line(lid, custom_id, "bedrock_error",
                                        "Bedrock returned no output for this request.")


def error_line(lid: str, custom_id: str, code: str, message: str) -> dict[str, Any]:
    return {"id": lid, "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def missing(source: str, record_id: str, code: str) -> dict[str, Any]:
    """The error line of a record the job never processed (stopped, partial, expired)."""
    custom_id = custom_id_of(record_id)
    message = ("This request was not executed: the batch was cancelled."
               if code == "batch_cancelled" else
               "This request could not be executed before the batch expired.")
    return error_line(line_id(source, custom_id), custom_id, code, message)


def chat_completion(message: dict[str, Any], seed: str, created: int,
                    model: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(message.get("content") or []):
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append({
                "id": str(block.get("id") or f"call_{_digest(seed, j)}"),
                "type": "function",
                "function": {"name": str(block.get("name") or ""),
                             "arguments": json.dumps(block.get("input") or {})},
            })
        # thinking / redacted_thinking blocks have no place in a chat.completion message
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None,
                             "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    reason = _FINISH.get(str(message.get("stop_reason")), "tool_calls" if calls else "stop")
    return {
        "id": str(message.get("id") or f"chatcmpl-{seed}"),
        "object": "chat.completion",
        "created": created,
        "model": str(message.get("model") or model),
        "choices": [{"index": 0, "message": reply, "finish_reason": reason,
                     "logprobs": None}],
        "usage": usage(message.get("usage")),
        "system_fingerprint": None,
    }


def usage(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, dict) else {}

    def count(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 \
            else 0

    cached = count("cache_read_input_tokens")
    prompt = count("input_tokens") + cached + count("cache_creation_input_tokens")
    completion = count("output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0}}
